package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// runCLI runs a client subcommand against d with stdin and returns its
// combined output and exit code.
func (d *daemon) runCLI(stdin string, args ...string) (string, int) {
	d.t.Helper()
	cmd := exec.Command(mountdBin, append(args, "--addr", d.addr)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		d.t.Fatal(err)
	}
	return string(out), code
}

func TestCLI(t *testing.T) {
	d := newDaemon(t)
	d.start()
	out, code := d.runCLI("", "status")
	if code != 2 || !strings.Contains(out, "key set:      no") || !strings.Contains(out, "password set: no") {
		t.Fatalf("status: %d %s", code, out)
	}
	if out, code = d.runCLI(password+"\n", "login"); code != 0 {
		t.Fatalf("first login from a pipe: %d %s", code, out)
	}
	if out, code = d.runCLI("wrong\n", "login"); code != 3 {
		t.Fatalf("wrong password: exit %d, want 3: %s", code, out)
	}
	if err := os.WriteFile(filepath.Join(d.mnt, "c.bin"), []byte("cli"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, code = d.runCLI("", "status", "--scan"); code != 0 || !strings.Contains(out, "1 encrypted, 0 plaintext") {
		t.Fatalf("status --scan: %d %s", code, out)
	}
	if out, code = d.runCLI(password+"\nnew password\nnew password\n", "passwd"); code != 0 {
		t.Fatalf("passwd: %d %s", code, out)
	}
	if out, code = d.runCLI("", "logout"); code != 0 || !strings.Contains(out, "File encryption key cleared") {
		t.Fatalf("logout: %d %s", code, out)
	}
	if out, code = d.runCLI(password+"\n", "login"); code != 3 {
		t.Fatalf("old password after passwd: exit %d: %s", code, out)
	}
	if out, code = d.runCLI("new password\n", "login"); code != 0 {
		t.Fatalf("new password: %d %s", code, out)
	}
	if got, err := os.ReadFile(filepath.Join(d.mnt, "c.bin")); err != nil || string(got) != "cli" {
		t.Fatalf("read after passwd and login: %q %v", got, err)
	}
	c := exec.Command(mountdBin, "status", "--addr", "127.0.0.1:1")
	if err := c.Run(); err == nil || c.ProcessState.ExitCode() != 4 {
		t.Fatalf("unreachable daemon: %v (exit %d), want exit 4", err, c.ProcessState.ExitCode())
	}
	for _, pw := range []string{password, "new password"} {
		if strings.Contains(d.out.String(), pw) {
			t.Fatalf("password %q in the daemon's output", pw)
		}
	}
}

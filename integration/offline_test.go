package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/crypto"
)

// Tests of the offline commands (init, recovery-key, reset-password, info,
// fsck, export) and of reset_password, against the real binary and daemon.

// offline runs the binary with stdin and returns stdout, stderr and the
// exit code.
func offline(t *testing.T, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(mountdBin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

var recoveryKeyLine = regexp.MustCompile(`^([0-9A-Z]{4}-){14}[0-9A-Z]{4}\n$`)

// initDaemon runs mountd init on a fresh daemon's data directory (before
// it starts) and returns the recovery key.
func initDaemon(t *testing.T, d *daemon, pw string) string {
	t.Helper()
	out, errs, code := offline(t, pw+"\n", append([]string{"init", "--data", d.data}, migFastKDF...)...)
	if code != 0 || !recoveryKeyLine.MatchString(out) || !strings.Contains(errs, "store it offline") {
		t.Fatalf("init: exit %d, stdout %q, stderr %s", code, out, errs)
	}
	return strings.TrimSpace(out)
}

// TestRecoveryRoundTripBinary: mountd init -> files written through the
// mount -> the password forgotten -> mountd reset-password with the
// recovery key (offline, then again through the daemon) -> the old files
// read through the mount with the new password.
func TestRecoveryRoundTripBinary(t *testing.T) {
	d := newDaemon(t, migFastKDF...)
	rk := initDaemon(t, d, "first password")
	d.start()
	d.mustLogin("first password")
	files := map[string][]byte{}
	for i, n := range []int{0, 1, 4095, 4096, 4097, 1<<20 + 3} {
		rel := fmt.Sprintf("dir/f%d.bin", i)
		files[rel] = migContent(uint64(i), int64(n))
		os.MkdirAll(filepath.Join(d.mnt, "dir"), 0o755)
		if err := os.WriteFile(filepath.Join(d.mnt, rel), files[rel], 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if st := d.status(false); st["recovery_key_set"] != true {
		t.Fatalf("status: %v", st)
	}
	if err := d.stop(); err != nil {
		t.Fatal(err)
	}

	out, errs, code := offline(t, rk+"\nsecond password\n", append([]string{"reset-password", "--data", d.data}, migFastKDF...)...)
	if code != 0 {
		t.Fatalf("reset-password: exit %d: %s %s", code, out, errs)
	}
	out, errs, code = offline(t, "second password\n", "fsck", "--data", d.data)
	if code != 0 || !strings.Contains(out, "clean") {
		t.Fatalf("fsck: exit %d: %s %s", code, out, errs)
	}
	d.start()
	if r := d.login("first password"); r.Status != 401 {
		t.Fatalf("old password after the reset: %d %s", r.Status, r.Raw)
	}
	d.mustLogin("second password")
	checkFiles(t, d.mnt, files)

	// Through the daemon: the CLI with --addr, while logged in; the key
	// stays set.
	out, errs = runOut(t, rk+"\nthird password\n", "reset-password", "--addr", d.addr)
	if !strings.Contains(out, "Password reset") {
		t.Fatalf("reset through the daemon: %s %s", out, errs)
	}
	if st := d.status(false); st["key_set"] != true {
		t.Fatal("the reset cleared the key")
	}
	checkFiles(t, d.mnt, files)
	d.logout()
	d.mustLogin("third password")
	checkFiles(t, d.mnt, files)
	for _, s := range []string{rk, "first password", "second password", "third password"} {
		if strings.Contains(d.out.String(), s) {
			t.Fatalf("%q in the daemon's log", s)
		}
	}
}

func runOut(t *testing.T, stdin string, args ...string) (string, string) {
	t.Helper()
	out, errs, code := offline(t, stdin, args...)
	if code != 0 {
		t.Fatalf("mountd %s: exit %d: %s %s", args[0], code, out, errs)
	}
	return out, errs
}

func checkFiles(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	for rel, want := range files {
		got, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: %d bytes, %v; want %d bytes", rel, len(got), err, len(want))
		}
	}
}

// TestResetPasswordHTTP: POST reset_password against the real daemon: a
// wrong recovery key is 401 RESULT_INVALID_RECOVERY_KEY and feeds the
// backoff shared with login (429 with Retry-After, even for the right
// key); the right key resets the password.
func TestResetPasswordHTTP(t *testing.T) {
	d := newDaemon(t, migFastKDF...)
	rk := initDaemon(t, d, password)
	d.start()
	reset := func(key string) apiReply {
		body, _ := json.Marshal(map[string]string{"recovery_key": key, "new_password": "reset pw"})
		return d.do("POST", "/api/system/reset_password", "application/json", string(body))
	}
	wrong := string(crypto.FormatRecoveryKey(bytes.Repeat([]byte{9}, crypto.RecoveryKeySize)))
	if r := reset("not a key"); r.Status != 400 || r.JSON["error"] != "RESULT_BAD_REQUEST" {
		t.Fatalf("malformed: %d %s", r.Status, r.Raw)
	}
	for i := range 5 {
		r := reset(wrong)
		if r.Status != 401 || r.JSON["error"] != "RESULT_INVALID_RECOVERY_KEY" || r.JSON["command"] != "reset_password" {
			t.Fatalf("wrong key %d: %d %s", i, r.Status, r.Raw)
		}
	}
	r := reset(wrong)
	if r.Status != 429 || r.JSON["error"] != "RESULT_TOO_MANY_ATTEMPTS" || r.Header.Get("Retry-After") == "" {
		t.Fatalf("6th wrong key: %d %s", r.Status, r.Raw)
	}
	if r := reset(rk); r.Status != 429 {
		t.Fatalf("right key during the backoff: %d %s", r.Status, r.Raw)
	}
	if r := d.login(password); r.Status != 429 {
		t.Fatalf("login during the backoff: %d %s", r.Status, r.Raw)
	}
	// Wait out the backoff (an external state the test cannot be told
	// about: poll with a deadline).
	deadline := time.Now().Add(30 * time.Second)
	for {
		r = reset(rk)
		if r.Status != 429 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if r.Status != 200 || r.JSON["message"] != "Password reset" {
		t.Fatalf("reset with the right key: %d %s", r.Status, r.Raw)
	}
	if r := d.login(password); r.Status != 401 {
		t.Fatalf("old password: %d %s", r.Status, r.Raw)
	}
	d.mustLogin("reset pw")
	if strings.Contains(d.out.String(), rk) {
		t.Fatal("the recovery key is in the daemon's log")
	}
}

// TestV1VerifierDaemon: a data directory from before key slots (a version
// 1 verifier, the checked-in vector, with a file under its key) logs in,
// reads, and is upgraded to version 2 by the next password change.
func TestV1VerifierDaemon(t *testing.T) {
	d := newDaemon(t, migFastKDF...)
	os.MkdirAll(filepath.Join(d.data, "auth"), 0o700)
	v1, err := os.ReadFile("../crypto/testdata/kat-verifier.bin")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(d.data, "auth/verifier.bin"), v1, 0o600)
	enc, _ := os.ReadFile("../crypto/testdata/kat-short.enc")
	os.WriteFile(filepath.Join(d.data, "short.bin"), enc, 0o644)
	const katPassword = "mountd known-answer password ü"
	d.start()
	d.mustLogin(katPassword)
	if b, err := os.ReadFile(filepath.Join(d.mnt, "short.bin")); err != nil || string(b) != "hello, mountd\n" {
		t.Fatalf("read: %q %v", b, err)
	}
	if st := d.status(false); st["recovery_key_set"] != false {
		t.Fatalf("status: %v", st)
	}
	runOut(t, katPassword+"\nnew\nnew\n", "passwd", "--addr", d.addr)
	v, err := crypto.ReadVerifier(filepath.Join(d.data, "auth/verifier.bin"))
	if err != nil || v.Version != 2 {
		t.Fatalf("after passwd: %+v %v", v, err)
	}
	d.logout()
	d.mustLogin("new")
	if b, _ := os.ReadFile(filepath.Join(d.mnt, "short.bin")); string(b) != "hello, mountd\n" {
		t.Fatal("read after the upgrade")
	}
}

// TestOfflineRefusedWhileDaemonServes: with the daemon running, every
// offline command refuses the data directory (exit 6, naming the daemon)
// and changes nothing.
func TestOfflineRefusedWhileDaemonServes(t *testing.T) {
	d := newDaemon(t, migFastKDF...)
	rk := initDaemon(t, d, password)
	d.start()
	d.mustLogin(password)
	os.WriteFile(filepath.Join(d.mnt, "f.bin"), []byte("data"), 0o600)
	before, _ := os.ReadFile(filepath.Join(d.data, "auth/verifier.bin"))
	out := filepath.Join(t.TempDir(), "out")
	for _, c := range []struct {
		stdin string
		args  []string
	}{
		{password + "\n", []string{"init", "--data", d.data}},
		{password + "\n", []string{"recovery-key", "--data", d.data}},
		{rk + "\nx\n", []string{"reset-password", "--data", d.data}},
		{"", []string{"info", "--data", d.data}},
		{password + "\n", []string{"fsck", "--data", d.data}},
		{password + "\n", []string{"export", "--data", d.data, "--out", out}},
	} {
		stdout, errs, code := offline(t, c.stdin, c.args...)
		if code != 6 || !strings.Contains(errs, fmt.Sprintf("served by mountd pid %d (mounted at %s)", d.cmd.Process.Pid, d.mnt)) || stdout != "" {
			t.Errorf("%s: exit %d, stdout %q: %s", c.args[0], code, stdout, errs)
		}
	}
	if after, _ := os.ReadFile(filepath.Join(d.data, "auth/verifier.bin")); !bytes.Equal(before, after) {
		t.Fatal("the verifier changed")
	}
	if _, err := os.Stat(out); err == nil {
		t.Fatal("export wrote its output")
	}
	// A second daemon on the same data directory is refused too.
	d2 := newDaemon(t)
	cmd := exec.Command(mountdBin, "--data", d.data, "--mount", d2.mnt, "--listen", d2.addr)
	b, err := cmd.CombinedOutput()
	if err == nil || cmd.ProcessState.ExitCode() != 6 || isMounted(d2.mnt) {
		t.Fatalf("second daemon: %v %s", err, b)
	}
}

// TestLoginLongPassword: mountd login reads a 10 000-byte password from
// stdin (it failed over 4095 bytes with "bufio: buffer full"), and takes
// --password-file only when nobody else may read it.
func TestLoginLongPassword(t *testing.T) {
	d := newDaemon(t, migFastKDF...)
	d.start()
	long := strings.Repeat("long password ", 1000)[:10_000]
	if out, code := d.runCLI(long+"\n", "login"); code != 0 || !strings.Contains(out, "There is no recovery key") {
		t.Fatalf("first login with 10000 bytes: %d %s", code, out)
	}
	d.logout()
	if out, code := d.runCLI(long+"\n", "login"); code != 0 {
		t.Fatalf("login with 10000 bytes: %d %s", code, out)
	}
	if out, code := d.runCLI(long[:9999]+"\n", "login"); code != 3 {
		t.Fatalf("one byte short: %d %s", code, out)
	}
	pwFile := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(pwFile, []byte(long+"\n"), 0o644)
	if out, code := d.runCLI("", "login", "--password-file", pwFile); code == 0 || !strings.Contains(out, "mode 0644") {
		t.Fatalf("0644 password file: %d %s", code, out)
	}
	os.Chmod(pwFile, 0o600)
	d.logout()
	if out, code := d.runCLI("", "login", "--password-file", pwFile); code != 0 {
		t.Fatalf("0600 password file: %d %s", code, out)
	}
}

// TestExportEqualsMount writes thousands of files of awkward sizes, a
// 1 GiB file, symlinks, hard links, modes and times through the mount;
// with the daemon stopped, fsck finds it clean and export writes it out
// with bounded memory; with the daemon back, the mount shows exactly what
// was exported.
func TestExportEqualsMount(t *testing.T) {
	nfiles, big := 3000, int64(1<<30)
	if testing.Short() {
		nfiles, big = 300, 64<<20
	}
	d := newDaemon(t, migFastKDF...)
	initDaemon(t, d, password)
	d.start()
	d.mustLogin(password)
	migAwkwardTree(t, d.mnt, nfiles, 0, 0)
	writeStream(t, filepath.Join(d.mnt, "big/huge.bin"), big)
	m := d.mnt
	os.Symlink("a/b", filepath.Join(m, "link-to-dir"))
	os.Symlink("/nowhere/at/all", filepath.Join(m, "dangling"))
	os.Link(filepath.Join(m, "a/file-001.bin"), filepath.Join(m, "hard.bin"))
	os.Chmod(filepath.Join(m, "a/file-008.bin"), 0o751)
	os.Chmod(filepath.Join(m, "x y"), 0o711)
	os.Chtimes(filepath.Join(m, "notes.txt"), time.Unix(1_000_000_000, 0), time.Unix(1_200_000_000, 5000))
	os.Chtimes(filepath.Join(m, "deep/1"), time.Unix(1_000_000_000, 0), time.Unix(1_300_000_000, 0))
	if err := d.stop(); err != nil {
		t.Fatal(err)
	}

	out, errs, code := offline(t, password+"\n", "fsck", "--data", d.data)
	if code != 0 || !strings.Contains(out, "clean") {
		t.Fatalf("fsck: exit %d: %s %s", code, out, errs)
	}
	// The export runs the product build: the race detector's own memory
	// grows with every goroutine and synchronisation it records, which
	// says nothing about the export's.
	exp := filepath.Join(t.TempDir(), "export")
	pwFile := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(pwFile, []byte(password+"\n"), 0o600)
	cmd := exec.Command(plainBinary(t), "export", "--data", d.data, "--out", exp, "--password-file", pwFile)
	var b bytes.Buffer
	cmd.Stdout, cmd.Stderr = &b, &b
	rss, err := runPeakRSS(cmd)
	if err != nil || !strings.Contains(b.String(), "complete") {
		t.Fatalf("export: %v: %s", err, b.String())
	}
	// Memory does not follow the file size: a fixed buffer per worker,
	// the KDF's 19 MiB and the runtime.
	t.Logf("export: %s; peak RSS %d MiB", strings.TrimSpace(b.String()), rss>>10)
	if limit := int64(96 << 10); rss > limit {
		t.Fatalf("export peak RSS %d MiB, want at most %d MiB with a %d MiB file", rss>>10, limit>>10, big>>20)
	}

	d.start()
	d.mustLogin(password)
	compareTrees(t, d.mnt, exp)
}

var (
	plainOnce sync.Once
	plainBin  string
	plainErr  error
)

// plainBinary returns mountd built without the race detector (mountdBin
// itself when the suite runs without it).
func plainBinary(t *testing.T) string {
	t.Helper()
	if os.Getenv("MOUNTD_INTEGRATION_RACE") == "false" {
		return mountdBin
	}
	plainOnce.Do(func() {
		plainBin = filepath.Join(filepath.Dir(mountdBin), "mountd-norace")
		out, err := exec.Command("go", "build", "-o", plainBin, "github.com/mountd/mountd/cmd/mountd").CombinedOutput()
		if err != nil {
			plainErr = fmt.Errorf("go build: %v: %s", err, out)
		}
	})
	if plainErr != nil {
		t.Fatal(plainErr)
	}
	return plainBin
}

// writeStream writes n deterministic bytes to path in 1 MiB pieces.
func writeStream(t *testing.T, path string, n int64) {
	t.Helper()
	os.MkdirAll(filepath.Dir(path), 0o755)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := migContent(42, 1<<20)
	for off := int64(0); off < n; off += int64(len(chunk)) {
		chunk[0], chunk[1] = byte(off>>20), byte(off>>28) // every MiB different
		if _, err := f.Write(chunk[:min(int64(len(chunk)), n-off)]); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// compareTrees checks that b holds exactly what a holds: the same names,
// types, permissions, modification times, sizes, contents (streamed, by
// hash) and link targets, and the same hard-link groups.
func compareTrees(t *testing.T, a, b string) {
	t.Helper()
	describe := func(root string) map[string]string {
		m := map[string]string{}
		links := map[uint64]string{}
		err := filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err != nil {
				return err
			}
			s := fmt.Sprintf("type=%o perm=%o", st.Mode&unix.S_IFMT, st.Mode&0o7777)
			if st.Mode&unix.S_IFMT != unix.S_IFDIR {
				s += fmt.Sprintf(" mtime=%d.%09d", st.Mtim.Sec, st.Mtim.Nsec)
			}
			switch st.Mode & unix.S_IFMT {
			case unix.S_IFLNK:
				target, _ := os.Readlink(p)
				s += " -> " + target
			case unix.S_IFREG:
				n, sum := migSum(t, p)
				s += fmt.Sprintf(" size=%d/%d sum=%x", n, st.Size, sum[:8])
				if st.Nlink > 1 {
					if first, ok := links[st.Ino]; ok {
						s += " link-of=" + first
					} else {
						links[st.Ino] = rel
					}
				}
			}
			m[rel] = s
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	ma, mb := describe(a), describe(b)
	bad := 0
	for k, v := range ma {
		if mb[k] != v && bad < 20 {
			bad++
			t.Errorf("%q:\n mount  %s\n export %s", k, v, mb[k])
		}
	}
	for k := range mb {
		if _, ok := ma[k]; !ok && bad < 20 {
			bad++
			t.Errorf("%q exported, not in the mount", k)
		}
	}
	if len(ma) < 100 {
		t.Fatalf("only %d entries compared", len(ma))
	}
	t.Logf("%d entries identical in the mount and the export", len(ma))
}

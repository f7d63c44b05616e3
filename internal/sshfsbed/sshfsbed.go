// Package sshfsbed is the network-filesystem test bed: an sshd on
// 127.0.0.1 started by the test (a free port, a host key and a user key
// made for it, a generated sshd_config, in the foreground under the
// test's control) and sshfs mounts of directories it exports. Two mounts
// of one export stand for two hosts sharing a network filesystem: each
// has its own caches and its own locks, as separate NFS clients would.
//
// It changes nothing of the system's ssh configuration: the only thing
// made outside the test's temp directories is sshd's privilege
// separation directory (/run/sshd), which sshd refuses to start without
// and which the openssh-server package makes at boot anyway.
//
// A test that needs the bed calls Start; when sshd, sshfs or ssh-keygen is
// missing, or FUSE cannot mount, the test is skipped with a loud message
// (apt-get install sshfs openssh-server), and under CI=true it fails. Only
// tests import this package.
package sshfsbed

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Server is one sshd serving SFTP on 127.0.0.1 for a test.
type Server struct {
	dir  string // keys, config, known_hosts
	port int
	user string
	log  *buffer
}

// DefaultOptions are the sshfs options of Mount, before its own: those
// docs/OPERATIONS.md recommends for a data directory. dir_cache=no, so
// that what one mount changes is seen at once by the other; noforget,
// so that a file keeps its inode number (sshfs invents them and gives a
// file a new one after the kernel forgets it, e.g. on drop_caches; the
// daemon identifies a file by its number, and an open that meets two
// changes of it in a row fails with ESTALE).
var DefaultOptions = []string{"dir_cache=no", "noforget"}

// tools are the programs the bed runs.
var tools = []string{"sshd", "sshfs", "ssh-keygen", "fusermount3"}

// lookTool finds a tool in PATH or in /usr/sbin (sshd lives there).
func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", name)
}

// unavailable skips the test loudly, or fails it under CI=true.
func unavailable(t testing.TB, why string) {
	t.Helper()
	msg := fmt.Sprintf("SSHFS TEST BED UNAVAILABLE: %s; the network-filesystem tests did NOT run "+
		"(install them: apt-get install sshfs openssh-server)", why)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + " [CI=true: this fails]")
	}
	fmt.Fprintln(os.Stderr, "!!! "+msg)
	t.Skip(msg)
}

// Start starts an sshd for t on a free port of 127.0.0.1, stopped in
// t.Cleanup (after the mounts made later are gone).
func Start(t testing.TB) *Server {
	t.Helper()
	paths := map[string]string{}
	for _, name := range tools {
		p, err := lookTool(name)
		if err != nil {
			unavailable(t, err.Error())
		}
		paths[name] = p
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		unavailable(t, "no /dev/fuse")
	}
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "mountd-sshfsbed-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"host_key", "user_key"} {
		out, err := exec.Command(paths["ssh-keygen"], "-q", "-t", "ed25519", "-N", "", "-C", "mountd-sshfsbed", "-f", filepath.Join(dir, k)).CombinedOutput()
		if err != nil {
			t.Fatalf("ssh-keygen: %v: %s", err, out)
		}
	}
	pub, err := os.ReadFile(filepath.Join(dir, "user_key.pub"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		// sshd's privilege separation directory (see the package comment).
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			unavailable(t, fmt.Sprintf("cannot make /run/sshd: %v", err))
		}
	}

	s := &Server{dir: dir, user: u.Username, log: &buffer{}}
	// A port can be taken between choosing it and sshd binding it: try
	// a few.
	for attempt := 0; ; attempt++ {
		s.port = freePort(t)
		err := s.startSSHD(t, paths["sshd"])
		if err == nil {
			break
		}
		if attempt == 4 {
			t.Fatalf("sshd does not start: %v\n%s", err, s.log.String())
		}
	}
	hostPub, err := os.ReadFile(filepath.Join(dir, "host_key.pub"))
	if err != nil {
		t.Fatal(err)
	}
	known := fmt.Sprintf("[127.0.0.1]:%d %s", s.port, hostPub)
	if err := os.WriteFile(filepath.Join(dir, "known_hosts"), []byte(known), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

// startSSHD runs sshd on s.port, waits until it accepts connections, and
// stops it in t.Cleanup.
func (s *Server) startSSHD(t testing.TB, sshd string) error {
	cfg := filepath.Join(s.dir, "sshd_config")
	conf := strings.Join([]string{
		"Port " + strconv.Itoa(s.port),
		"ListenAddress 127.0.0.1",
		"HostKey " + filepath.Join(s.dir, "host_key"),
		"AuthorizedKeysFile " + filepath.Join(s.dir, "authorized_keys"),
		"PubkeyAuthentication yes",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"PermitRootLogin prohibit-password",
		"AllowUsers " + s.user,
		"StrictModes no",
		"UsePAM no",
		"PidFile none",
		"Subsystem sftp internal-sftp",
		"",
	}, "\n")
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sshd, "-D", "-e", "-f", cfg)
	cmd.Stdout, cmd.Stderr = s.log, s.log
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	// sshd's readiness is external state: poll with a deadline.
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-exited:
			return fmt.Errorf("sshd exited: %v", waitErr)
		default:
		}
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", s.port), time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-exited
			return fmt.Errorf("sshd not listening on port %d after 20s", s.port)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Cleanup(func() {
		// Only the listener: each connection's session process ends when
		// its sshfs unmounts (the mounts' cleanups ran first).
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	return nil
}

// Mount mounts export (a local directory, exported by the server) at mnt
// with sshfs and DefaultOptions plus opts ("name=value" or "name"), as a
// child process in the foreground; t.Cleanup unmounts it (lazily if busy)
// and waits for sshfs to exit.
func (s *Server) Mount(t testing.TB, export, mnt string, opts ...string) {
	t.Helper()
	sshfs, err := lookTool("sshfs")
	if err != nil {
		unavailable(t, err.Error())
	}
	all := append(append([]string{}, DefaultOptions...), opts...)
	all = append(all,
		"port="+strconv.Itoa(s.port),
		"IdentityFile="+filepath.Join(s.dir, "user_key"),
		"UserKnownHostsFile="+filepath.Join(s.dir, "known_hosts"),
		"StrictHostKeyChecking=yes",
		"BatchMode=yes",
		"IdentitiesOnly=yes",
	)
	out := &buffer{}
	cmd := exec.Command(sshfs, "-f", "-F", "/dev/null", "-o", strings.Join(all, ","),
		fmt.Sprintf("%s@127.0.0.1:%s", s.user, export), mnt)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("sshfs: %v", err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		if IsMounted(mnt) {
			if err := exec.Command("fusermount3", "-u", mnt).Run(); err != nil {
				_ = exec.Command("fusermount3", "-u", "-z", mnt).Run()
			}
		}
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			t.Errorf("sshfs for %s did not exit within 20s of its unmount", mnt)
		}
	})
	// The mount is external state: poll with a deadline.
	deadline := time.Now().Add(20 * time.Second)
	for !IsMounted(mnt) {
		select {
		case <-exited:
			t.Fatalf("sshfs exited before mounting: %v\n%s\nsshd:\n%s", waitErr, out.String(), s.log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("sshfs did not mount %s within 20s:\n%s", mnt, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// IsMounted reports whether dir is a mountpoint.
func IsMounted(dir string) bool {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 2 && fields[1] == dir {
			return true
		}
	}
	return false
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// buffer collects a child's output.
type buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

package integration

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/datadir"
)

// Confinement under attack: another local user of an --allow-other mount
// (uid 65534 here) must not make the daemon, which runs as root, change
// anything outside the backing directory, or in its auth/. The attacker
// owns a directory of the mount and swaps a directory in it with a
// symlink to the target, again and again with renameat2(RENAME_EXCHANGE),
// while another thread loops one operation on a name inside that
// directory. The swap is made through the mount (any user of the mount
// can) or directly in the backing directory (a user who owns part of it
// can; the kernel then still caches the old directory for its entry
// timeout). The target's files and directories must never change: mode,
// owner, times, xattrs, links, existence, content.
//
// Each operation runs in a child process (this test binary again) with
// the credentials of uid/gid 65534, for escapeSeconds or escapeMaxIter
// iterations, whichever ends first.

const (
	escapeUID     = 65534
	escapeEnv     = "MOUNTD_ESCAPE_CHILD"
	escapeMaxIter = 20000
)

// escapeOps are the operations each child loops on a name inside the
// swapped directory, with what undoes a success so the next iteration
// can try again.
var escapeOps = []string{
	"chmod", "chown", "utimes", "setxattr", "removexattr", "truncate", "unlink",
	"rmdir", "rename", "link", "mkdir", "mknod", "symlink", "create",
}

// escapeSpec tells a child what to do.
type escapeSpec struct {
	Op       string // one of escapeOps, or "privileges" (TestAllowOtherPrivileges)
	Dir      string // a fresh directory for the child, through the mount
	SwapIn   string // where to swap: Dir, or the same directory in the backing directory
	Target   string // the symlink's target
	File     string // the name of the file aimed at (a directory is "victimdir")
	Duration time.Duration
	MaxIter  int
}

// escapeResult is what a child reports.
type escapeResult struct {
	OK     int            // iterations in which the operation succeeded
	Errors map[string]int // errno -> count
	Swaps  int
}

// escapeSeconds is how long each operation is raced (MOUNTD_ESCAPE_SECONDS
// overrides it for longer runs).
func escapeSeconds(through string) time.Duration {
	if s, err := strconv.ParseFloat(os.Getenv("MOUNTD_ESCAPE_SECONDS"), 64); err == nil && s > 0 {
		return time.Duration(s * float64(time.Second))
	}
	if through == "backing" {
		// Deterministic: the kernel caches the directory.
		return 300 * time.Millisecond
	}
	return time.Second
}

func TestEscapeRace(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("TestEscapeRace needs root (a root daemon, a child as uid 65534); CI runs as root")
		}
		t.Skip("needs root")
	}
	d := newDaemon(t, "--allow-other")
	// Everything on the way must be reachable for uid 65534.
	root := filepath.Dir(d.data)
	for _, p := range []string{filepath.Dir(root), root} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(d.data, 0o755); err != nil {
		t.Fatal(err)
	}
	d.start()
	d.mustLogin("escape-password") // creates auth/verifier.bin
	if err := os.Mkdir(filepath.Join(d.data, "auth", "victimdir"), 0o700); err != nil {
		t.Fatal(err)
	}
	// The attacker's own part of the mount.
	if err := os.Mkdir(filepath.Join(d.data, "w"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Join(d.data, "w"), escapeUID, escapeUID); err != nil {
		t.Fatal(err)
	}
	exe := childBinary(t, root)

	for _, target := range []string{"outside", "auth"} {
		for _, through := range []string{"mount", "backing"} {
			t.Run(target+"/swap-through-"+through, func(t *testing.T) {
				for _, op := range escapeOps {
					t.Run(op, func(t *testing.T) {
						name := fmt.Sprintf("%s-%s-%s", target, through, op)
						var dst, file string
						if target == "outside" {
							dst = filepath.Join(root, "outside", name)
							file = "victim"
							if err := os.MkdirAll(dst, 0o755); err != nil {
								t.Fatal(err)
							}
							mustWriteFile(t, filepath.Join(dst, file), "canary")
							if err := os.Mkdir(filepath.Join(dst, "victimdir"), 0o755); err != nil {
								t.Fatal(err)
							}
						} else {
							dst = filepath.Join(d.data, "auth")
							file = "verifier.bin"
						}
						markCanary(t, dst, file)
						before := snapshotDir(t, dst)
						spec := escapeSpec{
							Op:       op,
							Dir:      filepath.Join(d.mnt, "w", name),
							SwapIn:   filepath.Join(d.mnt, "w", name),
							Target:   dst,
							File:     file,
							Duration: escapeSeconds(through),
							MaxIter:  escapeMaxIter,
						}
						if through == "backing" {
							spec.SwapIn = filepath.Join(d.data, "w", name)
						}
						res := runEscapeChild(t, exe, spec)
						t.Logf("%s: %d successes, errors %v, %d swaps", op, res.OK, res.Errors, res.Swaps)
						if diff := diffSnapshots(before, snapshotDir(t, dst)); diff != "" {
							t.Fatalf("%s by uid %d through the mount changed %s:\n\t%s", op, escapeUID, dst, diff)
						}
						if res.Swaps == 0 {
							t.Errorf("the child never swapped the directory")
						}
						if through == "mount" && res.OK == 0 {
							t.Errorf("%s never succeeded on the attacker's own directory: the race was not run", op)
						}
					})
				}
			})
		}
	}
}

// childBinary copies this test binary where uid 65534 can run it.
func childBinary(t *testing.T, dir string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	exe := filepath.Join(dir, "escape-child")
	out, err := os.OpenFile(exe, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return exe
}

func runEscapeChild(t *testing.T, exe string, spec escapeSpec) escapeResult {
	t.Helper()
	b, _ := json.Marshal(spec)
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), escapeEnv+"="+string(b))
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: escapeUID, Gid: escapeUID, Groups: []uint32{}}}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("child: %v\n%s", err, stderr.String())
		}
	case <-time.After(spec.Duration + 60*time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("child still running after %v\n%s", spec.Duration+60*time.Second, stderr.String())
	}
	var res escapeResult
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("child output %q: %v\n%s", stdout.String(), err, stderr.String())
	}
	return res
}

// escapeChild is the attacker: it runs as uid 65534, prepares its
// directory through the mount, and races spec.Op against the swapper.
func escapeChild(raw string) int {
	var spec escapeSpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if spec.Op == "privileges" {
		return privilegesChild(spec)
	}
	dir, swapIn := spec.Dir, spec.SwapIn
	d := filepath.Join(dir, "d")
	file := filepath.Join(d, spec.File)
	setup := func() error {
		if err := os.MkdirAll(filepath.Join(d, "victimdir"), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(file, []byte("mine"), 0o644); err != nil {
			return err
		}
		if err := unix.Setxattr(file, "user.canary", []byte("mine"), 0); err != nil {
			return err
		}
		return os.Symlink(spec.Target, filepath.Join(dir, "s"))
	}
	if err := setup(); err != nil {
		fmt.Fprintln(os.Stderr, "setup:", err)
		return 2
	}

	var stop atomic.Bool
	swaps := make(chan int)
	go func() {
		n := 0
		a, b := filepath.Join(swapIn, "d"), filepath.Join(swapIn, "s")
		for !stop.Load() {
			if unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_EXCHANGE) == nil {
				n++
			}
		}
		swaps <- n
	}()

	op := childOp(spec.Op, d, spec.File)
	res := escapeResult{Errors: map[string]int{}}
	deadline := time.Now().Add(spec.Duration)
	for i := 0; i < spec.MaxIter && time.Now().Before(deadline); i++ {
		if err := op(); err != nil {
			var en syscall.Errno
			if errors.As(err, &en) {
				res.Errors[unix.ErrnoName(en)]++
			} else {
				res.Errors[err.Error()]++
			}
		} else {
			res.OK++
		}
	}
	stop.Store(true)
	res.Swaps = <-swaps
	b, _ := json.Marshal(res)
	os.Stdout.Write(b)
	return 0
}

// childOp returns one iteration of op on names in d; it undoes what a
// success changed (best effort: d may be the symlink by then, and the
// undo is an attack of its own).
func childOp(op, d, name string) func() error {
	p := filepath.Join(d, name)
	n := 0
	switch op {
	case "chmod":
		return func() error { n++; return unix.Chmod(p, 0o644|uint32(n&1)<<1) }
	case "chown":
		return func() error { return unix.Chown(p, escapeUID, escapeUID) }
	case "utimes":
		return func() error {
			n++
			ts := []unix.Timespec{{Sec: int64(1e9 + n)}, {Sec: int64(1e9 + n)}}
			return unix.UtimesNano(p, ts)
		}
	case "setxattr":
		return func() error { return unix.Setxattr(p, "user.attack", []byte("x"), 0) }
	case "removexattr":
		return func() error {
			err := unix.Removexattr(p, "user.canary")
			if err == nil {
				_ = unix.Setxattr(p, "user.canary", []byte("mine"), 0)
			}
			return err
		}
	case "truncate":
		return func() error { return unix.Truncate(p, 0) }
	case "unlink":
		return func() error {
			err := unix.Unlink(p)
			if err == nil {
				_ = os.WriteFile(p, []byte("mine"), 0o644)
			}
			return err
		}
	case "rmdir":
		q := filepath.Join(d, "victimdir")
		return func() error {
			err := unix.Rmdir(q)
			if err == nil {
				_ = unix.Mkdir(q, 0o755)
			}
			return err
		}
	case "rename":
		q := filepath.Join(d, "moved")
		return func() error {
			err := unix.Rename(p, q)
			if err == nil {
				_ = unix.Rename(q, p)
			}
			return err
		}
	case "link":
		q := filepath.Join(d, "linked")
		return func() error {
			err := unix.Link(p, q)
			if err == nil {
				_ = unix.Unlink(q)
			}
			return err
		}
	case "mkdir":
		q := filepath.Join(d, "new")
		return func() error {
			err := unix.Mkdir(q, 0o755)
			if err == nil {
				_ = unix.Rmdir(q)
			}
			return err
		}
	case "mknod":
		q := filepath.Join(d, "new")
		return func() error {
			err := unix.Mknod(q, unix.S_IFIFO|0o644, 0)
			if err == nil {
				_ = unix.Unlink(q)
			}
			return err
		}
	case "symlink":
		q := filepath.Join(d, "new")
		return func() error {
			err := unix.Symlink("x", q)
			if err == nil {
				_ = unix.Unlink(q)
			}
			return err
		}
	case "create":
		q := filepath.Join(d, "new")
		return func() error {
			fd, err := unix.Open(q, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY, 0o644)
			if err == nil {
				unix.Close(fd)
				_ = unix.Unlink(q)
			}
			return err
		}
	}
	panic("unknown op " + op)
}

func mustWriteFile(t *testing.T, p, content string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// markCanary gives file in dir an xattr and old times (so that a change
// of either shows), unless it has them.
func markCanary(t *testing.T, dir, file string) {
	t.Helper()
	p := filepath.Join(dir, file)
	if err := unix.Lsetxattr(p, "user.canary", []byte("canary"), 0); err != nil {
		t.Fatal(err)
	}
	old := time.Unix(1e8, 0)
	for _, q := range []string{p, filepath.Join(dir, "victimdir")} {
		if err := os.Chtimes(q, old, old); err != nil {
			t.Fatal(err)
		}
	}
}

// snapshotDir describes dir and every entry in it: type, mode, owner,
// link count, size, inode, times, xattrs, content or target.
func snapshotDir(t *testing.T, dir string) map[string]string {
	t.Helper()
	s := map[string]string{}
	names := []string{"."}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if filepath.Base(dir) == "auth" && e.Name() == datadir.LeaseName {
			continue // the daemon rewrites its lease every third of its TTL
		}
		names = append(names, e.Name())
	}
	for _, n := range names {
		p := filepath.Join(dir, n)
		var x unix.Statx_t
		if err := unix.Statx(unix.AT_FDCWD, p, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BASIC_STATS, &x); err != nil {
			t.Fatal(err)
		}
		desc := fmt.Sprintf("mode=%o uid=%d gid=%d nlink=%d size=%d ino=%d mtime=%d.%09d ctime=%d.%09d",
			x.Mode, x.Uid, x.Gid, x.Nlink, x.Size, x.Ino, x.Mtime.Sec, x.Mtime.Nsec, x.Ctime.Sec, x.Ctime.Nsec)
		buf := make([]byte, 64<<10)
		if m, err := unix.Llistxattr(p, buf); err == nil {
			attrs := strings.Split(strings.TrimRight(string(buf[:m]), "\x00"), "\x00")
			slices.Sort(attrs)
			for _, a := range attrs {
				if a == "" {
					continue
				}
				v := make([]byte, 64<<10)
				k, _ := unix.Lgetxattr(p, a, v)
				desc += fmt.Sprintf(" %s=%q", a, v[:max(k, 0)])
			}
		}
		switch x.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			desc += fmt.Sprintf(" sha256=%x", sha256.Sum256(b))
		case unix.S_IFLNK:
			l, _ := os.Readlink(p)
			desc += " target=" + l
		}
		s[n] = desc
	}
	return s
}

func diffSnapshots(a, b map[string]string) string {
	var out []string
	for n, v := range a {
		switch w, ok := b[n]; {
		case !ok:
			out = append(out, fmt.Sprintf("%s removed (was %s)", n, v))
		case w != v:
			out = append(out, fmt.Sprintf("%s changed:\n\t\twas %s\n\t\tnow %s", n, v, w))
		}
	}
	for n, w := range b {
		if _, ok := a[n]; !ok {
			out = append(out, fmt.Sprintf("%s appeared: %s", n, w))
		}
	}
	sort.Strings(out)
	return strings.Join(out, "\n\t")
}

// TestAllowOtherPrivileges: what another user of an --allow-other mount
// makes through a root daemon is theirs, and no more than the kernel lets
// them do on a local filesystem: files, directories, symlinks and FIFOs
// belong to them (a setgid directory gives its group), device nodes are
// refused, a hard link to a root file they cannot write is refused, chown
// to root is refused, and an O_TMPFILE file cannot be linked in.
func TestAllowOtherPrivileges(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("TestAllowOtherPrivileges needs root; CI runs as root")
		}
		t.Skip("needs root")
	}
	d := newDaemon(t, "--allow-other")
	root := filepath.Dir(d.data)
	for _, p := range []string{filepath.Dir(root), root} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(d.data, 0o755); err != nil {
		t.Fatal(err)
	}
	d.start()
	w := filepath.Join(d.data, "w")
	sg := filepath.Join(d.data, "sg")
	for _, p := range []string{w, sg} {
		if err := os.Mkdir(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(w, escapeUID, escapeUID); err != nil {
		t.Fatal(err)
	}
	// A setgid directory of group 4242 that everyone may write.
	if err := os.Chown(sg, 0, 4242); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(sg, 0o777|os.ModeSetgid); err != nil {
		t.Fatal(err)
	}
	// A root file in the attacker's directory.
	mustWriteFile(t, filepath.Join(w, "secret"), "root's")
	exe := childBinary(t, root)

	res := runPrivilegesChild(t, exe, escapeSpec{
		Op:     "privileges",
		Dir:    filepath.Join(d.mnt, "w"),
		SwapIn: filepath.Join(d.mnt, "sg"),
	})
	t.Logf("results: %v", res)
	want := map[string]string{
		"create": "OK", "mkdir": "OK", "symlink": "OK", "fifo": "OK",
		"chardev": "EPERM", "blockdev": "EPERM", "link-secret": "EPERM", "chown-root": "EPERM",
		"setgid-create": "OK", "setgid-mkdir": "OK", "tmpfile-link": "OK",
		"chmod-secret": "EPERM", "setxattr-trusted": "EPERM", "setxattr-security-capability": "EPERM",
	}
	for k, v := range want {
		if res[k] != v {
			t.Errorf("%s: %s, want %s", k, res[k], v)
		}
	}
	owned := func(p string, uid, gid uint32) *unix.Stat_t {
		t.Helper()
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Errorf("%s: %v", p, err)
			return &st
		}
		if st.Uid != uid || st.Gid != gid {
			t.Errorf("%s belongs to %d:%d, want %d:%d", p, st.Uid, st.Gid, uid, gid)
		}
		return &st
	}
	// t: the user's own O_TMPFILE file, linked through the /proc link
	// (issue 17), is theirs.
	for _, n := range []string{"f", "d", "s", "p", "t"} {
		owned(filepath.Join(w, n), escapeUID, escapeUID)
	}
	for _, n := range []string{"c", "b", "l"} {
		if _, err := os.Lstat(filepath.Join(w, n)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists in the backing directory (%v)", n, err)
		}
	}
	if st := owned(filepath.Join(w, "secret"), 0, 0); st.Nlink != 1 || st.Mode&0o7777 != 0o600 {
		t.Errorf("secret has %d links, mode %o", st.Nlink, st.Mode)
	}
	buf := make([]byte, 1024)
	if m, err := unix.Llistxattr(filepath.Join(w, "f"), buf); err != nil || m != 0 {
		t.Errorf("f has xattrs %q (%v)", buf[:max(m, 0)], err)
	}
	// Objects that would be inert on a nosuid,nodev backing filesystem
	// must stay inert through the mount.
	if opts := mountOptions(t, d.mnt); !slices.Contains(opts, "nosuid") || !slices.Contains(opts, "nodev") {
		t.Errorf("the mount's options %v lack nosuid or nodev", opts)
	}
	owned(filepath.Join(sg, "f"), escapeUID, 4242)
	if st := owned(filepath.Join(sg, "d"), escapeUID, 4242); st.Mode&unix.S_ISGID == 0 {
		t.Errorf("sg/d has mode %o: a setgid directory's subdirectory must be setgid", st.Mode)
	}
	if res["whiteout"] == "OK" {
		// The whiteout left behind is a 0:0 character device: the
		// caller's, like anything else it makes.
		if st := owned(filepath.Join(w, "wo"), escapeUID, escapeUID); st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
			t.Errorf("whiteout: mode %o rdev %d", st.Mode, st.Rdev)
		}
	}
}

func runPrivilegesChild(t *testing.T, exe string, spec escapeSpec) map[string]string {
	t.Helper()
	b, _ := json.Marshal(spec)
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), escapeEnv+"="+string(b))
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: escapeUID, Gid: escapeUID, Groups: []uint32{}}}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	res := map[string]string{}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("child output %q: %v", out, err)
	}
	return res
}

// privilegesChild tries, as the unprivileged user, what
// TestAllowOtherPrivileges checks; spec.Dir is its own directory and
// spec.SwapIn the setgid one, both through the mount.
func privilegesChild(spec escapeSpec) int {
	res := map[string]string{}
	rec := func(k string, err error) {
		var en syscall.Errno
		switch {
		case err == nil:
			res[k] = "OK"
		case errors.As(err, &en):
			res[k] = unix.ErrnoName(en)
		default:
			res[k] = err.Error()
		}
	}
	w, sg := spec.Dir, spec.SwapIn
	p := func(n string) string { return filepath.Join(w, n) }
	fd, err := unix.Open(p("f"), unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY, 0o644)
	if err == nil {
		unix.Close(fd)
	}
	rec("create", err)
	rec("mkdir", unix.Mkdir(p("d"), 0o755))
	rec("symlink", unix.Symlink("target", p("s")))
	rec("fifo", unix.Mknod(p("p"), unix.S_IFIFO|0o644, 0))
	rec("chardev", unix.Mknod(p("c"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	rec("blockdev", unix.Mknod(p("b"), unix.S_IFBLK|0o666, int(unix.Mkdev(8, 0))))
	rec("link-secret", unix.Link(p("secret"), p("l")))
	rec("chown-root", unix.Chown(p("f"), 0, 0))
	rec("chmod-secret", unix.Chmod(p("secret"), 0o666))
	rec("setxattr-trusted", unix.Setxattr(p("f"), "trusted.x", []byte("x"), 0))
	// A file capability (any valid one) would give privileges to whoever
	// runs the backing file directly.
	rec("setxattr-security-capability", unix.Setxattr(p("f"), "security.capability",
		[]byte{0x01, 0x00, 0x00, 0x02, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0))
	fd, err = unix.Open(filepath.Join(sg, "f"), unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY, 0o644)
	if err == nil {
		unix.Close(fd)
	}
	rec("setgid-create", err)
	rec("setgid-mkdir", unix.Mkdir(filepath.Join(sg, "d"), 0o755))
	fd, err = unix.Open(w, unix.O_TMPFILE|unix.O_WRONLY, 0o644)
	if err == nil {
		err = unix.Linkat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(fd), unix.AT_FDCWD, p("t"), unix.AT_SYMLINK_FOLLOW)
		unix.Close(fd)
	}
	rec("tmpfile-link", err)
	if err := os.WriteFile(p("wo"), nil, 0o644); err == nil {
		rec("whiteout", unix.Renameat2(unix.AT_FDCWD, p("wo"), unix.AT_FDCWD, p("wo2"), unix.RENAME_WHITEOUT))
	}
	b, _ := json.Marshal(res)
	os.Stdout.Write(b)
	return 0
}

// mountOptions returns the options of the mount at dir.
func mountOptions(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 4 && f[1] == dir {
			return strings.Split(f[3], ",")
		}
	}
	t.Fatalf("%s is not mounted", dir)
	return nil
}

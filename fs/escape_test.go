package fs

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/crypto"
)

// The confinement tests: no operation through the mount may touch
// anything outside the backing directory, or the hidden auth/ in it, even
// when a directory the kernel knows is replaced in the backing directory
// by a symlink. The kernel keeps its view of the mount for its cache
// timeouts; go-fuse keeps its tree until a request tells it otherwise. So
// a request can name, by a path of the daemon's tree, a directory that has
// just become a symlink. TestEscapeSwapInBacking makes that state
// deterministic; integration's TestEscapeRace races it as an unprivileged
// user.

// escapeOp is one operation aimed at a name inside a directory that was
// replaced by a symlink. dir is an O_PATH descriptor of the directory as
// the kernel knows it (a FUSE inode), so the kernel itself never follows
// the symlink; file and subdir are names the kernel has looked up in it.
type escapeOp struct {
	name string
	do   func(dir int, file, subdir string) error
}

func procAt(dir int, name string) string {
	return "/proc/self/fd/" + strconv.Itoa(dir) + "/" + name
}

var escapeOps = []escapeOp{
	{"chmod", func(d int, f, _ string) error { return unix.Fchmodat(d, f, 0o666, 0) }},
	{"chown", func(d int, f, _ string) error { return unix.Fchownat(d, f, 65534, 65534, 0) }},
	{"utimes", func(d int, f, _ string) error {
		ts := []unix.Timespec{{Sec: 1e9}, {Sec: 1e9}}
		return unix.UtimesNanoAt(d, f, ts, 0)
	}},
	{"setxattr", func(d int, f, _ string) error { return unix.Setxattr(procAt(d, f), "user.attack", []byte("x"), 0) }},
	{"removexattr", func(d int, f, _ string) error { return unix.Removexattr(procAt(d, f), "user.canary") }},
	{"truncate", func(d int, f, _ string) error { return unix.Truncate(procAt(d, f), 0) }},
	{"write", func(d int, f, _ string) error {
		fd, err := unix.Openat(d, f, unix.O_WRONLY|unix.O_APPEND, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		_, err = unix.Write(fd, []byte("attack"))
		return err
	}},
	{"unlink", func(d int, f, _ string) error { return unix.Unlinkat(d, f, 0) }},
	{"rmdir", func(d int, _, s string) error { return unix.Unlinkat(d, s, unix.AT_REMOVEDIR) }},
	{"rename", func(d int, f, _ string) error { return unix.Renameat(d, f, d, "moved") }},
	{"link", func(d int, f, _ string) error { return unix.Linkat(d, f, d, "linked", 0) }},
	{"mkdir", func(d int, _, _ string) error { return unix.Mkdirat(d, "new", 0o755) }},
	{"mknod", func(d int, _, _ string) error { return unix.Mknodat(d, "new", unix.S_IFIFO|0o644, 0) }},
	{"symlink", func(d int, _, _ string) error { return unix.Symlinkat("x", d, "new") }},
	{"create", func(d int, _, _ string) error {
		fd, err := unix.Openat(d, "new", unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY, 0o644)
		if err == nil {
			unix.Close(fd)
		}
		return err
	}},
}

// treeState records everything about the entries of a directory (and
// the directory itself, as "."): type, mode, owner, size, times, link
// count, extended attributes, and content or symlink target.
type treeState map[string]string

func snapshot(t testing.TB, dir string) treeState {
	t.Helper()
	s := treeState{}
	names := []string{"."}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		names = append(names, e.Name())
	}
	for _, n := range names {
		p := filepath.Join(dir, n)
		var x unix.Statx_t
		if err := unix.Statx(unix.AT_FDCWD, p, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BASIC_STATS|unix.STATX_BTIME, &x); err != nil {
			t.Fatal(err)
		}
		d := fmt.Sprintf("mode=%o uid=%d gid=%d nlink=%d size=%d ino=%d mtime=%d.%d ctime=%d.%d",
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
				d += fmt.Sprintf(" xattr %s=%q", a, v[:max(k, 0)])
			}
		}
		switch x.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			d += fmt.Sprintf(" sha256=%x", sha256.Sum256(b))
		case unix.S_IFLNK:
			l, _ := os.Readlink(p)
			d += " target=" + l
		}
		s[n] = d
	}
	return s
}

// diff describes how b differs from a ("" if it does not).
func (a treeState) diff(b treeState) string {
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
	slices.Sort(out)
	return strings.Join(out, "\n\t")
}

// makeCanary fills dir with what the operations aim at: the file name
// (created unless it exists), with an xattr, and an empty directory
// subdir; it fixes their times so that a change shows.
func makeCanary(t testing.TB, dir, file, subdir string) {
	t.Helper()
	p := filepath.Join(dir, file)
	if _, err := os.Lstat(p); errors.Is(err, os.ErrNotExist) {
		mustWrite(t, p, []byte("canary content"))
	}
	if err := os.Chmod(p, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lsetxattr(p, "user.canary", []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, subdir), 0o755); err != nil {
		t.Fatal(err)
	}
	old := time.Unix(1e8, 0)
	for _, q := range []string{p, filepath.Join(dir, subdir)} {
		if err := os.Chtimes(q, old, old); err != nil {
			t.Fatal(err)
		}
	}
}

// TestEscapeSwapInBacking replaces a directory of the mount, in the
// backing directory, by a symlink to a directory outside the backing
// directory (or to auth/), while the kernel still caches the directory
// (a user with write access to part of the backing directory can do this
// at any time). Then every operation through the mount on a name inside
// that directory must leave the target untouched. The daemon must never
// follow the symlink: it resolves every path without following any.
func TestEscapeSwapInBacking(t *testing.T) {
	for _, target := range []string{"outside", "auth"} {
		for _, cached := range []bool{true, false} {
			prefix := target + "/uncached"
			if cached {
				prefix = target + "/cached"
			}
			for _, op := range escapeOps {
				t.Run(prefix+"/"+op.name, func(t *testing.T) {
					e, dst, file := newEscapeEnv(t, target)
					before := snapshot(t, dst)
					dfd := e.swapDir(t, "d", file, dst, cached)
					err := op.do(dfd, file, "victimdir")
					if d := before.diff(snapshot(t, dst)); d != "" {
						t.Fatalf("%s through the mount changed %s (the call returned %v):\n\t%s", op.name, dst, err, d)
					}
					if !cached && !errors.Is(err, syscall.ESTALE) {
						t.Errorf("%s through a directory whose path is now a symlink: %v, want ESTALE", op.name, err)
					}
				})
			}
			// Reads must not see the target either.
			t.Run(prefix+"/read", func(t *testing.T) {
				e, dst, file := newEscapeEnv(t, target)
				var victim unix.Stat_t
				if err := unix.Lstat(filepath.Join(dst, file), &victim); err != nil {
					t.Fatal(err)
				}
				dfd := e.swapDir(t, "d", file, dst, cached)
				// What the daemon may serve: the directory the kernel
				// knows (d.real now), or nothing.
				ok := func(b []byte) bool { return cached && string(b) == "own" }
				var st unix.Stat_t
				if err := unix.Fstatat(dfd, file, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil && st.Ino == victim.Ino {
					t.Errorf("stat through the mount reports the target's inode %d", st.Ino)
				}
				if b, err := os.ReadFile(procAt(dfd, file)); err == nil && !ok(b) {
					t.Errorf("read through the mount returned %q", b)
				}
				buf := make([]byte, 4096)
				if m, err := unix.Getxattr(procAt(dfd, file), "user.canary", buf); err == nil && !ok(buf[:m]) {
					t.Errorf("getxattr through the mount returned %q", buf[:m])
				}
				if m, err := unix.Listxattr(procAt(dfd, file), buf); err == nil && !cached {
					t.Errorf("listxattr through the mount returned %q", buf[:m])
				}
				if ents, err := os.ReadDir(procAt(dfd, "")); err == nil {
					for _, de := range ents {
						if de.Name() == "victimdir" {
							if fi, err := de.Info(); err == nil && fi.ModTime().Unix() == 1e8 {
								t.Errorf("readdir through the mount listed the target's %s", de.Name())
							}
						}
					}
				}
			})
		}
	}
}

// newEscapeEnv mounts a fresh backing directory with long cache
// timeouts (the kernel keeps what it looked up, as it may for a second
// by default) and prepares the target: a directory outside the backing
// directory, or auth/, with a file and an empty directory to aim at.
func newEscapeEnv(t *testing.T, target string) (e *testEnv, dst, file string) {
	// The file the operations aim at is plaintext under a protected name
	// (auth/verifier.bin's), and reading it says so.
	e = newEnv(t, envOpts{cacheTimeout: time.Hour, plainWarn: true})
	switch target {
	case "outside":
		dst = tempDir(t, "outside")
		file = "victim"
	case "auth":
		dst = filepath.Join(e.backing, reservedDir)
		file = filepath.Base(crypto.VerifierPath(e.backing))
	default:
		t.Fatalf("unknown target %q", target)
	}
	makeCanary(t, dst, file, "victimdir")
	return e, dst, file
}

// swapDir makes directory w (with the file and victimdir/ the
// operations aim at) in the backing directory, has the kernel look up
// its entries through the mount, and opens it through the mount; then it
// renames it to w.real and puts a symlink to dst in its place, in the
// backing directory. It returns the descriptor (an O_PATH descriptor of
// the FUSE directory, closed at cleanup). With cached false the daemon
// forgets the directory descriptors it keeps.
func (e *testEnv) swapDir(t *testing.T, w, file, dst string, cached bool) int {
	t.Helper()
	if err := os.MkdirAll(e.b(filepath.Join(w, "victimdir")), 0o755); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, e.b(filepath.Join(w, file)), []byte("own"))
	if err := unix.Setxattr(e.b(filepath.Join(w, file)), "user.canary", []byte("own"), 0); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{file, "victimdir", "new", "moved", "linked"} {
		_, _ = os.Lstat(e.m(filepath.Join(w, n)))
	}
	dfd, err := unix.Open(e.m(w), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(dfd) })
	if err := os.Rename(e.b(w), e.b(w+".real")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dst, e.b(w)); err != nil {
		t.Fatal(err)
	}
	if !cached {
		// The daemon no longer has the directory's descriptor (it
		// expired, or was evicted): it must resolve the path again.
		e.root.dirs.clear()
	}
	return dfd
}

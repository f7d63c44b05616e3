package fs

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/crypto"
)

// TestWalkTree: the walker visits every entry in name order, skips auth/
// at the root only, never follows a symlink (to a directory outside, or
// swapped in for a directory it is about to enter), and skips what
// vanishes meanwhile.
func TestWalkTree(t *testing.T) {
	root := tempDir(t, "walk")
	outside := tempDir(t, "walk-outside")
	mustWrite(t, filepath.Join(outside, "secret.bin"), []byte("outside"))
	for _, d := range []string{"auth", "a/auth", "a/b", "c", "swap"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"auth/verifier.bin", "a/auth/x.bin", "a/b/y.bin", "a/z", "top.bin"} {
		mustWrite(t, filepath.Join(root, f), []byte("x"))
	}
	if err := os.Symlink(outside, filepath.Join(root, "c", "link")); err != nil {
		t.Fatal(err)
	}
	rootFd, _, err := openBacking(root)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(rootFd)

	var seen []string
	err = walkTree(context.Background(), rootFd, func(e walkEntry) error {
		seen = append(seen, e.rel)
		if e.rel == "c" {
			// Swap "swap" (a directory the walker is about to enter)
			// for a symlink to outside.
			if err := os.Rename(filepath.Join(root, "swap"), filepath.Join(root, "swap.away")); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(outside, filepath.Join(root, "swap")); err != nil {
				t.Fatal(err)
			}
		}
		return nil
	}, func(rel string, err error) error {
		t.Errorf("dirErr(%q, %v)", rel, err)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"a", "a/auth", "a/auth/x.bin", "a/b", "a/b/y.bin", "a/z", "c", "c/link", "swap", "top.bin"}
	if !slices.Equal(seen, want) {
		t.Errorf("walked %q, want %q", seen, want)
	}

	// errSkipDir and errStopWalk.
	seen = nil
	err = walkTree(context.Background(), rootFd, func(e walkEntry) error {
		seen = append(seen, e.rel)
		switch e.rel {
		case "a":
			return errSkipDir
		case "c/link":
			return errStopWalk
		}
		return nil
	}, func(string, error) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"a", "c", "c/link"}; !slices.Equal(seen, want) {
		t.Errorf("walked %q, want %q", seen, want)
	}
}

// TestDirCacheFollowsRenames: a directory descriptor the daemon keeps
// stays right when the directory is renamed through the mount, and a
// directory that is removed and made again under the same name is the
// new one.
func TestDirCacheFollowsRenames(t *testing.T) {
	e := newEnv(t, envOpts{})
	if err := os.MkdirAll(e.m("a/d"), 0o755); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, e.m("a/d/f"), []byte("one"))
	if err := os.Rename(e.m("a/d"), e.m("d2")); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, e.m("d2/g"), []byte("two"))
	if got := string(mustRead(t, e.b("d2/g"))); got != "two" {
		t.Fatalf("d2/g in the backing directory: %q", got)
	}
	if err := os.Mkdir(e.m("a/d"), 0o755); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, e.m("a/d/h"), []byte("three"))
	if _, err := os.Stat(e.b("a/d/h")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(e.b("d2/h")); err == nil {
		t.Fatal("a/d/h landed in d2")
	}
	if err := os.RemoveAll(e.m("a/d")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(e.m("a/d"), 0o755); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, e.m("a/d/i"), []byte("four"))
	if _, err := os.Stat(e.b("a/d/i")); err != nil {
		t.Fatal(err)
	}
}

// TestStaleNodeAfterReplace: a file replaced in the backing directory
// (not through the mount) while the kernel still caches its node is not
// confused with the new one: requests on the old node get ESTALE, which
// makes the kernel look the name up again, so path-based calls see the
// new file.
func TestStaleNodeAfterReplace(t *testing.T) {
	e := newEnv(t, envOpts{cacheTimeout: time.Hour})
	mustWrite(t, e.m("f"), []byte("old"))
	fd, err := unix.Open(e.m("."), unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	var before unix.Stat_t
	if err := unix.Fstatat(fd, "f", &before, 0); err != nil {
		t.Fatal(err)
	}
	// Replace f in the backing directory.
	mustWrite(t, e.b("f.new"), []byte("new content"))
	if err := os.Rename(e.b("f.new"), e.b("f")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(e.m("f"), 0o600); err != nil {
		t.Fatalf("chmod after a replace in the backing directory: %v", err)
	}
	fi, err := os.Stat(e.b("f"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("the new f has mode %v, want 0600 (the chmod went elsewhere)", fi.Mode())
	}
	if got := string(mustRead(t, e.m("f"))); got != "new content" {
		t.Errorf("read %q", got)
	}
}

// TestMountpointInsideBacking: mounting on a directory inside the
// backing directory is refused, also when the path goes through a
// symlink.
func TestMountpointInsideBacking(t *testing.T) {
	backing := tempDir(t, "backing")
	top := tempDir(t, "top")
	if err := os.Mkdir(filepath.Join(backing, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(backing, filepath.Join(top, "link")); err != nil {
		t.Fatal(err)
	}
	kr := crypto.NewKeyring()
	for _, mp := range []string{backing, filepath.Join(backing, "sub"), filepath.Join(top, "link", "sub")} {
		srv, err := Mount(mp, Options{Backing: backing, Keyring: kr})
		if err == nil {
			srv.Unmount()
			t.Errorf("Mount(%s) over backing %s succeeded", mp, backing)
		}
	}
}

// TestOwnerSwitch: objects made as another user belong to that user,
// and the thread is root again afterwards.
func TestOwnerSwitch(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	var o owners
	o.init()
	if !o.can {
		t.Fatal("root cannot switch fsuid here")
	}
	dir := tempDir(t, "owners")
	if err := os.Chmod(dir, 0o700); err != nil { // only root may create here
		t.Fatal(err)
	}
	dfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dfd)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	err = o.as(4321, 8765, func() error {
		if err := mkdirAt(dfd, "d", 0o755); err != nil {
			return err
		}
		return symlinkAt("t", dfd, "s")
	})
	if err != nil {
		t.Fatal(err)
	}
	if cur, _, _ := unix.RawSyscall(unix.SYS_SETFSUID, ^uintptr(0), 0, 0); cur != 0 {
		t.Errorf("fsuid after as: %d", cur)
	}
	if cur, _, _ := unix.RawSyscall(unix.SYS_SETFSGID, ^uintptr(0), 0, 0); cur != 0 {
		t.Errorf("fsgid after as: %d", cur)
	}
	if bits, _, _ := unix.RawSyscall(unix.SYS_PRCTL, unix.PR_GET_SECUREBITS, 0, 0); bits != o.secbits {
		t.Errorf("securebits after as: %#x, want %#x", bits, o.secbits)
	}
	for _, n := range []string{"d", "s"} {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(dir, n), &st); err != nil {
			t.Fatal(err)
		}
		if st.Uid != 4321 || st.Gid != 8765 {
			t.Errorf("%s belongs to %d:%d, want 4321:8765", n, st.Uid, st.Gid)
		}
	}
	// A failing operation restores the credentials too.
	if err := o.as(4321, 8765, func() error { return syscall.EIO }); err != syscall.EIO {
		t.Errorf("as returned %v, want the operation's EIO", err)
	}
	if cur, _, _ := unix.RawSyscall(unix.SYS_SETFSUID, ^uintptr(0), 0, 0); cur != 0 {
		t.Errorf("fsuid after a failed operation: %d", cur)
	}
}

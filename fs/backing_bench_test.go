package fs

import (
	"bytes"
	"os"
	"runtime"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// The cost of making objects as another user (docs/SECURITY.md,
// "Permissions with --allow-other"): what asOwner adds to a creation, and
// what reading a caller's supplementary groups would add on top, which a
// full permission check by the backing filesystem would need (a FUSE
// request carries only uid, gid and pid).

// BenchmarkAsOwner: lock the thread, switch fsuid/fsgid (keeping
// capabilities), check, switch back.
func BenchmarkAsOwner(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	var o owners
	o.init()
	if !o.can {
		b.Fatal("cannot switch")
	}
	for b.Loop() {
		if err := o.as(65534, 65534, func() error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCallerGroups: read a process's supplementary groups from
// /proc/PID/task/TID/status, as a full switch to the caller's
// credentials would have to for every request.
func BenchmarkCallerGroups(b *testing.B) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	p := "/proc/" + strconv.Itoa(os.Getpid()) + "/task/" + strconv.Itoa(unix.Gettid()) + "/status"
	buf := make([]byte, 4096)
	for b.Loop() {
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		m, _ := unix.Read(fd, buf)
		unix.Close(fd)
		if !bytes.Contains(buf[:m], []byte("\nGroups:")) {
			b.Fatal("no Groups line")
		}
	}
}

// BenchmarkMkdirRmdir is the creation these costs are added to (on the
// backing filesystem, without FUSE).
func BenchmarkMkdirRmdir(b *testing.B) {
	dir := tempDir(b, "bench")
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fd)
	for b.Loop() {
		if err := mkdirAt(fd, "d", 0o755); err != nil {
			b.Fatal(err)
		}
		if err := unlinkAt(fd, "d", unix.AT_REMOVEDIR); err != nil {
			b.Fatal(err)
		}
	}
}

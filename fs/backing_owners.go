package fs

import (
	"context"
	"runtime"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// The backing directory (backing.go has the rules every access follows):
// owners of new objects.

// Objects made for another user are made with that user's fsuid and
// fsgid, on a locked OS thread: the backing filesystem then gives them
// the right owner at birth, and a setgid directory its group. The thread
// keeps its capabilities (SECBIT_NO_SETUID_FIXUP): permissions were
// checked by the kernel on the mount (default_permissions), with the
// caller's supplementary groups and capabilities, which a FUSE request
// does not carry; and the directory is the one it checked. Only the
// credentials of the calling thread change, with raw system calls
// (syscall.Setfsuid and friends would change every thread of the
// process), and they are restored before the thread is unlocked. Go
// creates new threads from a clean template thread while one is locked.

// secbitNoSetuidFixup is SECBIT_NO_SETUID_FIXUP: changing the fsuid
// then keeps the thread's capabilities.
const (
	secbitNoSetuidFixup       = 1 << 2
	secbitNoSetuidFixupLocked = 1 << 3
)

// owners switches the fsuid and fsgid of a thread for creations.
type owners struct {
	euid, egid int
	secbits    uintptr // the process's securebits
	can        bool    // switching works here (root with CAP_SETUID)
}

// init finds out whether this process can make objects for other users.
func (o *owners) init() {
	o.euid, o.egid = unix.Geteuid(), unix.Getegid()
	if o.euid != 0 {
		return
	}
	bits, _, e := unix.RawSyscall(unix.SYS_PRCTL, unix.PR_GET_SECUREBITS, 0, 0)
	if e != 0 || (bits&secbitNoSetuidFixupLocked != 0 && bits&secbitNoSetuidFixup == 0) {
		return
	}
	o.secbits = bits
	o.can = o.as(65534, 65534, func() error { return nil }) == nil
}

// as runs fn with fsuid uid and fsgid gid on a locked thread.
func (o *owners) as(uid, gid uint32, fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if _, _, e := unix.RawSyscall(unix.SYS_PRCTL, unix.PR_SET_SECUREBITS, o.secbits|secbitNoSetuidFixup, 0); e != 0 {
		return e
	}
	// setfsuid and setfsgid return the previous value and cannot report
	// an error; a second call tells whether the first one took.
	_, _, _ = unix.RawSyscall(unix.SYS_SETFSGID, uintptr(gid), 0, 0)
	_, _, _ = unix.RawSyscall(unix.SYS_SETFSUID, uintptr(uid), 0, 0)
	defer func() {
		// Back to root: always allowed (the real, effective and saved
		// uid are 0), so the thread never leaves with another user's
		// credentials; then the securebits as they were (a child
		// process started from this thread inherits them).
		_, _, _ = unix.RawSyscall(unix.SYS_SETFSUID, uintptr(o.euid), 0, 0)
		_, _, _ = unix.RawSyscall(unix.SYS_SETFSGID, uintptr(o.egid), 0, 0)
		_, _, _ = unix.RawSyscall(unix.SYS_PRCTL, unix.PR_SET_SECUREBITS, o.secbits, 0)
	}()
	cu, _, _ := unix.RawSyscall(unix.SYS_SETFSUID, uintptr(uid), 0, 0)
	cg, _, _ := unix.RawSyscall(unix.SYS_SETFSGID, uintptr(gid), 0, 0)
	if uint32(cu) != uid || uint32(cg) != gid {
		return syscall.EPERM
	}
	return fn()
}

// asOwner runs fn, which makes new objects in the backing directory, so
// that they belong to the caller of ctx. Without the means to switch (a
// daemon that is not root), fn runs as the daemon and chown, if set,
// gives the object to the caller afterwards (best effort, as a root
// daemon without CAP_SETUID must).
func (r *Root) asOwner(ctx context.Context, fn func() error, chown func(uid, gid int)) error {
	c, ok := fuse.FromContext(ctx)
	if !ok || (int(c.Uid) == r.own.euid && int(c.Gid) == r.own.egid) {
		return fn()
	}
	if r.own.can {
		return r.own.as(c.Uid, c.Gid, fn)
	}
	err := fn()
	if err == nil && chown != nil && r.own.euid == 0 {
		chown(int(c.Uid), int(c.Gid))
	}
	return err
}

// chownNew gives the object just made at name in dir to uid and gid,
// if it is still one the daemon owns of type typ (never following a
// symlink, never chowning a file swapped in meanwhile by someone else).
func chownNew(dir int, name string, typ uint32, uid, gid int) {
	fd, err := unix.Openat(dir, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	var x unix.Statx_t
	if fstatx(fd, &x) != nil || uint32(x.Mode)&unix.S_IFMT != typ&unix.S_IFMT || int(x.Uid) != unix.Geteuid() {
		return
	}
	_ = unix.Fchownat(fd, "", uid, gid, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW)
}

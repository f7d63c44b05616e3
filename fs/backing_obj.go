package fs

import (
	"context"
	"runtime"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The backing directory (backing.go has the rules every access follows):
// operations on a node's object.

// obj is the backing object of a node for one operation: the name in a
// directory descriptor, or (fd >= 0) an O_PATH descriptor of the object.
type obj struct {
	dir  int
	name string
	fd   int
}

// withObj runs fn on n's backing object: for trusted callers the name in
// n's checked directory; for others an O_PATH descriptor of the object,
// checked to be n (ESTALE if the name now holds something else).
func (r *Root) withObj(ctx context.Context, n *node, fn func(o obj) error) error {
	if n.isRoot() {
		return fn(obj{dir: -1, fd: r.rootFd})
	}
	d, name, err := r.parentOf(n)
	if err != nil {
		return err
	}
	defer d.release()
	if r.trusted(ctx) {
		return fn(obj{dir: d.fd, name: name, fd: -1})
	}
	fd, err := r.pinNode(d.fd, name, n)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return fn(obj{dir: -1, fd: fd})
}

// at returns the (dirfd, path, flags) triple of an *at call on o that
// does not follow a symlink.
func (o obj) at() (int, string, int) {
	if o.fd >= 0 {
		return o.fd, "", unix.AT_EMPTY_PATH | unix.AT_SYMLINK_NOFOLLOW
	}
	return o.dir, o.name, unix.AT_SYMLINK_NOFOLLOW
}

func (o obj) chmod(mode uint32) error {
	dir, name, flags := o.at()
	err := unix.Fchmodat(dir, name, mode, flags)
	if err != unix.EOPNOTSUPP {
		return err
	}
	// EOPNOTSUPP: a symlink (whose mode cannot change), or no fchmodat2.
	// Then chmod through /proc on an O_PATH descriptor, after checking
	// that it is not a symlink (chmod would follow one).
	fd := o.fd
	if fd < 0 {
		if fd, err = unix.Openat(o.dir, o.name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0); err != nil {
			return err
		}
		defer unix.Close(fd)
	}
	var x unix.Statx_t
	if err := fstatx(fd, &x); err != nil {
		return err
	}
	if uint32(x.Mode)&unix.S_IFMT == unix.S_IFLNK {
		return unix.EOPNOTSUPP
	}
	return unix.Chmod(procFd(fd), mode)
}

func (o obj) chown(uid, gid int) error {
	dir, name, flags := o.at()
	return unix.Fchownat(dir, name, uid, gid, flags)
}

func (o obj) utimes(ts *[2]unix.Timespec) error {
	dir, name, flags := o.at()
	err := unix.UtimesNanoAt(dir, name, ts[:], flags)
	if err == unix.EINVAL && o.fd >= 0 {
		// A kernel without AT_EMPTY_PATH in utimensat: /proc reaches the
		// object itself, also a symlink.
		err = unix.UtimesNanoAt(unix.AT_FDCWD, procFd(o.fd), ts[:], 0)
	}
	return err
}

func (o obj) stat(x *unix.Statx_t, flags, mask int) error {
	dir, name, f := o.at()
	return unix.Statx(dir, name, f|flags, mask, x)
}

func (o obj) readlink(buf []byte) (int, error) {
	if o.fd >= 0 {
		return unix.Readlinkat(o.fd, "", buf)
	}
	return unix.Readlinkat(o.dir, o.name, buf)
}

// Extended attributes. On a descriptor they go through /proc/self/fd/N
// (fgetxattr and friends refuse O_PATH descriptors; following the /proc
// link reaches the object itself, also a symlink). On a name they use
// the *xattrat calls (Linux 6.13) with AT_SYMLINK_NOFOLLOW, or, on older
// kernels, the l*xattr calls on /proc/self/fd/DIR/NAME, which resolve the
// name in the directory without following it.

// xattrArgs is struct xattr_args of the *xattrat calls (value is a
// __u64 in C; a pointer here, so that the garbage collector and the
// stack copier know it).
type xattrArgs struct {
	value unsafe.Pointer
	size  uint32
	flags uint32
}

var xattratMissing struct {
	sync.Mutex
	missing bool
}

func noXattrat() bool {
	xattratMissing.Lock()
	defer xattratMissing.Unlock()
	return xattratMissing.missing
}

func setNoXattrat() {
	xattratMissing.Lock()
	xattratMissing.missing = true
	xattratMissing.Unlock()
}

func bytePtr(b []byte) unsafe.Pointer {
	if len(b) == 0 {
		return nil
	}
	return unsafe.Pointer(&b[0])
}

// xattrat makes the *xattrat system call nr (getxattrat, setxattrat or
// removexattrat, Linux 6.13) for attr on o's name, not following a
// symlink, with args (nil for removexattrat). err is set when a name
// cannot be passed (a NUL in it), e is the call's result.
func (o obj) xattrat(nr uintptr, attr string, args *xattrArgs) (uintptr, syscall.Errno, error) {
	p, err := unix.BytePtrFromString(o.name)
	if err != nil {
		return 0, 0, err
	}
	a, err := unix.BytePtrFromString(attr)
	if err != nil {
		return 0, 0, err
	}
	if args == nil {
		r, _, e := unix.Syscall6(nr, uintptr(o.dir), uintptr(unsafe.Pointer(p)), unix.AT_SYMLINK_NOFOLLOW,
			uintptr(unsafe.Pointer(a)), 0, 0)
		return r, e, nil
	}
	r, _, e := unix.Syscall6(nr, uintptr(o.dir), uintptr(unsafe.Pointer(p)), unix.AT_SYMLINK_NOFOLLOW,
		uintptr(unsafe.Pointer(a)), uintptr(unsafe.Pointer(args)), unsafe.Sizeof(*args))
	return r, e, nil
}

func (o obj) getxattr(attr string, dest []byte) (int, error) {
	if o.fd >= 0 {
		return unix.Getxattr(procFd(o.fd), attr, dest)
	}
	if !noXattrat() {
		r, e, err := o.xattrat(unix.SYS_GETXATTRAT, attr, &xattrArgs{value: bytePtr(dest), size: uint32(len(dest))})
		runtime.KeepAlive(dest)
		if err != nil {
			return 0, err
		}
		if e != unix.ENOSYS {
			return int(r), errnoErr(e)
		}
		setNoXattrat()
	}
	return unix.Lgetxattr(procFd(o.dir)+"/"+o.name, attr, dest)
}

func (o obj) setxattr(attr string, data []byte, flags int) error {
	if o.fd >= 0 {
		return unix.Setxattr(procFd(o.fd), attr, data, flags)
	}
	if !noXattrat() {
		_, e, err := o.xattrat(unix.SYS_SETXATTRAT, attr, &xattrArgs{value: bytePtr(data), size: uint32(len(data)), flags: uint32(flags)})
		runtime.KeepAlive(data)
		if err != nil {
			return err
		}
		if e != unix.ENOSYS {
			return errnoErr(e)
		}
		setNoXattrat()
	}
	return unix.Lsetxattr(procFd(o.dir)+"/"+o.name, attr, data, flags)
}

func (o obj) removexattr(attr string) error {
	if o.fd >= 0 {
		return unix.Removexattr(procFd(o.fd), attr)
	}
	if !noXattrat() {
		_, e, err := o.xattrat(unix.SYS_REMOVEXATTRAT, attr, nil)
		if err != nil {
			return err
		}
		if e != unix.ENOSYS {
			return errnoErr(e)
		}
		setNoXattrat()
	}
	return unix.Lremovexattr(procFd(o.dir)+"/"+o.name, attr)
}

func (o obj) listxattr(dest []byte) (int, error) {
	if o.fd >= 0 {
		return unix.Listxattr(procFd(o.fd), dest)
	}
	if !noXattrat() {
		p, err := unix.BytePtrFromString(o.name)
		if err != nil {
			return 0, err
		}
		r, _, e := unix.Syscall6(unix.SYS_LISTXATTRAT, uintptr(o.dir), uintptr(unsafe.Pointer(p)),
			unix.AT_SYMLINK_NOFOLLOW, uintptr(bytePtr(dest)), uintptr(len(dest)), 0)
		runtime.KeepAlive(dest)
		if e != unix.ENOSYS {
			return int(r), errnoErr(e)
		}
		setNoXattrat()
	}
	return unix.Llistxattr(procFd(o.dir)+"/"+o.name, dest)
}

func errnoErr(e syscall.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

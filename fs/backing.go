package fs

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/mountd/mountd/crypto"
	"golang.org/x/sys/unix"
)

// The backing directory. This file is the only code of the package that
// touches it by name: everything else holds descriptors this file handed
// out, or calls the operations below. (TestBackingConfinedToOneFile keeps
// it so.) The rules, which keep every operation inside the backing
// directory whatever other users do to it meanwhile:
//
//   - A path is resolved from the root descriptor with openat2 and
//     RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS: a symlink
//     met where a directory is expected is an error for that call (ELOOP,
//     which nodes report as ESTALE), never followed, and no path leads out.
//   - An operation acts on the last component without following it: an
//     *at call with AT_SYMLINK_NOFOLLOW on a name in a directory
//     descriptor, or an O_PATH|O_NOFOLLOW descriptor of the object itself
//     (AT_EMPTY_PATH, or /proc/self/fd/N for calls without a descriptor
//     form: chmod before fchmodat2, xattrs, reopening for I/O).
//   - The directory of a node is checked to be the node's inode (inode
//     number and birth time, as go-fuse identifies it), so a request acts in
//     the directory the kernel checked permissions on: go-fuse computes a
//     node's path from its tree, which can lag behind a rename (it is
//     updated after our Rename returns, and never for a rename made in the
//     backing directory). A path that names something else is ESTALE: the
//     kernel then looks the path up again (and retries once).
//   - Requests of other users (not root, not the daemon's own user; only
//     possible with allow_other) act on an object pinned the same way: an
//     O_PATH descriptor checked to be the node, so a name swapped in the
//     directory meanwhile cannot redirect a chmod to someone else's file.
//     Requests of root act on the name in the checked directory: what root
//     could do to it directly (and one system call instead of four).
//   - Files are opened for I/O only after an O_PATH descriptor showed a
//     regular file, so the daemon never opens a FIFO or a device node that
//     was swapped in under a name.
//   - New files, directories, symlinks and nodes made for another user
//     are made with that user's fsuid and fsgid (asOwner), so they are born
//     with the right owner: no window in which they belong to root, no
//     chown by name that a swap could redirect, and a setgid directory
//     gives its group as on any local filesystem.
//   - Tree walks (scan, migration, stale-temp cleanup) use walkTree, which
//     opens each directory relative to its parent with O_NOFOLLOW and skips
//     auth/ at the root.
//
// Directory descriptors of nodes are cached (dirCache): looking a path up
// for every request costs three system calls (open, stat, close), which
// made listing and unpacking trees 10-20 % slower here.

const resolveFlags = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS

// statxMask is what every stat asks for: the basic fields, and the birth
// time that tells a reused inode number from the node that had it.
const statxMask = unix.STATX_BASIC_STATS | unix.STATX_BTIME

// openBacking opens the backing directory (an administrator's path;
// symlinks in it are followed) as the root descriptor.
func openBacking(path string) (fd int, dev uint64, err error) {
	fd, err = unix.Open(path, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, 0, err
	}
	var x unix.Statx_t
	if err := fstatx(fd, &x); err != nil {
		unix.Close(fd)
		return -1, 0, err
	}
	return fd, unix.Mkdev(x.Dev_major, x.Dev_minor), nil
}

// checkMountpoint fails if mountpoint is the backing directory or lies
// inside it: the daemon would then serve its own mount back to itself
// (and deadlock on its first request there). It compares inodes up the
// mountpoint's ancestry, so symlinks in either path cannot hide it.
func (r *Root) checkMountpoint(mountpoint string) error {
	var root unix.Statx_t
	if err := fstatx(r.rootFd, &root); err != nil {
		return err
	}
	fd, err := unix.Open(mountpoint, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer func() { unix.Close(fd) }()
	for range 4096 {
		var x unix.Statx_t
		if err := fstatx(fd, &x); err != nil {
			return err
		}
		if x.Ino == root.Ino && x.Dev_major == root.Dev_major && x.Dev_minor == root.Dev_minor {
			return fmt.Errorf("mountpoint %s is inside the backing directory %s", mountpoint, r.backing)
		}
		up, err := unix.Openat(fd, "..", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		var ux unix.Statx_t
		if err := fstatx(up, &ux); err != nil {
			unix.Close(up)
			return err
		}
		unix.Close(fd)
		fd = up
		if ux.Ino == x.Ino && ux.Dev_major == x.Dev_major && ux.Dev_minor == x.Dev_minor {
			return nil // the root directory
		}
	}
	return nil
}

// beneath opens rel below the backing root. No component may be a
// symlink (a symlink swapped in by another process gives ELOOP instead of
// opening its target), and the path cannot leave the backing directory.
// With O_PATH|O_NOFOLLOW a final symlink is opened itself.
func (r *Root) beneath(rel string, flags int, mode uint32) (int, error) {
	how := unix.OpenHow{
		Flags:   uint64(flags | unix.O_CLOEXEC | unix.O_NOFOLLOW),
		Resolve: resolveFlags,
	}
	if flags&(unix.O_CREAT|unix.O_TMPFILE) != 0 {
		how.Mode = uint64(mode & 0o7777)
	}
	for i := 0; ; i++ {
		fd, err := unix.Openat2(r.rootFd, rel, &how)
		if (err == unix.EAGAIN || err == unix.EINTR) && i < 16 {
			continue
		}
		return fd, err
	}
}

func fstatx(fd int, x *unix.Statx_t) error {
	return unix.Statx(fd, "", unix.AT_EMPTY_PATH, statxMask, x)
}

// statxFd is statx(2) on an open descriptor with the caller's sync flags
// and mask.
func statxFd(fd, flags, mask int, x *unix.Statx_t) error {
	return unix.Statx(fd, "", unix.AT_EMPTY_PATH|flags, mask, x)
}

// statAt stats name in dir without following it.
func statAt(dir int, name string, x *unix.Statx_t) error {
	return unix.Statx(dir, name, unix.AT_SYMLINK_NOFOLLOW, statxMask, x)
}

// statfs reports the backing filesystem's statistics.
func (r *Root) statfs(s *syscall.Statfs_t) error { return syscall.Fstatfs(r.rootFd, s) }

// procFd is the /proc path of descriptor fd: opening it (or a system
// call that follows it) reaches the very file of fd, also a symlink
// opened with O_PATH|O_NOFOLLOW, without resolving any name again.
func procFd(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

// reopenFd opens the file of fd again (also when it was unlinked), with
// flags, without updating its access time where the kernel allows that.
func reopenFd(fd, flags int) (int, error) {
	p := procFd(fd)
	nfd, err := unix.Open(p, flags|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NOATIME, 0)
	if err == unix.EPERM {
		nfd, err = unix.Open(p, flags|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	}
	return nfd, err
}

// errNotRegular gives the errno that opening a non-regular file for
// I/O gets.
func errNotRegular(x *unix.Statx_t) error {
	switch uint32(x.Mode) & unix.S_IFMT {
	case unix.S_IFDIR:
		return unix.EISDIR
	case unix.S_IFLNK:
		return unix.ELOOP
	}
	return unix.ENXIO
}

// openRegular opens the regular file that the O_PATH descriptor pfd
// refers to with flags, filling x with its attributes. Anything else (a
// FIFO, a device, a symlink swapped in under the name) is refused before
// it is opened.
func openRegular(pfd, flags int, x *unix.Statx_t) (int, error) {
	if err := fstatx(pfd, x); err != nil {
		return -1, err
	}
	if !isReg(x) {
		return -1, errNotRegular(x)
	}
	return reopenFd(pfd, flags)
}

// openRegularAt opens the regular file name in dir (see openRegular).
func openRegularAt(dir int, name string, flags int, x *unix.Statx_t) (int, error) {
	pfd, err := unix.Openat(dir, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	defer unix.Close(pfd)
	return openRegular(pfd, flags, x)
}

// ---- node identity ----

// isNode reports whether x, the attributes of a backing object, belong
// to n's inode: the same identity go-fuse gave n (inode number, mixed
// with the device, birth time, type).
func (r *Root) isNode(n *node, x *unix.Statx_t) bool {
	want, got := n.StableAttr(), r.stableAttr(x)
	return got.Ino == want.Ino && got.Gen == want.Gen && got.Mode == want.Mode&unix.S_IFMT
}

// staleErr turns the error of resolving a node's path into what the
// kernel should get: a path that now has a symlink or a file where a
// directory was no longer names the node (ESTALE: look it up again).
func staleErr(err error) error {
	if err == unix.ELOOP || err == unix.ENOTDIR {
		return syscall.ESTALE
	}
	return err
}

// trusted reports whether the caller of ctx may have the daemon act on a
// name rather than on a pinned object: root, the daemon's own user, or
// the daemon itself (no caller).
func (r *Root) trusted(ctx context.Context) bool {
	c, ok := fuse.FromContext(ctx)
	return !ok || c.Uid == 0 || int(c.Uid) == r.own.euid
}

// ---- directories of nodes ----

// bdir is a directory descriptor borrowed for one request.
type bdir struct {
	fd int
	e  *dirEntry // nil for the root descriptor
	c  *dirCache
}

func (d bdir) release() {
	if d.e != nil {
		d.c.release(d.e)
	}
}

// dirOf returns a descriptor of directory node n's backing directory,
// checked to be n's inode. Release it when done.
func (r *Root) dirOf(n *node) (bdir, error) {
	if n == nil {
		return bdir{}, syscall.ENOENT
	}
	if n.isRoot() {
		return bdir{fd: r.rootFd}, nil
	}
	if e := r.dirs.get(n); e != nil {
		return bdir{fd: e.fd, e: e, c: &r.dirs}, nil
	}
	fd, err := r.beneath(n.rel(), unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return bdir{}, staleErr(err)
	}
	var x unix.Statx_t
	if err := fstatx(fd, &x); err != nil {
		unix.Close(fd)
		return bdir{}, err
	}
	if !r.isNode(n, &x) {
		unix.Close(fd)
		return bdir{}, syscall.ESTALE
	}
	return bdir{fd: fd, e: r.dirs.add(n, fd), c: &r.dirs}, nil
}

// parentOf returns the directory that holds n and n's name in it.
func (r *Root) parentOf(n *node) (bdir, string, error) {
	name, parent := n.Parent()
	if parent == nil {
		return bdir{}, "", syscall.ENOENT
	}
	d, err := r.dirOf(nodeOf(parent))
	return d, name, err
}

// dirCache keeps directory descriptors of nodes, so that a request does
// not look up the node's path again. An entry is checked to be the node's
// inode when it is made, and a descriptor keeps pointing at its directory
// whatever happens to names, so renames through the mount need no
// invalidation. What a descriptor does not follow is its directory being
// moved out of the backing directory by someone with write access to
// both places (not possible through the mount): entries expire after the
// kernel's entry timeout, the time for which the kernel itself keeps
// using the node, so such a directory stays reachable no longer than the
// kernel keeps it. At most maxDirs descriptors are kept.
type dirCache struct {
	ttl time.Duration
	max int

	mu  sync.Mutex
	m   map[*node]*dirEntry
	lru list.List // of *dirEntry, most recently used first
}

type dirEntry struct {
	n    *node
	fd   int
	born time.Time
	refs int           // borrowers, plus one while in the cache; guarded by dirCache.mu
	el   *list.Element // nil once out of the cache
}

// maxDirs bounds the descriptors dirCache keeps open.
const maxDirs = 256

func (c *dirCache) init(ttl time.Duration) {
	c.ttl, c.max = ttl, maxDirs
	c.m = map[*node]*dirEntry{}
}

// get returns n's entry with a reference taken, or nil.
func (c *dirCache) get(n *node) *dirEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.m[n]
	if e == nil {
		return nil
	}
	if time.Since(e.born) >= c.ttl {
		c.removeLocked(e)
		return nil
	}
	c.lru.MoveToFront(e.el)
	e.refs++
	return e
}

// add makes an entry for fd, n's directory, and returns it with a
// reference taken (the descriptor is closed when the last goes).
func (c *dirCache) add(n *node, fd int) *dirEntry {
	e := &dirEntry{n: n, fd: fd, born: time.Now(), refs: 1}
	if c.ttl <= 0 {
		return e
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.m[n]; old != nil {
		c.removeLocked(old)
	}
	e.refs++
	e.el = c.lru.PushFront(e)
	c.m[n] = e
	// Drop the least recently used beyond max, and expired ones from
	// the cold end, so that no descriptor outlives its time for long.
	for b := c.lru.Back(); b != nil; b = c.lru.Back() {
		old := b.Value.(*dirEntry)
		if c.lru.Len() <= c.max && time.Since(old.born) < c.ttl {
			break
		}
		c.removeLocked(old)
	}
	return e
}

func (c *dirCache) release(e *dirEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.unrefLocked(e)
}

func (c *dirCache) unrefLocked(e *dirEntry) {
	if e.refs--; e.refs == 0 {
		unix.Close(e.fd)
	}
}

func (c *dirCache) removeLocked(e *dirEntry) {
	delete(c.m, e.n)
	c.lru.Remove(e.el)
	e.el = nil
	c.unrefLocked(e)
}

// drop forgets n's entry (n was removed, or the kernel forgot it).
func (c *dirCache) drop(n *node) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.m[n]; e != nil {
		c.removeLocked(e)
	}
}

// clear forgets every entry.
func (c *dirCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.m {
		c.removeLocked(e)
	}
}

// ---- operations on a node's object ----

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
	fd, err := unix.Openat(d.fd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var x unix.Statx_t
	if err := fstatx(fd, &x); err != nil {
		return err
	}
	if !r.isNode(n, &x) {
		return syscall.ESTALE
	}
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

func (o obj) getxattr(attr string, dest []byte) (int, error) {
	if o.fd >= 0 {
		return unix.Getxattr(procFd(o.fd), attr, dest)
	}
	if !noXattrat() {
		p, err := unix.BytePtrFromString(o.name)
		if err != nil {
			return 0, err
		}
		a, err := unix.BytePtrFromString(attr)
		if err != nil {
			return 0, err
		}
		args := xattrArgs{value: bytePtr(dest), size: uint32(len(dest))}
		r, _, e := unix.Syscall6(unix.SYS_GETXATTRAT, uintptr(o.dir), uintptr(unsafe.Pointer(p)),
			unix.AT_SYMLINK_NOFOLLOW, uintptr(unsafe.Pointer(a)), uintptr(unsafe.Pointer(&args)), unsafe.Sizeof(args))
		runtime.KeepAlive(dest)
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
		p, err := unix.BytePtrFromString(o.name)
		if err != nil {
			return err
		}
		a, err := unix.BytePtrFromString(attr)
		if err != nil {
			return err
		}
		args := xattrArgs{value: bytePtr(data), size: uint32(len(data)), flags: uint32(flags)}
		_, _, e := unix.Syscall6(unix.SYS_SETXATTRAT, uintptr(o.dir), uintptr(unsafe.Pointer(p)),
			unix.AT_SYMLINK_NOFOLLOW, uintptr(unsafe.Pointer(a)), uintptr(unsafe.Pointer(&args)), unsafe.Sizeof(args))
		runtime.KeepAlive(data)
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
		p, err := unix.BytePtrFromString(o.name)
		if err != nil {
			return err
		}
		a, err := unix.BytePtrFromString(attr)
		if err != nil {
			return err
		}
		_, _, e := unix.Syscall6(unix.SYS_REMOVEXATTRAT, uintptr(o.dir), uintptr(unsafe.Pointer(p)),
			unix.AT_SYMLINK_NOFOLLOW, uintptr(unsafe.Pointer(a)), 0, 0)
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

// ---- attributes of nodes and children ----

// statChild stats name in dir into x. For a file whose class the
// attributes depend on (a protected name; see probes) and that hint does
// not have cached, it opens the file and returns the descriptor, with x
// from it, so that the header classify reads belongs to the inode whose
// attributes are reported: a name swapped between the stat and the read
// cannot make an encrypted file show its raw size. The caller closes fd
// if it is >= 0.
func (r *Root) statChild(dir int, name string, hint *node, x *unix.Statx_t) (fd int, err error) {
	for attempt := 0; ; attempt++ {
		if err := statAt(dir, name, x); err != nil {
			return -1, err
		}
		if !r.probes(name, x) || (hint != nil && hint.classCached(x)) {
			return -1, nil
		}
		var fx unix.Statx_t
		fd, err := openRegularAt(dir, name, unix.O_RDONLY|unix.O_NONBLOCK, &fx)
		if err != nil {
			if attempt < 5 && (err == unix.ELOOP || err == unix.ENOENT || err == unix.ENXIO || err == unix.EISDIR) {
				continue // replaced under us: stat again
			}
			return -1, nil
		}
		*x = fx
		return fd, nil
	}
}

// statNode stats n into x, checking that its name still holds it; see
// statChild for fd.
func (r *Root) statNode(n *node, x *unix.Statx_t) (fd int, err error) {
	if n.isRoot() {
		return -1, fstatx(r.rootFd, x)
	}
	d, name, err := r.parentOf(n)
	if err != nil {
		return -1, err
	}
	defer d.release()
	fd, err = r.statChild(d.fd, name, n, x)
	if err == nil && !r.isNode(n, x) {
		if fd >= 0 {
			unix.Close(fd)
		}
		return -1, syscall.ESTALE
	}
	return fd, err
}

// statxNode is statx(2) on n with the caller's flags and mask (the
// attributes of a node whose name still holds it).
func (r *Root) statxNode(ctx context.Context, n *node, flags, mask int, x *unix.Statx_t) error {
	return r.withObj(ctx, n, func(o obj) error {
		if err := o.stat(x, flags, mask|statxMask); err != nil {
			return err
		}
		if !n.isRoot() && !r.isNode(n, x) {
			return syscall.ESTALE
		}
		return nil
	})
}

// openNode opens regular file n for I/O with flags, filling x; the file
// must be n (ESTALE otherwise).
func (r *Root) openNode(n *node, flags int, x *unix.Statx_t) (int, error) {
	if n.isRoot() {
		return -1, syscall.EISDIR
	}
	d, name, err := r.parentOf(n)
	if err != nil {
		return -1, err
	}
	defer d.release()
	fd, err := openRegularAt(d.fd, name, flags, x)
	if err != nil {
		switch err {
		case unix.ELOOP, unix.ENXIO, unix.EISDIR:
			err = syscall.ESTALE // the kernel opens regular files only
		case unix.ENOENT:
			// The name no longer holds n: the kernel looks it up again
			// and the application gets ENOENT only if it is gone. On
			// sshfs an open that races a rename onto the name (a
			// conversion's commit) can find the replaced file gone
			// from the server while the new one is already there.
			err = syscall.ESTALE
		}
		return -1, err
	}
	if !r.isNode(n, x) {
		unix.Close(fd)
		return -1, syscall.ESTALE
	}
	return fd, nil
}

// openDir opens directory n for reading.
func (r *Root) openDir(n *node) (int, error) {
	d, err := r.dirOf(n)
	if err != nil {
		return -1, err
	}
	defer d.release()
	return unix.Openat(d.fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
}

// ---- changes in a directory ----

func mkdirAt(dir int, name string, mode uint32) error { return unix.Mkdirat(dir, name, mode) }
func mknodAt(dir int, name string, mode, dev uint32) error {
	return unix.Mknodat(dir, name, mode, int(dev))
}
func symlinkAt(target string, dir int, name string) error { return unix.Symlinkat(target, dir, name) }
func unlinkAt(dir int, name string, flags int) error      { return unix.Unlinkat(dir, name, flags) }

// renameAt renames (flags as renameat2) without following anything.
func renameAt(dir1 int, name1 string, dir2 int, name2 string, flags uint) error {
	return unix.Renameat2(dir1, name1, dir2, name2, flags)
}

// createAt creates regular file name in dir exclusively (never through a
// symlink) and opens it with flags.
func createAt(dir int, name string, flags int, mode uint32) (int, error) {
	fd, err := unix.Openat(dir, name, flags|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NOATIME, mode)
	if err == unix.EPERM {
		fd, err = unix.Openat(dir, name, flags|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
	}
	return fd, err
}

// tmpfileAt creates an unnamed regular file in dir (O_TMPFILE).
func tmpfileAt(dir int, flags int, mode uint32) (int, error) {
	return unix.Openat(dir, ".", flags|unix.O_TMPFILE|unix.O_CLOEXEC, mode)
}

// linkNode makes name in dir a hard link to n's object, pinned and
// checked to be n: a name swapped meanwhile cannot make it link another
// file.
func (r *Root) linkNode(n *node, dir int, name string) error {
	if n.isRoot() {
		return syscall.EPERM
	}
	d, oldName, err := r.parentOf(n)
	if err != nil {
		return err
	}
	defer d.release()
	fd, err := unix.Openat(d.fd, oldName, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var x unix.Statx_t
	if err := fstatx(fd, &x); err != nil {
		return err
	}
	if !r.isNode(n, &x) {
		return syscall.ESTALE
	}
	// Following the /proc link reaches the object itself (also a
	// symlink); unlike AT_EMPTY_PATH it needs no CAP_DAC_READ_SEARCH.
	return unix.Linkat(unix.AT_FDCWD, procFd(fd), dir, name, unix.AT_SYMLINK_FOLLOW)
}

// linkTmpfile makes name in dir a link to the file open as fd, an
// O_TMPFILE file that has no name yet (or any file the descriptor pins):
// the /proc link reaches the very file, as linkNode does.
func linkTmpfile(fd int, dir int, name string) error {
	return unix.Linkat(unix.AT_FDCWD, procFd(fd), dir, name, unix.AT_SYMLINK_FOLLOW)
}

// openParentDir opens the directory that holds n (checked to be its
// parent node's inode) for reading, so that it can be fsynced, and
// returns it with n's name in it.
func (r *Root) openParentDir(n *node) (int, string, error) {
	d, name, err := r.parentOf(n)
	if err != nil {
		return -1, "", err
	}
	defer d.release()
	fd, err := unix.Openat(d.fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, "", err
	}
	return fd, name, nil
}

// ---- owners of new objects ----

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

// ---- tree walks ----

// walkEntry is one entry met by walkTree.
type walkEntry struct {
	dir  int    // descriptor of the directory holding it, valid during the call
	rel  string // path from the walk's root
	name string
	typ  uint32 // S_IFMT bits of the entry
}

var (
	errSkipDir  = errors.New("skip directory")
	errStopWalk = errors.New("stop walk")
)

// maxWalkDepth bounds how deep walkTree goes (one descriptor per level).
const maxWalkDepth = 1024

// errTooDeep: a directory deeper than maxWalkDepth.
var errTooDeep = errors.New("directory nested too deep")

// walkTree calls visit for every entry below the directory root (a
// descriptor of the backing root), depth first, in name order, except
// auth/ at the root and what is below it; it descends into the
// directories for which visit returns nil (errSkipDir: not this one,
// errStopWalk: stop). Each directory is opened relative to its parent with
// O_NOFOLLOW|O_DIRECTORY, so a symlink swapped in for a directory is never
// followed, and entries that vanish meanwhile are skipped. A directory
// that cannot be read is passed to dirErr with its error; dirErr returns
// nil to go on.
func walkTree(ctx context.Context, root int, visit func(e walkEntry) error, dirErr func(rel string, err error) error) error {
	dfd, err := unix.Openat(root, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	err = walkDir(ctx, dfd, "", 0, visit, dirErr)
	if errors.Is(err, errStopWalk) {
		return nil
	}
	return err
}

// walkDir walks the directory open as dfd (consumed), whose path is rel.
func walkDir(ctx context.Context, dfd int, rel string, depth int, visit func(walkEntry) error, dirErr func(string, error) error) error {
	ents, err := readDirents(dfd)
	if err != nil {
		unix.Close(dfd)
		return dirErr(rel, err)
	}
	defer unix.Close(dfd)
	for _, de := range ents {
		if err := ctx.Err(); err != nil {
			return err
		}
		if rel == "" && de.name == reservedDir {
			continue // the one rule for auth/: never walked
		}
		typ := de.typ
		if typ == 0 {
			var x unix.Statx_t
			if err := statAt(dfd, de.name, &x); err != nil {
				continue // gone
			}
			typ = uint32(x.Mode) & unix.S_IFMT
		}
		crel := de.name
		if rel != "" {
			crel = rel + "/" + de.name
		}
		err := visit(walkEntry{dir: dfd, rel: crel, name: de.name, typ: typ})
		if err != nil && err != errSkipDir {
			return err
		}
		if err == errSkipDir || typ != unix.S_IFDIR {
			continue
		}
		if depth+1 >= maxWalkDepth {
			if err := dirErr(crel, errTooDeep); err != nil {
				return err
			}
			continue
		}
		cfd, err := unix.Openat(dfd, de.name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err != nil {
			if err == unix.ENOENT || err == unix.ENOTDIR || err == unix.ELOOP {
				continue // removed or replaced meanwhile
			}
			if err := dirErr(crel, err); err != nil {
				return err
			}
			continue
		}
		if err := walkDir(ctx, cfd, crel, depth+1, visit, dirErr); err != nil {
			return err
		}
	}
	return nil
}

type dirent struct {
	name string
	typ  uint32
}

// readDirents reads all entries of the directory open as fd, sorted by
// name, without "." and "..".
func readDirents(fd int) ([]dirent, error) {
	var out []dirent
	buf := make([]byte, 32<<10)
	for {
		m, err := unix.Getdents(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if m <= 0 {
			break
		}
		for b := buf[:m]; len(b) > 0; {
			reclen := int(*(*uint16)(unsafe.Pointer(&b[16])))
			if reclen == 0 || reclen > len(b) {
				return nil, unix.EIO
			}
			typ := b[18]
			nameb := b[19:reclen]
			if i := slices.Index(nameb, 0); i >= 0 {
				nameb = nameb[:i]
			}
			if name := string(nameb); name != "." && name != ".." {
				out = append(out, dirent{name: name, typ: dtToMode(typ)})
			}
			b = b[reclen:]
		}
	}
	slices.SortFunc(out, func(a, b dirent) int {
		switch {
		case a.name < b.name:
			return -1
		case a.name > b.name:
			return 1
		}
		return 0
	})
	return out, nil
}

func dtToMode(t byte) uint32 {
	switch t {
	case unix.DT_REG:
		return unix.S_IFREG
	case unix.DT_DIR:
		return unix.S_IFDIR
	case unix.DT_LNK:
		return unix.S_IFLNK
	case unix.DT_FIFO:
		return unix.S_IFIFO
	case unix.DT_SOCK:
		return unix.S_IFSOCK
	case unix.DT_CHR:
		return unix.S_IFCHR
	case unix.DT_BLK:
		return unix.S_IFBLK
	}
	return 0
}

// ---- conversion and migration ----

// openDirRel opens directory rel (a path from the backing root) for
// fsync and *at calls.
func (r *Root) openDirRel(rel string) (int, error) {
	return r.beneath(rel, unix.O_RDONLY|unix.O_DIRECTORY, 0)
}

// Filesystem types (statfs f_type) whose syncfs does not make a file's
// data durable on the storage that holds it: FUSE sends no sync to the
// server (except virtiofs, which is not a network filesystem we can tell
// apart; it only costs fsyncs), and the SMB clients have no sync_fs.
const (
	fuseSuperMagic = 0x65735546
	smbSuperMagic  = 0x517b
	cifsMagic      = 0xff534d42
	smb2Magic      = 0xfe534d42
)

// syncfsDurable reports whether syncfs on the filesystem of fd makes its
// written files durable (false when it cannot tell).
func syncfsDurable(fd int) bool {
	var s unix.Statfs_t
	if unix.Fstatfs(fd, &s) != nil {
		return false
	}
	switch uint32(s.Type) {
	case fuseSuperMagic, smbSuperMagic, cifsMagic, smb2Magic:
		return false
	}
	return true
}

// Filesystem types (statfs f_type) whose clients make a file size change
// a round trip to the server that waits for the writes in flight: an
// encrypted file there grows by write, not by ftruncate
// (crypto.File.SetNetworkBacking; docs/FORMAT.md section 2.1).
const (
	nfsSuperMagic  = 0x6969
	cephSuperMagic = 0x00c36400
	v9fsMagic      = 0x01021997
	afsSuperMagic  = 0x5346414f
)

// growModes remembers, per device, whether encrypted files on it grow by
// write (one statfs per device).
type growModes struct {
	force   bool // Options.NetworkBacking
	mu      sync.Mutex
	byWrite map[uint64]bool
}

// openCrypt opens the encrypted file in the backing file f for reading
// and writing through r: crypto.OpenFile, written as its filesystem wants
// (tune). Every crypto.File that the mount writes comes from here or from
// createCrypt.
func (r *Root) openCrypt(f *os.File) (*crypto.File, error) {
	cf, err := crypto.OpenFile(r.kr, f)
	if err == nil {
		r.tune(cf, int(f.Fd()))
	}
	return cf, err
}

// createCrypt is crypto.CreateFile for r, written as the filesystem of f
// wants (tune).
func (r *Root) createCrypt(f *os.File) (*crypto.File, error) {
	cf, err := crypto.CreateFile(r.kr, f)
	if err == nil {
		r.tune(cf, int(f.Fd()))
	}
	return cf, err
}

// tune sets how cf, an encrypted file open on fd, is written: as on a
// network filesystem when fd's is one (or Options.NetworkBacking).
func (r *Root) tune(cf *crypto.File, fd int) {
	if r.grow.force {
		cf.SetNetworkBacking(true)
		return
	}
	// The device of an open file is the kernel's to tell: no round trip
	// to a network filesystem's server (AT_STATX_DONT_SYNC).
	var st unix.Statx_t
	if unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_STATX_DONT_SYNC, 0, &st) != nil {
		return
	}
	dev := unix.Mkdev(st.Dev_major, st.Dev_minor)
	g := &r.grow
	g.mu.Lock()
	defer g.mu.Unlock()
	byWrite, ok := g.byWrite[dev]
	if !ok {
		var s unix.Statfs_t
		if unix.Fstatfs(fd, &s) != nil {
			return
		}
		switch uint32(s.Type) {
		case fuseSuperMagic, nfsSuperMagic, smbSuperMagic, cifsMagic, smb2Magic, cephSuperMagic, v9fsMagic, afsSuperMagic:
			byWrite = true
		}
		if g.byWrite == nil {
			g.byWrite = map[uint64]bool{}
		}
		g.byWrite[dev] = byWrite
	}
	cf.SetNetworkBacking(byWrite)
}

// SyncDir makes the entries of directory rel (a path from the backing
// root) durable: the conversions committed in it with NoDirSync.
func (r *Root) SyncDir(rel string) error {
	fd, err := r.openDirRel(rel)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Fsync(fd)
}

// RemoveTemp removes rel (a path from the backing root) if it is still a
// regular file named like a conversion's temp file: the old plaintext
// that a commit with KeepOld left.
func (r *Root) RemoveTemp(rel string) error {
	dir, base := splitRel(rel)
	dirfd, err := r.beneath(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(dirfd)
	var x unix.Statx_t
	if err := statAt(dirfd, base, &x); err != nil {
		return err
	}
	if !isReg(&x) || !isStaleTemp(base) {
		return nil
	}
	return unlinkAt(dirfd, base, 0)
}

// removeTempsBelow removes every regular file named like a conversion's
// temp file (isStaleTemp) below the backing directory at path, except in
// auth/, reporting each one removed and each problem (a directory that
// cannot be read, a file that cannot be removed).
func removeTempsBelow(ctx context.Context, path string, removed func(rel string), problem func(rel string, err error)) error {
	root, _, err := openBacking(path)
	if err != nil {
		return err
	}
	defer unix.Close(root)
	return walkTree(ctx, root, func(e walkEntry) error {
		if e.typ != unix.S_IFREG || !isStaleTemp(e.name) {
			return nil
		}
		// Whatever non-directory has this name now goes: the name is ours.
		if err := unlinkAt(e.dir, e.name, 0); err != nil {
			if err != unix.ENOENT {
				problem(e.rel, err)
			}
			return nil
		}
		removed(e.rel)
		return nil
	}, func(rel string, err error) error {
		if rel == "" {
			return err
		}
		if err != unix.ENOENT {
			problem(rel, err)
		}
		return nil
	})
}

// splitRel splits a path from the backing root into its directory (".")
// and its last component.
func splitRel(rel string) (dir, base string) {
	for i := len(rel) - 1; i >= 0; i-- {
		if rel[i] == '/' {
			return rel[:i], rel[i+1:]
		}
	}
	return ".", rel
}

// hasMagicAt reports whether the regular file name in dir starts with
// the crypto magic (false if it is gone or no regular file).
func hasMagicAt(dir int, name string) (bool, error) {
	var x unix.Statx_t
	fd, err := openRegularAt(dir, name, unix.O_RDONLY|unix.O_NONBLOCK, &x)
	if err != nil {
		if err == unix.ENOENT || err == unix.ELOOP || err == unix.EISDIR || err == unix.ENXIO {
			return false, nil
		}
		return false, err
	}
	defer unix.Close(fd)
	return readMagic(fd)
}

// ---- the daemon's own files in auth/ ----

// openAuthDir opens auth/ at the backing root (root), creating it (0700)
// if it is missing; a symlink there is an error.
func openAuthDir(root int) (int, error) {
	if err := unix.Mkdirat(root, reservedDir, 0o700); err != nil && err != unix.EEXIST {
		return -1, err
	}
	return unix.Openat(root, reservedDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
}

// openAuthFile opens the regular file name in auth/ for reading and
// writing, creating it (0600) if it is missing, never through a symlink.
func openAuthFile(root int, name string) (*os.File, error) {
	dir, err := openAuthDir(root)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dir)
	fd, err := unix.Openat(dir, name, unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, err
	}
	var x unix.Statx_t
	if err := fstatx(fd, &x); err != nil || !isReg(&x) {
		unix.Close(fd)
		if err == nil {
			err = unix.EINVAL
		}
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

// replaceAuthFile replaces auth/name with a file holding data, durably
// (a temp file written and fsynced, renamed over name, auth/ fsynced),
// and returns the new file open for reading and writing.
func replaceAuthFile(root int, name string, data []byte) (*os.File, error) {
	dir, err := openAuthDir(root)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dir)
	tmp := name + ".tmp"
	_ = unix.Unlinkat(dir, tmp, 0)
	fd, err := unix.Openat(dir, tmp, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), name)
	ok := false
	defer func() {
		if !ok {
			f.Close()
			_ = unix.Unlinkat(dir, tmp, 0)
		}
	}()
	if _, err := f.WriteAt(data, 0); err != nil {
		return nil, err
	}
	if err := f.Sync(); err != nil {
		return nil, err
	}
	if err := unix.Renameat(dir, tmp, dir, name); err != nil {
		return nil, err
	}
	ok = true
	// The new file is in place: it is the log from now on, even if this
	// fsync fails (the next one of auth/ would then make it last).
	_ = unix.Fsync(dir)
	return f, nil
}

package fs

import (
	"context"
	"fmt"
	"strconv"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// The backing directory. This file and the other backing_*.go files are
// the only code of the package that touches it by name: everything else
// holds descriptors they handed out, or calls their operations.
// (TestBackingConfined keeps it so.) The rules, which keep every
// operation inside the backing directory whatever other users do to it
// meanwhile:
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
//
// The files: backing.go resolves paths, stats and opens nodes and
// changes directories; backing_dirs.go holds the directories of nodes and
// their cache; backing_obj.go the operations on a node's own object
// (chmod, chown, times, xattrs); backing_owners.go makes objects for other
// users; backing_walk.go walks trees; backing_fscaps.go tells what the
// backing filesystem can do; backing_convert.go serves conversion and
// migration; backing_auth.go the daemon's files in auth/.

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

// pinNode opens name in directory dir as an O_PATH descriptor of the
// object itself (a symlink is not followed), checked to be n's inode:
// ESTALE when the name holds something else now.
func (r *Root) pinNode(dir int, name string, n *node) (int, error) {
	fd, err := unix.Openat(dir, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	var x unix.Statx_t
	if err := fstatx(fd, &x); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if !r.isNode(n, &x) {
		unix.Close(fd)
		return -1, syscall.ESTALE
	}
	return fd, nil
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
	fd, err := r.pinNode(d.fd, oldName, n)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
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

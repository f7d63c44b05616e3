package fs

import (
	"context"
	"path"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Directory and namespace operations. They mirror go-fuse's LoopbackNode,
// with paths resolved relative to the backing root descriptor, and keep
// the reserved auth/ directory out of reach: it is never listed, looked up
// or removed (ENOENT), and nothing can be created, renamed or linked onto
// its name (EPERM).

// Lookup finds name in directory n.
func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if n.hidden(name) {
		return nil, syscall.ENOENT
	}
	return n.newChild(ctx, n.childRel(name), out)
}

// newChild makes (or finds) the node for the backing file at rel, a child
// of n, and fills out with its attributes.
func (n *node) newChild(ctx context.Context, rel string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	_, name := path.Split(rel)
	hint := nodeOf(n.GetChild(name))
	for attempt := 0; ; attempt++ {
		var x unix.Statx_t
		fd, err := n.root.statForAttr(rel, hint, &x)
		if err != nil {
			return nil, errnoOf(err)
		}
		ch := n.NewInode(ctx, n.root.newNode(), n.root.stableAttr(&x))
		cn := nodeOf(ch)
		if fd < 0 && n.root.probes(rel, &x) && !cn.classCached(&x) && attempt < 3 {
			// The class was cached in another node than the one
			// for this inode: classify through a descriptor.
			hint = cn
			continue
		}
		cn.fillAttr(&x, fd, &out.Attr)
		if fd >= 0 {
			unix.Close(fd)
		}
		return ch, 0
	}
}

// OpendirHandle opens directory n for reading.
func (n *node) OpendirHandle(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	fd, err := n.root.openRel(n.rel(), unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, 0, errnoOf(err)
	}
	ds, errno := gofs.NewLoopbackDirStreamFd(fd)
	if errno != 0 {
		unix.Close(fd)
		return nil, 0, errno
	}
	return &dirHandle{ds: ds, fd: fd, hideReserved: n.isRoot()}, 0, 0
}

// dirHandle is an open directory: go-fuse's loopback directory stream with
// the reserved directory filtered out of the root's listing.
type dirHandle struct {
	ds           gofs.DirStream
	fd           int // owned by ds; valid until Releasedir
	hideReserved bool
}

func (d *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	rd, ok := d.ds.(gofs.FileReaddirenter)
	if !ok {
		return nil, syscall.ENOTSUP
	}
	for {
		de, errno := rd.Readdirent(ctx)
		if errno != 0 || de == nil {
			return de, errno
		}
		if d.hideReserved && de.Name == reservedDir {
			continue
		}
		return de, 0
	}
}

func (d *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	if sd, ok := d.ds.(gofs.FileSeekdirer); ok {
		return sd.Seekdir(ctx, off)
	}
	return syscall.ENOTSUP
}

func (d *dirHandle) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno {
	if fd, ok := d.ds.(gofs.FileFsyncdirer); ok {
		return fd.Fsyncdir(ctx, flags)
	}
	return errnoOf(unix.Fsync(d.fd))
}

func (d *dirHandle) Releasedir(ctx context.Context, flags uint32) {
	d.ds.Close()
}

// Mkdir creates directory name in n.
func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if n.hidden(name) {
		return nil, syscall.EPERM
	}
	rel := n.childRel(name)
	if err := unix.Mkdirat(n.root.rootFd, rel, mode); err != nil {
		return nil, errnoOf(err)
	}
	n.root.preserveOwner(ctx, rel)
	ch, errno := n.newChild(ctx, rel, out)
	if errno != 0 {
		_ = unix.Unlinkat(n.root.rootFd, rel, unix.AT_REMOVEDIR)
	}
	return ch, errno
}

// Mknod creates a special (or empty regular) file name in n.
func (n *node) Mknod(ctx context.Context, name string, mode, rdev uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if n.hidden(name) {
		return nil, syscall.EPERM
	}
	rel := n.childRel(name)
	if err := unix.Mknodat(n.root.rootFd, rel, mode, int(rdev)); err != nil {
		return nil, errnoOf(err)
	}
	n.root.preserveOwner(ctx, rel)
	ch, errno := n.newChild(ctx, rel, out)
	if errno != 0 {
		_ = unix.Unlinkat(n.root.rootFd, rel, 0)
	}
	return ch, errno
}

// Symlink creates symlink name in n pointing at target.
func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if n.hidden(name) {
		return nil, syscall.EPERM
	}
	rel := n.childRel(name)
	if err := unix.Symlinkat(target, n.root.rootFd, rel); err != nil {
		return nil, errnoOf(err)
	}
	n.root.preserveOwner(ctx, rel)
	ch, errno := n.newChild(ctx, rel, out)
	if errno != 0 {
		_ = unix.Unlinkat(n.root.rootFd, rel, 0)
	}
	return ch, errno
}

// Link makes name in n a hard link to target.
func (n *node) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	tn := asNode(target)
	if tn == nil || tn.root != n.root {
		return nil, syscall.EXDEV
	}
	if n.hidden(name) {
		return nil, syscall.EPERM
	}
	// A file in no directory (O_TMPFILE) has no path to link from; LINK
	// does not carry a descriptor.
	if _, parent := tn.Parent(); parent == nil {
		return nil, syscall.EXDEV
	}
	rel := n.childRel(name)
	if err := unix.Linkat(n.root.rootFd, tn.rel(), n.root.rootFd, rel, 0); err != nil {
		return nil, errnoOf(err)
	}
	return n.newChild(ctx, rel, out)
}

// Unlink removes file name from n.
func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	if n.hidden(name) {
		return syscall.ENOENT
	}
	return errnoOf(unix.Unlinkat(n.root.rootFd, n.childRel(name), 0))
}

// Rmdir removes directory name from n.
func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	if n.hidden(name) {
		return syscall.ENOENT
	}
	return errnoOf(unix.Unlinkat(n.root.rootFd, n.childRel(name), unix.AT_REMOVEDIR))
}

// Rename moves name in n to newName in newParent (flags as renameat2).
// A file that lands on a protected name while the key is set is queued
// for encryption in place (an atomic save: write a temp file, rename).
func (n *node) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	np := asNode(newParent)
	if np == nil || np.root != n.root {
		return syscall.EXDEV
	}
	if n.hidden(name) {
		return syscall.ENOENT
	}
	if np.hidden(newName) {
		return syscall.EPERM
	}
	r := n.root
	from, to := n.childRel(name), np.childRel(newName)
	moved := nodeOf(n.GetChild(name))
	if err := unix.Renameat2(r.rootFd, from, r.rootFd, to, uint(flags)); err != nil {
		return errnoOf(err)
	}
	if moved != nil && !r.protected(newName) {
		// Classify now, so an encrypted file renamed to a name that
		// lookups do not probe keeps showing its plaintext size.
		r.classifyAt(moved, to)
	}
	if r.kr.IsSet() {
		if r.protected(newName) {
			r.conv.enqueue(to)
		}
		if flags&unix.RENAME_EXCHANGE != 0 && r.protected(name) {
			r.conv.enqueue(from)
		}
	}
	return 0
}

// Readlink reads symlink n.
func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	rel := n.rel()
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		m, err := unix.Readlinkat(n.root.rootFd, rel, buf)
		if err != nil {
			return nil, errnoOf(err)
		}
		if m < size {
			return buf[:m], 0
		}
	}
}

// Statfs reports the backing filesystem's statistics.
func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	var s syscall.Statfs_t
	if err := syscall.Fstatfs(n.root.rootFd, &s); err != nil {
		return errnoOf(err)
	}
	out.FromStatfsT(&s)
	return 0
}

// OnForget drops n from the set of nodes to invalidate at logout: the
// kernel has forgotten the inode, so it caches nothing of it.
func (n *node) OnForget() {
	n.root.servedMu.Lock()
	delete(n.root.served, n)
	n.servedEpoch.Store(0)
	n.root.servedMu.Unlock()
}

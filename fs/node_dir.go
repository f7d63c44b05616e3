package fs

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Directory and namespace operations. They mirror go-fuse's LoopbackNode,
// acting on names in the directory's checked descriptor (backing.go), and keep
// the reserved auth/ directory out of reach: it is never listed, looked up
// or removed (ENOENT), and nothing can be created, renamed or linked onto
// its name (EPERM).

// Lookup finds name in directory n.
func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if n.hidden(name) {
		return nil, syscall.ENOENT
	}
	d, err := n.root.dirOf(n)
	if err != nil {
		return nil, errnoOf(err)
	}
	defer d.release()
	return n.newChild(ctx, d.fd, name, out)
}

// newChild makes (or finds) the node for name in dir, the backing
// directory of n, and fills out with its attributes.
func (n *node) newChild(ctx context.Context, dir int, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	hint := nodeOf(n.GetChild(name))
	for attempt := 0; ; attempt++ {
		var x unix.Statx_t
		fd, err := n.root.statChild(dir, name, hint, &x)
		if err != nil {
			return nil, errnoOf(err)
		}
		ch := n.NewInode(ctx, n.root.newNode(), n.root.stableAttr(&x))
		cn := nodeOf(ch)
		if fd < 0 && n.root.probes(name, &x) && !cn.classCached(&x) && attempt < 3 {
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
	fd, err := n.root.openDir(n)
	if err != nil {
		return nil, 0, errnoOf(err)
	}
	ds, errno := gofs.NewLoopbackDirStreamFd(fd)
	if errno != 0 {
		unix.Close(fd)
		return nil, 0, errno
	}
	d := &dirHandle{ds: ds, fd: fd, root: n.root, hideReserved: n.isRoot()}
	n.root.handles.add(d)
	return d, 0, 0
}

// dirHandle is an open directory: go-fuse's loopback directory stream with
// the reserved directory filtered out of the root's listing.
type dirHandle struct {
	ds           gofs.DirStream
	fd           int // owned by ds; valid until Releasedir
	root         *Root
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
	if d.root.handles.remove(d) {
		d.ds.Close()
	}
}

func (d *dirHandle) releaseLeft() { d.Releasedir(context.Background(), 0) }

// Mkdir creates directory name in n.
func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return n.makeChild(ctx, name, unix.S_IFDIR, func(dir int) error { return mkdirAt(dir, name, mode) }, out)
}

// Mknod creates a special (or empty regular) file name in n.
func (n *node) Mknod(ctx context.Context, name string, mode, rdev uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return n.makeChild(ctx, name, mode, func(dir int) error { return mknodAt(dir, name, mode, rdev) }, out)
}

// Symlink creates symlink name in n pointing at target.
func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return n.makeChild(ctx, name, unix.S_IFLNK, func(dir int) error { return symlinkAt(target, dir, name) }, out)
}

// makeChild makes name, of type typ, in directory n with mk, as the
// caller (it is born with the caller's owner), and returns its node.
func (n *node) makeChild(ctx context.Context, name string, typ uint32, mk func(dir int) error, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if n.hidden(name) {
		return nil, syscall.EPERM
	}
	r := n.root
	d, err := r.dirOf(n)
	if err != nil {
		return nil, errnoOf(err)
	}
	defer d.release()
	err = r.asOwner(ctx, func() error { return mk(d.fd) }, func(uid, gid int) { chownNew(d.fd, name, typ, uid, gid) })
	if err != nil {
		return nil, errnoOf(err)
	}
	ch, errno := n.newChild(ctx, d.fd, name, out)
	if errno != 0 {
		flags := 0
		if typ&unix.S_IFMT == unix.S_IFDIR {
			flags = unix.AT_REMOVEDIR
		}
		_ = unlinkAt(d.fd, name, flags)
	}
	return ch, errno
}

// Link makes name in n a hard link to target. A target in no directory
// is an O_TMPFILE file (linkat with AT_EMPTY_PATH or its /proc link):
// it is linked through a descriptor of its open handles. Plaintext linked
// under a name that encrypts new content waits for encryption, like an
// atomic save (pendingMove).
func (n *node) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	tn := asNode(target)
	if tn == nil || tn.root != n.root {
		return nil, syscall.EXDEV
	}
	if n.hidden(name) {
		return nil, syscall.EPERM
	}
	r := n.root
	d, err := r.dirOf(n)
	if err != nil {
		return nil, errnoOf(err)
	}
	defer d.release()
	if _, parent := tn.Parent(); parent == nil {
		return n.linkTmpfile(ctx, tn, d.fd, name, out)
	}
	var pend []string
	if r.encrypts(name) {
		if sd, oldName, err := r.parentOf(tn); err == nil {
			pend = r.pendingMove(sd.fd, oldName, n.childRel(name), pend)
			sd.release()
		}
	}
	err = r.nameChange(func() error { return r.linkNode(tn, d.fd, name) })
	r.settleMoves(pend, err == nil)
	if err != nil {
		return nil, errnoOf(err)
	}
	return n.newChild(ctx, d.fd, name, out)
}

// linkTmpfile links tn, a file in no directory, as name in dir (n's),
// through the backing descriptor of its open handles. Without one (no
// handle of ours is open on it) it cannot be reached: ENOENT, as linkat
// gives for a file with no name and no way to it.
func (n *node) linkTmpfile(ctx context.Context, tn *node, dir int, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	r := n.root
	for _, st := range r.files.states() {
		st.mu.RLock()
		if st.file == nil {
			st.mu.RUnlock()
			continue
		}
		var x unix.Statx_t
		if fstatx(st.fd, &x) != nil || !r.isNode(tn, &x) {
			st.mu.RUnlock()
			continue
		}
		var pend []string
		if st.cf == nil && x.Size > 0 && r.encrypts(name) {
			// Plaintext (written while logged out, or temp patterns
			// are off): encrypted once its handles are closed.
			pend = r.holdMove(n.childRel(name), pend)
		}
		err := linkTmpfile(st.fd, dir, name)
		st.mu.RUnlock()
		r.settleMoves(pend, err == nil)
		if err != nil {
			return nil, errnoOf(err)
		}
		return n.newChild(ctx, dir, name, out)
	}
	return nil, syscall.ENOENT
}

// Unlink removes file name from n.
func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	return n.remove(name, 0)
}

// Rmdir removes directory name from n.
func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	errno := n.remove(name, unix.AT_REMOVEDIR)
	if errno == 0 {
		if ch := nodeOf(n.GetChild(name)); ch != nil {
			n.root.dirs.drop(ch)
		}
	}
	return errno
}

func (n *node) remove(name string, flags int) syscall.Errno {
	if n.hidden(name) {
		return syscall.ENOENT
	}
	d, err := n.root.dirOf(n)
	if err != nil {
		return errnoOf(err)
	}
	defer d.release()
	return errnoOf(n.root.nameChange(func() error { return unlinkAt(d.fd, name, flags) }))
}

// Rename moves name in n to newName in newParent (flags as renameat2).
// Plaintext that lands on a protected name (or a temporary of one) is
// encrypted in place in the background (an atomic save under an
// unrelated temp name: write, rename), after the next login if the key
// is not set.
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
	d1, err := r.dirOf(n)
	if err != nil {
		return errnoOf(err)
	}
	defer d1.release()
	d2 := d1
	if np != n {
		if d2, err = r.dirOf(np); err != nil {
			return errnoOf(err)
		}
		defer d2.release()
	}
	moved := nodeOf(n.GetChild(name))
	// Plaintext landing on a name that encrypts new content waits for
	// encryption: recorded before the rename, queued after it.
	var pend []string
	if r.encrypts(newName) {
		pend = r.pendingMove(d1.fd, name, np.childRel(newName), pend)
	}
	if flags&unix.RENAME_EXCHANGE != 0 && r.encrypts(name) {
		pend = r.pendingMove(d2.fd, newName, n.childRel(name), pend)
	}
	rename := func() error {
		return r.nameChange(func() error { return renameAt(d1.fd, name, d2.fd, newName, uint(flags)) })
	}
	if flags&unix.RENAME_WHITEOUT != 0 {
		// The whiteout left at name is a new object: the caller's.
		err = r.asOwner(ctx, rename, nil)
	} else {
		err = rename()
	}
	r.settleMoves(pend, err == nil)
	if err != nil {
		return errnoOf(err)
	}
	if moved != nil && !r.encrypts(newName) {
		// Classify now, so an encrypted file renamed to a name that
		// lookups do not probe keeps showing its plaintext size.
		r.classifyAt(moved, d2.fd, newName)
	}
	return 0
}

// pendingMove adds to pend the path to (relative to the backing root)
// if the file now at name in dir is plaintext with content, holding it as
// pending (converter.hold) before the rename or link that puts it at to.
// Without the key, it does so only when files are encrypted after login.
func (r *Root) pendingMove(dir int, name, to string, pend []string) []string {
	if !r.kr.IsSet() && !r.conv.after {
		return pend
	}
	var x unix.Statx_t
	fd, err := openRegularAt(dir, name, unix.O_RDONLY|unix.O_NONBLOCK, &x)
	if err != nil {
		return pend // not a regular file, or gone: nothing to encrypt
	}
	enc, err := readMagic(fd)
	unix.Close(fd)
	if err != nil || enc || x.Size == 0 {
		return pend
	}
	return r.holdMove(to, pend)
}

// holdMove holds rel as pending and adds it to pend.
func (r *Root) holdMove(rel string, pend []string) []string {
	r.conv.hold(rel)
	return append(pend, rel)
}

// settleMoves ends the holds of pendingMove: queued if the operation
// happened.
func (r *Root) settleMoves(pend []string, happened bool) {
	for _, rel := range pend {
		r.conv.settle(rel, happened)
	}
}

// Readlink reads symlink n.
func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	var target []byte
	err := n.root.withObj(ctx, n, func(o obj) error {
		for size := 256; ; size *= 2 {
			buf := make([]byte, size)
			m, err := o.readlink(buf)
			if err != nil {
				return err
			}
			if m < size {
				target = buf[:m]
				return nil
			}
		}
	})
	return target, errnoOf(err)
}

// Statfs reports the backing filesystem's statistics.
func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	var s syscall.Statfs_t
	if err := n.root.statfs(&s); err != nil {
		return errnoOf(err)
	}
	out.FromStatfsT(&s)
	return 0
}

// OnForget drops n from the set of nodes to invalidate at logout: the
// kernel has forgotten the inode, so it caches nothing of it.
func (n *node) OnForget() {
	n.root.dirs.drop(n)
	n.root.servedMu.Lock()
	delete(n.root.served, n)
	n.servedEpoch.Store(0)
	n.root.servedMu.Unlock()
}

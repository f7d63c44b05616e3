package fs

import (
	"context"
	"errors"
	"os"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/crypto"
)

// Opening files. Every open decides, from the content (and, for plaintext,
// the name), which kind of handle the kernel gets:
//
//	content    name           key    handle            kernel I/O
//	encrypted  any            set    cryptFile         FOPEN_DIRECT_IO
//	encrypted  any            unset  EACCES
//	bad magic  any            any    EIO
//	plaintext  protected      set    EIO with RequireEncryption (protect.go: not for temporaries)
//	plaintext  protected      any    cryptFile         page cache (direct I/O while it may turn encrypted)
//	plaintext  not protected  any    passthroughFile   kernel passthrough on the backing file
//
// "Protected" here is a protected name or a temporary of one (protect.go),
// and an O_TMPFILE file while temp patterns are configured. A plaintext
// inode that already has cryptFile handles gets another one, whatever the
// name: the kernel refuses to mix passthrough and cached opens of one
// inode.

// Open opens file n.
func (n *node) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	r := n.root
	name := n.name()
	bflags := backingFlags(flags, r.encrypts(name))
	fh, ff, errno := r.openHandle(ctx, name, flags, false, func() (int, bool, error) {
		fd, err := openWithFallback(func(fl int) (int, error) {
			var x unix.Statx_t
			return r.openNode(n, fl, &x)
		}, bflags, flags)
		return fd, false, err
	}, func(*unix.Statx_t) *node { return n })
	return fh, ff, errno
}

// Create creates (or opens, if it appeared meanwhile) file name in n.
func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	if n.hidden(name) {
		return nil, nil, 0, syscall.EPERM
	}
	r := n.root
	d, err := r.dirOf(n)
	if err != nil {
		return nil, nil, 0, errnoOf(err)
	}
	defer d.release()
	bflags := backingFlags(flags, r.encrypts(name))
	var child *gofs.Inode
	fh, ff, errno := r.openHandle(ctx, name, flags, false, func() (int, bool, error) {
		fd := -1
		err := r.asOwner(ctx, func() (err error) {
			fd, err = createAt(d.fd, name, bflags, mode)
			return err
		}, func(uid, gid int) { _ = unix.Fchown(fd, uid, gid) })
		if err == nil {
			return fd, true, nil
		}
		if err != unix.EEXIST || flags&unix.O_EXCL != 0 {
			return -1, false, err
		}
		fd, err = openWithFallback(func(fl int) (int, error) {
			var x unix.Statx_t
			return openRegularAt(d.fd, name, fl, &x)
		}, bflags, flags)
		return fd, false, err
	}, func(x *unix.Statx_t) *node {
		child = n.NewInode(ctx, r.newNode(), r.stableAttr(x))
		return nodeOf(child)
	})
	if errno != 0 {
		return nil, nil, 0, errno
	}
	if errno := nodeOf(child).statHandle(fh, &out.Attr); errno != 0 {
		releaseHandle(ctx, fh)
		return nil, nil, 0, errno
	}
	return child, fh, ff, 0
}

// Tmpfile creates an unnamed file in n (open with O_TMPFILE).
func (n *node) Tmpfile(ctx context.Context, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	r := n.root
	d, err := r.dirOf(n)
	if err != nil {
		return nil, nil, 0, errnoOf(err)
	}
	defer d.release()
	bflags := backingFlags(flags, r.encryptsTmpfiles())
	var child *gofs.Inode
	fh, ff, errno := r.openHandle(ctx, "", flags, true, func() (int, bool, error) {
		fd := -1
		err := r.asOwner(ctx, func() (err error) {
			fd, err = tmpfileAt(d.fd, bflags, mode)
			return err
		}, func(uid, gid int) { _ = unix.Fchown(fd, uid, gid) })
		return fd, true, err
	}, func(x *unix.Statx_t) *node {
		child = n.NewInode(ctx, r.newNode(), r.stableAttr(x))
		return nodeOf(child)
	})
	if errno != 0 {
		return nil, nil, 0, errno
	}
	if errno := nodeOf(child).statHandle(fh, &out.Attr); errno != 0 {
		releaseHandle(ctx, fh)
		return nil, nil, 0, errno
	}
	return child, fh, ff, 0
}

func releaseHandle(ctx context.Context, fh gofs.FileHandle) {
	if rel, ok := fh.(gofs.FileReleaser); ok {
		_ = rel.Release(ctx) // undoing a failed open: the first error is reported
	}
}

// backingFlags returns the flags for opening the backing file of a handle
// opened with FUSE flags: the access mode, with write-only widened to
// read-write (encryption reads what it rewrites), and the synchronous-I/O
// flags for files that may be passed through. O_APPEND is the kernel's
// business; O_DIRECT is applied later, to passthrough handles only.
func backingFlags(flags uint32, protected bool) int {
	acc := int(flags) & unix.O_ACCMODE
	if acc == unix.O_WRONLY {
		acc = unix.O_RDWR
	}
	f := acc
	if !protected {
		f |= int(flags) & (unix.O_SYNC | unix.O_DSYNC)
	}
	return f
}

// openWithFallback opens with bflags; if widening write-only to
// read-write was refused, it opens write-only as asked.
func openWithFallback(open func(flags int) (int, error), bflags int, flags uint32) (int, error) {
	fd, err := open(bflags)
	if (err == unix.EACCES || err == unix.EPERM) && int(flags)&unix.O_ACCMODE == unix.O_WRONLY {
		fd, err = open(bflags&^unix.O_ACCMODE | unix.O_WRONLY)
	}
	return fd, err
}

// restoreAtime clears O_NOATIME on fd once the daemon's own reads (the
// header) are done, so reads through the mount update atime as usual.
func restoreAtime(fd int) {
	if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err == nil && fl&unix.O_NOATIME != 0 {
		_, _ = unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl&^unix.O_NOATIME)
	}
}

// openHandle opens a backing descriptor with open, registers it in the
// open-file table and binds it to a handle. nodeFor returns the node of
// the opened file. If a conversion replaced the inode between opening and
// registering, it opens again (acquireOpened).
func (r *Root) openHandle(ctx context.Context, name string, flags uint32, tmpfile bool,
	open func() (fd int, created bool, err error), nodeFor func(*unix.Statx_t) *node,
) (gofs.FileHandle, uint32, syscall.Errno) {
	st, fd, x, created, err := r.acquireOpened(!tmpfile, open)
	if err != nil {
		return nil, 0, errnoOf(err)
	}
	n := nodeFor(&x)
	fh, ff, errno := r.bind(st, n, name, flags, fd, &x, created, tmpfile)
	if errno != 0 {
		r.release(st)
	}
	return fh, ff, errno
}

// bind turns fd (consumed) into a handle on st, holding a reference that
// the handle's Release drops (or the caller, on error).
func (r *Root) bind(st *inodeState, n *node, name string, flags uint32, fd int, x *unix.Statx_t, created, tmpfile bool) (gofs.FileHandle, uint32, syscall.Errno) {
	writable := flags&unix.O_ACCMODE != unix.O_RDONLY
	prot := r.protection(name)
	encrypts := prot != unprotected || (tmpfile && r.encryptsTmpfiles())

	r.lockChange(st)
	defer r.unlockChange(st)

	class, hdr, cerr := st.classOf(n, fd, x)
	switch class {
	case classBad:
		unix.Close(fd)
		return nil, 0, r.errno(cerr, n, "open")
	case classEncrypted:
		if errno := r.checkKey(n, hdr); errno != 0 {
			unix.Close(fd)
			return nil, 0, errno
		}
	case classPlain:
		if !encrypts && st.cryptRefs == 0 {
			if flags&unix.O_NOATIME == 0 {
				restoreAtime(fd)
			}
			return r.bindPassthrough(st, n, flags, fd)
		}
		if prot == protectedName && x.Size > 0 && r.refusesPlaintext(n) {
			unix.Close(fd)
			return nil, 0, syscall.EIO
		}
	}

	st.adopt(fd, writable)
	if class == classEncrypted && st.cf == nil {
		cf, err := r.openCrypt(st.file)
		if err != nil {
			return nil, 0, r.errno(err, n, "open")
		}
		st.cf = cf
	}
	if created && encrypts && st.cf == nil && x.Size == 0 {
		if err := r.maybeEncrypt(st, n, true); err != nil {
			return nil, 0, r.errno(err, n, "create")
		}
	}
	if flags&unix.O_TRUNC != 0 && writable {
		if errno := r.truncateLocked(st, n, encrypts, 0); errno != 0 {
			return nil, 0, errno
		}
	}
	var ff uint32
	if st.cf != nil || (encrypts && r.kr.IsSet() && (writable || st.sizeLocked() == 0)) {
		// Encrypted, or may become encrypted (its first write while
		// the key is set encrypts it, or converts it first): keep its
		// plaintext out of the page cache (except for mmap, which the
		// logout invalidation covers). With the page cache, the
		// kernel splits a buffered write at partial pages and keeps the
		// bytes of a write that failed (EACCES at logout) in its pages;
		// integration's TestLogoutLoginUnderLoad found such bytes on
		// disk later. Direct I/O keeps every write exact.
		ff = fuse.FOPEN_DIRECT_IO
	}
	if st.fd == fd && flags&unix.O_NOATIME == 0 {
		restoreAtime(fd)
	}
	st.cryptRefs++
	f := &cryptFile{
		st:        st,
		n:         n,
		root:      r,
		protected: encrypts,
		writable:  writable,
		sync:      flags&(unix.O_SYNC|unix.O_DSYNC) != 0,
		lfd:       -1,
	}
	r.handles.add(f)
	return f, ff, 0
}

// bindPassthrough makes a passthrough handle for a plaintext file with a
// non-protected name. Caller holds st.mu.
func (r *Root) bindPassthrough(st *inodeState, n *node, flags uint32, fd int) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&unix.O_DIRECT != 0 {
		fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		if err == nil {
			_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl|unix.O_DIRECT)
		}
		if err != nil {
			unix.Close(fd)
			return nil, 0, errnoOf(err)
		}
	}
	if flags&unix.O_TRUNC != 0 && flags&unix.O_ACCMODE != unix.O_RDONLY {
		if err := unix.Ftruncate(fd, 0); err != nil {
			unix.Close(fd)
			return nil, 0, errnoOf(err)
		}
	}
	st.passthrough++
	f := &passthroughFile{
		LoopbackFile: gofs.NewLoopbackFileFromOS(os.NewFile(uintptr(fd), "backing")),
		fd:           fd,
		st:           st,
		root:         r,
	}
	r.handles.add(f)
	return f, 0, 0
}

// classOf returns the content class of the inode, from st when it is
// already open as encrypted. Caller holds st.mu.
func (st *inodeState) classOf(n *node, fd int, x *unix.Statx_t) (contentClass, crypto.Header, error) {
	if st.cf != nil {
		return classEncrypted, st.cf.Header(), nil
	}
	return n.classify(x, fd)
}

// sizeLocked returns the backing size of the shared descriptor (-1 if
// unknown). Caller holds st.mu.
func (st *inodeState) sizeLocked() int64 {
	if st.file == nil {
		return -1
	}
	var x unix.Statx_t
	if err := fstatx(st.fd, &x); err != nil {
		return -1
	}
	return int64(x.Size)
}

// checkKey fails with EACCES while logged out and EIO when the file was
// encrypted under another master key.
func (r *Root) checkKey(n *node, h crypto.Header) syscall.Errno {
	kid, err := r.kr.KeyID()
	if err != nil {
		return r.errno(err, n, "open")
	}
	r.noteKeyID()
	if h.KeyID != kid {
		return r.errno(crypto.ErrWrongKey, n, "open")
	}
	return 0
}

// maybeEncrypt gives an empty plaintext file under a protected name an
// encryption header when the key is set, so the content written next is
// encrypted. It does nothing to a file with passthrough handles (their
// writes bypass the daemon) and, if the key was just cleared, leaves the
// file plaintext. Caller holds st.mu exclusively.
func (r *Root) maybeEncrypt(st *inodeState, n *node, protected bool) error {
	if st.cf != nil || !protected || st.passthrough > 0 || !st.writable || !r.kr.IsSet() {
		return nil
	}
	if st.sizeLocked() != 0 {
		return nil
	}
	cf, err := r.createCrypt(st.file)
	if errors.Is(err, crypto.ErrLocked) {
		return nil
	}
	if err != nil {
		return err
	}
	st.cf = cf
	n.invalidateClass()
	return nil
}

// truncateLocked sets the (plaintext) size of the inode; protected says
// whether the handle (or the name) encrypts new content. Caller holds
// st.mu exclusively.
func (r *Root) truncateLocked(st *inodeState, n *node, protected bool, size int64) syscall.Errno {
	if st.file == nil || !st.writable {
		return syscall.EBADF
	}
	if st.cf == nil && size > 0 && size > st.sizeLocked() {
		// Extending adds content: the same rules as a write.
		if errno := r.beforeGrow(st, n, protected, "truncate"); errno != 0 {
			return errno
		}
	}
	if st.cf != nil {
		r.upgradeLater(st, n) // a change like a write
		return r.errno(st.cf.Truncate(size), n, "truncate")
	}
	return errnoOf(unix.Ftruncate(st.fd, size))
}

// truncatePath truncates n when the kernel sent no handle (truncate(2)).
// It goes through the open-file table like an open, so it shares the
// inode's lock and crypto.File with the handles that are open.
func (r *Root) truncatePath(n *node, size int64) syscall.Errno {
	st, fd, x, _, err := r.acquireOpened(true, func() (int, bool, error) {
		var ox unix.Statx_t
		fd, err := r.openNode(n, unix.O_RDWR, &ox)
		return fd, false, err
	})
	if err != nil {
		return errnoOf(err)
	}
	defer r.release(st)
	r.lockChange(st)
	defer r.unlockChange(st)
	class, hdr, cerr := st.classOf(n, fd, &x)
	switch class {
	case classBad:
		unix.Close(fd)
		return r.errno(cerr, n, "truncate")
	case classEncrypted:
		if errno := r.checkKey(n, hdr); errno != 0 {
			unix.Close(fd)
			return errno
		}
	}
	st.adopt(fd, true)
	if class == classEncrypted && st.cf == nil {
		cf, err := r.openCrypt(st.file)
		if err != nil {
			return r.errno(err, n, "truncate")
		}
		st.cf = cf
	}
	return r.truncateLocked(st, n, r.encrypts(n.name()), size)
}

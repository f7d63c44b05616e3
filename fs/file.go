package fs

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/crypto"
	"github.com/mountd/mountd/logkey"
)

// cryptFile is the handle of every file that is encrypted, or protected
// by name, or shares an inode with such a handle. All its I/O goes through
// the inode's shared state (openfile.go): decrypted and encrypted by the
// inode's crypto.File, or plain pread/pwrite for a protected plaintext
// file. It must never implement gofs.FilePassthroughFder: that would let
// the kernel read and write the backing file directly.
type cryptFile struct {
	st        *inodeState
	n         *node
	root      *Root
	protected bool // opened under a name that encrypts new content (protect.go), or an O_TMPFILE that does
	writable  bool // opened for writing
	sync      bool // O_SYNC or O_DSYNC: write through to the disk

	lmu sync.Mutex
	lfd int // descriptor for file locks (-1 until needed); see file_lock.go
}

// Read reads plaintext. An encrypted file needs the key on every call:
// a descriptor opened before logout gets EACCES after it.
func (f *cryptFile) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	st, r := f.st, f.root
	st.mu.RLock()
	defer st.mu.RUnlock()
	if st.file == nil {
		return nil, syscall.EBADF
	}
	var m int
	var err error
	if st.cf != nil {
		r.stats.cryptReads.Add(1)
		r.activity()
		r.gate.RLock()
		r.markServed(f.n)
		var res fuse.ReadResult
		if r.kr.Readable() {
			res = r.takePrefetch(st, len(dest), off)
		}
		if res != nil {
			m = res.Size()
			r.stats.prefetched.Add(1)
		} else {
			m, err = st.cf.ReadAt(dest, off)
		}
		r.gate.RUnlock()
		if st.sequential(off, len(dest)) {
			// The next requests are decrypted ahead, and the prefetch
			// reads ahead on the backing file; else only the latter.
			full := m == len(dest) && err == nil
			if !full || !r.startPrefetch(st, off+int64(m), len(dest)) {
				st.readAhead(st.cf.Header(), off+int64(len(dest)))
			}
		}
		if res != nil {
			return res, 0
		}
	} else {
		if f.protected && r.require && st.sizeLocked() > 0 && r.refusesPlaintext(f.n) {
			return nil, syscall.EIO
		}
		r.stats.plainReads.Add(1)
		m, err = st.file.ReadAt(dest, off)
		if f.protected {
			r.servedPlaintext(f.n, m)
		}
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, r.errno(err, f.n, "read")
	}
	return dataResult(dest[:m]), 0
}

// dataResult is the reply data of a read, handed to go-fuse as one slice
// (it has go-fuse's Slices method): go-fuse writes the reply with one
// writev and calls Done after that. Any other result it would first try to
// splice (for a file descriptor result): a pipe, an fcntl and a write per
// reply, failing and logging for a 1 MiB one. (DisableSplice is no way
// out: with it go-fuse calls Done before writing the reply, and the
// prefetch's Done recycles the buffer.)
type dataResult []byte

func (d dataResult) Bytes([]byte) ([]byte, fuse.Status) { return d, fuse.OK }
func (d dataResult) Size() int                          { return len(d) }
func (d dataResult) Done()                              {}
func (d dataResult) Slices() ([][]byte, fuse.Status)    { return [][]byte{d}, fuse.OK }

// Write writes plaintext; it encrypts when the file is encrypted, or is a
// protected file while the key is set (an empty one gets a header, a
// plaintext one is encrypted in place first: beforeGrow).
func (f *cryptFile) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	st, r := f.st, f.root
	r.lockChange(st)
	defer r.unlockChange(st)
	if st.file == nil || !st.writable {
		return 0, syscall.EBADF
	}
	if errno := r.beforeGrow(st, f.n, f.protected, "write"); errno != 0 {
		return 0, errno
	}
	var m int
	var err error
	if st.cf != nil {
		r.stats.cryptWrites.Add(1)
		r.activity()
		r.gate.RLock()
		r.markServed(f.n)
		m, err = st.cf.WriteAt(data, off)
		// Else the plaintext stays in go-fuse's pooled request buffer,
		// past any logout (docs/SECURITY.md, "In memory").
		clear(data)
		r.gate.RUnlock()
	} else {
		m, err = st.file.WriteAt(data, off)
	}
	if err == nil && f.sync {
		err = unix.Fdatasync(st.fd)
	}
	if err != nil && m == 0 {
		errno := r.errno(err, f.n, "write")
		if writeback(ctx) {
			r.lostWriteback(f.n, off, len(data), errno)
		}
		return 0, errno
	}
	return uint32(m), 0
}

// writeback reports whether a WRITE request comes from the kernel's
// write-back of cached pages (a shared mapping's dirty pages): the kernel
// sends those without a process (pid 0). No application sees their result
// directly; the kernel records a failure on the file, for the next fsync
// or msync.
func writeback(ctx context.Context) bool {
	c, ok := ctx.(*fuse.Context)
	return ok && c.Caller.Pid == 0
}

// lostWriteback logs a write-back that failed: never a silent loss.
func (r *Root) lostWriteback(n *node, off int64, size int, errno syscall.Errno) {
	r.log.WithFields(logrus.Fields{
		logkey.Path: n.rel(),
		fieldIno:    n.StableAttr().Ino,
		fieldOff:    off,
		fieldLen:    size,
	}).WithError(errno).Error("write-back of cached pages failed; the next fsync or msync of the file reports it")
}

// Flush has nothing to do: writes reach the backing file synchronously.
func (f *cryptFile) Flush(ctx context.Context) syscall.Errno { return 0 }

// Fsync flushes the backing file to disk.
func (f *cryptFile) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	f.st.mu.RLock()
	defer f.st.mu.RUnlock()
	if f.st.file == nil {
		return syscall.EBADF
	}
	if flags&1 != 0 { // FUSE_FSYNC_FDATASYNC
		return errnoOf(unix.Fdatasync(f.st.fd))
	}
	return errnoOf(unix.Fsync(f.st.fd))
}

// Release drops the handle's reference on the inode state.
func (f *cryptFile) Release(ctx context.Context) syscall.Errno {
	if !f.root.handles.remove(f) {
		return 0
	}
	f.closeLockFd()
	f.st.mu.Lock()
	f.st.cryptRefs--
	f.st.mu.Unlock()
	f.root.release(f.st)
	return 0
}

func (f *cryptFile) releaseLeft() { _ = f.Release(context.Background()) }

// Lseek answers SEEK_DATA and SEEK_HOLE (the kernel does the others).
// An encrypted file has no holes: all of it is data.
func (f *cryptFile) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	st := f.st
	st.mu.RLock()
	defer st.mu.RUnlock()
	if st.file == nil {
		return 0, syscall.EBADF
	}
	if st.cf == nil {
		o, err := unix.Seek(st.fd, int64(off), int(whence))
		return uint64(o), errnoOf(err)
	}
	size, err := st.cf.Size()
	if err != nil {
		return 0, f.root.errno(err, f.n, "lseek")
	}
	if int64(off) >= size {
		return 0, syscall.ENXIO
	}
	switch whence {
	case unix.SEEK_DATA:
		return off, 0
	case unix.SEEK_HOLE:
		return uint64(size), 0
	}
	return 0, syscall.EINVAL
}

// Allocate implements fallocate. On an encrypted file, mode 0 extends the
// file with encrypted zeros and KEEP_SIZE is accepted as a hint; punching
// holes and the like are not supported.
func (f *cryptFile) Allocate(ctx context.Context, off, size uint64, mode uint32) syscall.Errno {
	st, r := f.st, f.root
	r.lockChange(st)
	defer r.unlockChange(st)
	if st.file == nil || !st.writable {
		return syscall.EBADF
	}
	if mode == 0 {
		if errno := r.beforeGrow(st, f.n, f.protected, "fallocate"); errno != 0 {
			return errno
		}
	}
	if st.cf == nil {
		return errnoOf(unix.Fallocate(st.fd, mode, int64(off), int64(size)))
	}
	if !r.kr.IsSet() {
		return r.errno(crypto.ErrLocked, f.n, "fallocate")
	}
	switch mode {
	case 0:
		cur, err := st.cf.Size()
		if err != nil {
			return r.errno(err, f.n, "fallocate")
		}
		if end := int64(off + size); end > cur {
			return r.errno(st.cf.Truncate(end), f.n, "fallocate")
		}
		return 0
	case unix.FALLOC_FL_KEEP_SIZE:
		return 0
	}
	return syscall.EOPNOTSUPP
}

// getattr fills a from the shared descriptor, with the plaintext size.
func (f *cryptFile) getattr(a *fuse.Attr) syscall.Errno {
	st := f.st
	st.mu.RLock()
	defer st.mu.RUnlock()
	if st.file == nil {
		return syscall.EBADF
	}
	var x unix.Statx_t
	if err := fstatx(st.fd, &x); err != nil {
		return errnoOf(err)
	}
	attrFromStatx(a, &x)
	if st.cf != nil {
		if ps, err := st.cf.Header().PlainSize(int64(x.Size)); err == nil {
			a.Size = uint64(ps)
		}
	}
	return 0
}

// truncate sets the plaintext size through the handle.
func (f *cryptFile) truncate(size int64) syscall.Errno {
	f.root.lockChange(f.st)
	defer f.root.unlockChange(f.st)
	return f.root.truncateLocked(f.st, f.n, f.protected, size)
}

// passthroughFile is the handle of a plaintext file with a non-protected
// name: go-fuse's loopback file, which offers the kernel its descriptor
// for FUSE passthrough (the kernel then does the I/O itself).
type passthroughFile struct {
	*gofs.LoopbackFile
	fd   int // owned by LoopbackFile; valid until Release
	st   *inodeState
	root *Root
}

// Read is only called when the kernel did not take the passthrough.
func (f *passthroughFile) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	f.root.stats.plainReads.Add(1)
	return f.LoopbackFile.Read(ctx, dest, off)
}

func (f *passthroughFile) Release(ctx context.Context) syscall.Errno {
	if !f.root.handles.remove(f) {
		return 0
	}
	errno := f.LoopbackFile.Release(ctx)
	f.st.mu.Lock()
	f.st.passthrough--
	f.st.mu.Unlock()
	f.root.release(f.st)
	return errno
}

func (f *passthroughFile) releaseLeft() { _ = f.Release(context.Background()) }

// stats counts what reached the daemon; tests use them to see which path
// the kernel took.
type stats struct {
	cryptReads  atomic.Int64 // reads of encrypted content
	cryptWrites atomic.Int64 // writes of encrypted content
	plainReads  atomic.Int64 // plaintext reads that reached the daemon
	headerReads atomic.Int64 // header reads to classify a file
	prefetched  atomic.Int64 // reads answered from a prefetch (prefetch.go)
}

// fileFd returns a descriptor of the open file f (-1 if none).
func fileFd(f gofs.FileHandle) int {
	switch h := f.(type) {
	case *passthroughFile:
		return h.fd
	case *dirHandle:
		return h.fd
	}
	return -1
}

package crash

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// The recorder is the block device under test: a FUSE file system in this
// process that serves one file, disk.img, used as the backing file of a
// loop device. The loop driver turns the file system's block writes into
// writes of this file and its cache flushes (REQ_PREFLUSH, and FUA, which
// loop emulates with a flush) into fsync. The recorder keeps the disk's
// current content in memory and logs every write and every flush in the
// order they complete, which is what a crash state is rebuilt from.

const pageSize = 4096

// event is one entry of the write log: a write of data at off, or a flush
// (data == nil, off < 0).
type event struct {
	off  int64
	data []byte
}

func (e event) isFlush() bool { return e.data == nil }

// image is a sparse disk image: 4 KiB pages, absent pages are zeros.
type image struct {
	size  int64
	pages map[int64]*[pageSize]byte
}

func newImage(size int64) *image { return &image{size: size, pages: map[int64]*[pageSize]byte{}} }

func (im *image) clone() *image {
	c := newImage(im.size)
	for k, p := range im.pages {
		np := *p
		c.pages[k] = &np
	}
	return c
}

// write applies data at off.
func (im *image) write(off int64, data []byte) {
	for len(data) > 0 {
		pg, po := off/pageSize, off%pageSize
		p := im.pages[pg]
		if p == nil {
			p = new([pageSize]byte)
			im.pages[pg] = p
		}
		n := copy(p[po:], data)
		data, off = data[n:], off+int64(n)
	}
}

// read fills b from off (zeros for absent pages).
func (im *image) read(b []byte, off int64) {
	for len(b) > 0 {
		pg, po := off/pageSize, off%pageSize
		var n int
		if p := im.pages[pg]; p != nil {
			n = copy(b, p[po:])
		} else {
			n = min(len(b), pageSize-int(po))
			clear(b[:n])
		}
		b, off = b[n:], off+int64(n)
	}
}

// loadImage reads a disk image file, keeping only non-zero pages.
func loadImage(path string) (*image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	im := newImage(fi.Size())
	buf := make([]byte, 1<<20)
	var zero [pageSize]byte
	for off := int64(0); off < im.size; off += int64(len(buf)) {
		n, err := f.ReadAt(buf, off)
		if n == 0 && err != nil {
			return nil, err
		}
		for i := 0; i+pageSize <= n; i += pageSize {
			if [pageSize]byte(buf[i:i+pageSize]) != zero {
				im.write(off+int64(i), buf[i:i+pageSize])
			}
		}
	}
	return im, nil
}

// writeFile writes the image to a new sparse file.
func (im *image) writeFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := f.Truncate(im.size); err != nil {
		f.Close()
		return err
	}
	for pg, p := range im.pages {
		if _, err := f.WriteAt(p[:], pg*pageSize); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

// recorder serves the disk and logs what is written to it.
type recorder struct {
	mu  sync.Mutex
	im  *image
	log []event
}

// position returns the current length of the log.
func (r *recorder) position() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.log)
}

// lastFlush returns the index of the last flush in the log (-1 if none).
func (r *recorder) lastFlush() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.log) - 1; i >= 0; i-- {
		if r.log[i].isFlush() {
			return i
		}
	}
	return -1
}

// events returns a copy of the log.
func (r *recorder) events() []event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]event(nil), r.log...)
}

func (r *recorder) pwrite(data []byte, off int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.im.write(off, data)
	r.log = append(r.log, event{off: off, data: append([]byte(nil), data...)})
}

func (r *recorder) flush() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log = append(r.log, event{off: -1})
}

// diskNode is the one file, disk.img.
type diskNode struct {
	gofs.Inode
	r *recorder
}

var (
	_ gofs.NodeOpener    = (*diskNode)(nil)
	_ gofs.NodeGetattrer = (*diskNode)(nil)
	_ gofs.NodeSetattrer = (*diskNode)(nil)
	_ gofs.NodeReader    = (*diskNode)(nil)
	_ gofs.NodeWriter    = (*diskNode)(nil)
	_ gofs.NodeFsyncer   = (*diskNode)(nil)
	_ gofs.NodeAllocater = (*diskNode)(nil)
)

func (n *diskNode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	// Direct I/O: every write the loop driver makes reaches Write at
	// once, never the page cache.
	return nil, fuse.FOPEN_DIRECT_IO, 0
}

func (n *diskNode) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o600
	out.Size = uint64(n.r.im.size)
	out.Blocks = out.Size / 512
	out.Blksize = pageSize
	return 0
}

func (n *diskNode) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if _, ok := in.GetSize(); ok {
		return syscall.EPERM // a disk does not change size
	}
	return n.Getattr(ctx, f, out)
}

func (n *diskNode) Read(ctx context.Context, f gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	r := n.r
	r.mu.Lock()
	defer r.mu.Unlock()
	if off >= r.im.size {
		return fuse.ReadResultData(nil), 0
	}
	dest = dest[:min(int64(len(dest)), r.im.size-off)]
	r.im.read(dest, off)
	return fuse.ReadResultData(dest), 0
}

func (n *diskNode) Write(ctx context.Context, f gofs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	if off < 0 || off+int64(len(data)) > n.r.im.size {
		return 0, syscall.ENOSPC
	}
	n.r.pwrite(data, off)
	return uint32(len(data)), 0
}

func (n *diskNode) Fsync(ctx context.Context, f gofs.FileHandle, flags uint32) syscall.Errno {
	n.r.flush()
	return 0
}

// Allocate handles discards and write-zeroes (punch hole, zero range) as
// writes of zeros; plain preallocation changes nothing on a disk.
func (n *diskNode) Allocate(ctx context.Context, f gofs.FileHandle, off, size uint64, mode uint32) syscall.Errno {
	const punch, zero = 0x02, 0x10 // FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE
	if mode&(punch|zero) == 0 {
		return 0
	}
	if int64(off+size) > n.r.im.size {
		return syscall.EINVAL
	}
	n.r.pwrite(make([]byte, size), int64(off))
	return 0
}

// recRoot is the root directory holding disk.img.
type recRoot struct {
	gofs.Inode
	r *recorder
}

func (rt *recRoot) OnAdd(ctx context.Context) {
	ch := rt.NewPersistentInode(ctx, &diskNode{r: rt.r}, gofs.StableAttr{Mode: syscall.S_IFREG, Ino: 2})
	rt.AddChild("disk.img", ch, false)
}

// mountRecorder serves base (not copied) at dir/disk.img.
func mountRecorder(dir string, base *image) (*recorder, *fuse.Server, error) {
	r := &recorder{im: base}
	to := time.Duration(0)
	srv, err := gofs.Mount(dir, &recRoot{r: r}, &gofs.Options{
		EntryTimeout: &to,
		AttrTimeout:  &to,
		MountOptions: fuse.MountOptions{
			FsName:      "mountd-crash-recorder",
			Name:        "crashrec",
			DirectMount: true,
			MaxWrite:    fuse.MAX_KERNEL_WRITE,
		},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("mount recorder on %s: %w", dir, err)
	}
	return r, srv, nil
}

func diskPath(dir string) string { return filepath.Join(dir, "disk.img") }

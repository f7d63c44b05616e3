package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/mountd/mountd/crypto"
)

// Reading encrypted files for fsck and export, through crypto's public API
// only.

// roBacking is a crypto.Backing over a file opened for reading: it cannot
// write, and it shows the file as size bytes long, which may be less than
// the real size (see openCrypt).
type roBacking struct {
	f    *os.File
	size int64
}

func (b *roBacking) ReadAt(p []byte, off int64) (int, error) {
	if off >= b.size {
		return 0, io.EOF
	}
	short := false
	if rest := b.size - off; int64(len(p)) > rest {
		p, short = p[:rest], true
	}
	n, err := b.f.ReadAt(p, off)
	if err == nil && short {
		err = io.EOF
	}
	return n, err
}

func (b *roBacking) WriteAt([]byte, int64) (int, error) { return 0, syscall.EROFS }
func (b *roBacking) Truncate(int64) error               { return syscall.EROFS }
func (b *roBacking) Stat() (os.FileInfo, error)         { return sizeInfo(b.size), nil }

// sizeInfo is the os.FileInfo of roBacking: only the size matters.
type sizeInfo int64

func (s sizeInfo) Name() string       { return "" }
func (s sizeInfo) Size() int64        { return int64(s) }
func (s sizeInfo) Mode() os.FileMode  { return 0o400 }
func (s sizeInfo) ModTime() time.Time { return time.Time{} }
func (s sizeInfo) IsDir() bool        { return false }
func (s sizeInfo) Sys() any           { return nil }

// cryptFile is an encrypted file open for reading.
type cryptFile struct {
	f    *crypto.File
	size int64 // plaintext size
	// cut is set when the file's size is one no writer makes (its end was
	// cut in the middle of a block): the file reads as the format maps
	// that size (crypto.Header.PlainSize), and the cut is a damaged block
	// of its own, numbered cutBlock.
	cut      bool
	cutBlock int64
}

// openCrypt opens the encrypted file f (of ciphertext size cipherSize)
// under kr. ErrBadHeader, or ErrWrongKey when the file belongs to another
// master key, come back wrapped; a cut end does not: the blocks before it
// stay readable (crypto.OpenFile opens such files).
func openCrypt(kr *crypto.Keyring, f *os.File, cipherSize int64) (*cryptFile, error) {
	cf, err := crypto.OpenFile(kr, &roBacking{f: f, size: cipherSize})
	if err != nil {
		return nil, err
	}
	id, err := kr.KeyID()
	if err != nil {
		return nil, err
	}
	h := cf.Header()
	if h.KeyID != id {
		return nil, crypto.ErrWrongKey
	}
	c := &cryptFile{f: cf, cut: h.SizeDamaged(cipherSize)}
	if c.size, err = cf.Size(); err != nil {
		return nil, err
	}
	c.cutBlock = h.BlockOf(c.size)
	return c, nil
}

// badBlock describes a damaged block of a file.
type badBlock struct {
	Block int64  `json:"block"`
	Off   int64  `json:"offset"` // plaintext offset of the block
	Len   int64  `json:"length"` // plaintext bytes lost (zero-filled by export)
	Why   string `json:"reason"` // "authentication failed", "incomplete" (holds less than the size says) or "truncated"
}

// readDepth is how many reads stream keeps in flight on one file: while
// the oldest is handed on, the next ones are being read and decrypted, so
// the disk, the decryption (crypto spreads each 1 MiB chunk over the
// cores) and the consumer (export's writer) overlap.
const readDepth = 3

// errStop ends a stream early at the caller's request (bad returned false).
var errStop = errors.New("stream stopped")

// readTask is one read of stream's pipeline: the plaintext at off, n
// bytes, into buf.
type readTask struct {
	buf  []byte
	off  int64
	n    int64
	got  int
	err  error
	done chan struct{}
}

// stream reads c's plaintext from the start, handing emit each run of
// authentic plaintext in order. Each read goes into a buffer from get;
// emit owns the slice it is given until it hands it back to get's pool
// (so a writer may still be writing one buffer while the next is filled).
// Up to depth reads run at once, each holding its buffer: get must be able
// to hand out depth buffers none of which has been emitted yet, and one
// more once an emitted one is free again. A damaged block goes to bad;
// when bad returns true the block's bytes are emitted as zeros and the
// read goes on after it, else stream stops there (returning nil). Either
// way the blocks before it were emitted, and no byte of it or after it.
func (c *cryptFile) stream(depth int, get func() []byte, emit func([]byte) error, bad func(badBlock) bool) error {
	var inflight []*readTask
	defer func() {
		// Nothing may still read into a buffer the caller gets back.
		for _, t := range inflight {
			<-t.done
		}
	}()
	h := c.f.Header()
	// next is where the next read starts, pos how far the plaintext has
	// been handed on.
	var next, pos int64
	for {
		for len(inflight) < max(depth, 1) && next < c.size {
			buf := get()
			n := min(int64(len(buf)), c.size-next)
			if next+n < c.size {
				// End the read on a block boundary: a damaged block then
				// lies in one read, and no block is decrypted twice.
				if start, _ := h.BlockRange(h.BlockOf(next + n)); start > next {
					n = start - next
				}
			}
			t := &readTask{buf: buf, off: next, n: n, done: make(chan struct{})}
			read := func() {
				defer close(t.done)
				t.got, t.err = c.f.ReadAt(t.buf[:t.n], t.off)
			}
			if t.off == 0 && t.n == c.size {
				read() // a small file: one read, nothing to overlap
			} else {
				go read()
			}
			inflight = append(inflight, t)
			next += t.n
		}
		if len(inflight) == 0 {
			break
		}
		t := inflight[0]
		<-t.done
		inflight = inflight[1:]
		var err error
		end := t.off + t.n
		switch be := (*crypto.BlockError)(nil); {
		case end <= pos:
			// Inside a damaged block handed on already (a buffer
			// smaller than a block); give the buffer back.
			err = emit(t.buf[:0])
		case t.off < pos || errors.As(t.err, &be):
			// A damaged block in this read: read its range again, run
			// by run, naming each damaged block in order.
			pos, err = c.repair(max(t.off, pos), end, t.buf, get, emit, bad)
		default:
			err = c.settle(t.off, t.n, t.buf, t.got, t.err, emit)
			pos = end
		}
		if errors.Is(err, errStop) {
			return nil
		}
		if err != nil {
			return err
		}
	}
	if c.cut {
		bad(badBlock{Block: c.cutBlock, Off: c.size, Why: "truncated"})
	}
	return nil
}

// settle hands on the result of a read of n bytes at off that met no
// damaged block.
func (c *cryptFile) settle(off, n int64, buf []byte, got int, err error, emit func([]byte) error) error {
	if errors.Is(err, io.EOF) && int64(got) < n {
		return fmt.Errorf("file shrank while being read (at %d of %d bytes)", off+int64(got), c.size)
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return emit(buf[:got])
}

// repair reads [lo, hi), which holds a damaged block, in order: the
// authentic runs are emitted, each damaged block goes to bad (and, if bad
// says go on, is emitted as zeros). buf is the first buffer to use; the
// others come from get. It returns how far it handed the plaintext on (hi,
// or the end of a damaged block that reaches past hi), or errStop when bad
// says stop.
func (c *cryptFile) repair(lo, hi int64, buf []byte, get func() []byte, emit func([]byte) error, bad func(badBlock) bool) (int64, error) {
	off := lo
	for off < hi {
		if buf == nil {
			buf = get()
		}
		n := min(int64(len(buf)), hi-off)
		got, err := c.f.ReadAt(buf[:n], off)
		var be *crypto.BlockError
		if !errors.As(err, &be) {
			if err := c.settle(off, n, buf, got, err, emit); err != nil {
				return off, err
			}
			off += int64(got)
			buf = nil
			continue
		}
		start, blen := c.f.Header().BlockRange(be.Block)
		if start < off || start >= off+n {
			return off, err
		}
		why := "authentication failed"
		if errors.Is(err, crypto.ErrBadSize) {
			why = "incomplete"
		}
		// ReadAt names the first failing block: what precedes it in
		// this read is authentic.
		if start > off {
			if _, err := c.f.ReadAt(buf[:start-off], off); err != nil {
				return off, err
			}
			if err := emit(buf[:start-off]); err != nil {
				return off, err
			}
			buf = get()
		}
		blen = min(blen, c.size-start)
		if !bad(badBlock{Block: be.Block, Off: start, Len: blen, Why: why}) {
			return off, errStop
		}
		for z := blen; z > 0; {
			if buf == nil {
				buf = get()
			}
			k := min(int64(len(buf)), z)
			clear(buf[:k])
			if err := emit(buf[:k]); err != nil {
				return off, err
			}
			buf = nil
			z -= k
		}
		off = start + blen
	}
	if buf != nil {
		// Not used: the damaged block before reached past hi.
		return off, emit(buf[:0])
	}
	return off, nil
}

// bufRing keeps the buffers of a consumer that is done with each one when
// emit returns (fsck): get takes a free one (a new one when none is, so a
// stream that ends early without giving all back costs no deadlock), put
// gives one back (kept if there is room).
type bufRing struct {
	free chan []byte
	size int
}

func newBufRing(n, size int) *bufRing { return &bufRing{free: make(chan []byte, n), size: size} }

func (r *bufRing) get() []byte {
	select {
	case b := <-r.free:
		return b
	default:
		return make([]byte, r.size)
	}
}

func (r *bufRing) put(b []byte) {
	select {
	case r.free <- b[:cap(b)]:
	default:
	}
}

// pipeWriter writes buffers to w in its own goroutine, so that the next
// buffer is decrypted while the last one is written. It owns a fixed set
// of buffers: get hands out a free one (waiting for the writer when none
// is), emit queues one for writing.
type pipeWriter struct {
	w     io.Writer
	free  chan []byte
	queue chan []byte
	done  chan struct{}
	err   error // the first write error; read after done, or via failed
	fail  chan struct{}
	once  sync.Once
}

// newPipeWriter returns a writer over bufs (at least two, for overlap).
func newPipeWriter(w io.Writer, bufs [][]byte) *pipeWriter {
	p := &pipeWriter{w: w, free: make(chan []byte, len(bufs)), queue: make(chan []byte, len(bufs)),
		done: make(chan struct{}), fail: make(chan struct{})}
	for _, b := range bufs {
		p.free <- b[:cap(b)]
	}
	go func() {
		defer close(p.done)
		for b := range p.queue {
			if p.err == nil {
				if _, err := p.w.Write(b); err != nil {
					p.err = err
					p.once.Do(func() { close(p.fail) })
				}
			}
			p.free <- b[:cap(b)]
		}
	}()
	return p
}

// get returns a free buffer. After a write error it returns a spare one,
// so the reader can run on to emit, which reports the error.
func (p *pipeWriter) get() []byte {
	select {
	case b := <-p.free:
		return b
	case <-p.fail:
		return make([]byte, crypto.BlockSize)
	}
}

func (p *pipeWriter) emit(b []byte) error {
	select {
	case <-p.fail:
		return p.err
	default:
	}
	p.queue <- b
	return nil
}

// close waits for every queued buffer to be written and returns the first
// write error.
func (p *pipeWriter) close() error {
	close(p.queue)
	<-p.done
	return p.err
}

// splitBuf cuts buf into n buffers of equal size, each of its own
// capacity.
func splitBuf(buf []byte, n int) [][]byte {
	size := len(buf) / n
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = buf[i*size : (i+1)*size : (i+1)*size]
	}
	return bufs
}

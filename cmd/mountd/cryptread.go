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

// stream reads c's plaintext from the start, handing emit each run of
// authentic plaintext in order. Each read goes into a buffer from get;
// emit owns the slice it is given until it hands it back to get's pool
// (so a writer may still be writing one buffer while the next is filled).
// A damaged block goes to bad; when bad returns true the block's bytes
// are emitted as zeros and the read goes on after it, else stream stops
// there (returning nil).
func (c *cryptFile) stream(get func() []byte, emit func([]byte) error, bad func(badBlock) bool) error {
	for off := int64(0); off < c.size; {
		buf := get()
		n := min(int64(len(buf)), c.size-off)
		got, err := c.f.ReadAt(buf[:n], off)
		var be *crypto.BlockError
		if errors.As(err, &be) {
			start, blen := c.f.Header().BlockRange(be.Block)
			if start < off || start >= off+n {
				return err
			}
			why := "authentication failed"
			if errors.Is(err, crypto.ErrBadSize) {
				why = "incomplete"
			}
			// ReadAt names the first failing block: what precedes it in
			// this read is authentic.
			if start > off {
				if _, err := c.f.ReadAt(buf[:start-off], off); err != nil {
					return err
				}
				if err := emit(buf[:start-off]); err != nil {
					return err
				}
				buf = get()
			}
			blen = min(blen, c.size-start)
			if !bad(badBlock{Block: be.Block, Off: start, Len: blen, Why: why}) {
				return nil
			}
			clear(buf[:blen])
			if err := emit(buf[:blen]); err != nil {
				return err
			}
			off = start + blen
			continue
		}
		if errors.Is(err, io.EOF) && int64(got) < n {
			return fmt.Errorf("file shrank while being read (at %d of %d bytes)", off+int64(got), c.size)
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if err := emit(buf[:got]); err != nil {
			return err
		}
		off += int64(got)
	}
	if c.cut {
		bad(badBlock{Block: c.cutBlock, Off: c.size, Why: "truncated"})
	}
	return nil
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

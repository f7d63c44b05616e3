package crypto

import (
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"syscall"
)

// Backing is the ciphertext store under a File. *os.File satisfies it.
// A large write may call WriteAt from several goroutines at once, for
// disjoint ranges within the current size plus preallocation, as os.File
// allows.
type Backing interface {
	io.ReaderAt
	io.WriterAt
	Truncate(size int64) error
	Stat() (os.FileInfo, error)
}

// fder is implemented by backings with a file descriptor (*os.File); it
// enables fstat without allocation and preallocation before writes.
type fder interface{ Fd() uintptr }

const (
	// chunkBlocks is how many blocks one backing read or write covers:
	// 256 blocks = 1 MiB of plaintext, the largest FUSE request.
	chunkBlocks = 256
	chunkPlain  = chunkBlocks * BlockSize

	// parallelMin is the number of blocks from which a chunk is sealed or
	// opened by several goroutines.
	parallelMin = 32
	maxWorkers  = 4

	// pipeBlocks is the segment of a large chunk that is written while
	// the next one is sealed.
	pipeBlocks = 64
)

// zeroChunk is the source of zero plaintext when a file is extended.
var zeroChunk [chunkPlain]byte

// scratch is the per-call working memory, pooled so the steady state
// allocates nothing per block. Small requests (a few blocks, the common
// random-I/O case) take a small one, so they neither allocate nor pin a
// megabyte each.
type scratch struct {
	cbuf   []byte // blocks * CipherBlockSize
	nonces []byte // blocks * NonceSize
	aad    [maxWorkers][aadSize]byte
	head   [BlockSize]byte // first block of a read-modify-write
	tail   [BlockSize]byte // last block of a read-modify-write
}

// smallBlocks is the capacity of a small scratch.
const smallBlocks = 16

func newScratch(blocks int) *scratch {
	return &scratch{cbuf: make([]byte, blocks*CipherBlockSize), nonces: make([]byte, blocks*NonceSize)}
}

var (
	smallPool = sync.Pool{New: func() any { return newScratch(smallBlocks) }}
	largePool = sync.Pool{New: func() any { return newScratch(chunkBlocks) }}
)

// getScratch returns a scratch for n bytes at off (a large one when they
// span more than smallBlocks blocks; callers loop over chunks of
// s.chunk() bytes either way).
func getScratch(off int64, n int64) *scratch {
	if off%BlockSize+n <= smallBlocks*BlockSize {
		return smallPool.Get().(*scratch)
	}
	return largePool.Get().(*scratch)
}

func putScratch(s *scratch) {
	if len(s.cbuf) == smallBlocks*CipherBlockSize {
		smallPool.Put(s)
	} else {
		largePool.Put(s)
	}
}

// chunk is the most plaintext one pass over s covers.
func (s *scratch) chunk() int { return len(s.cbuf) / CipherBlockSize * BlockSize }

// File is random access to the plaintext of an encrypted file.
//
// ReadAt may run concurrently with other ReadAt calls. WriteAt, Truncate and
// SetBacking must not run concurrently with any other call on the same File
// (the filesystem holds a per-inode lock). Every call checks the Keyring:
// once it is cleared, every method returns ErrLocked.
type File struct {
	k *Keyring
	b Backing
	h Header
}

// OpenFile opens the encrypted file in b, reading and checking its header.
// The key is not needed until data is read or written.
func OpenFile(k *Keyring, b Backing) (*File, error) {
	var hb [HeaderSize]byte
	n, err := b.ReadAt(hb[:], 0)
	if err != nil && !(errors.Is(err, io.EOF) && n > 0) {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: empty file", ErrBadHeader)
		}
		return nil, err
	}
	h, err := ParseHeader(hb[:n])
	if err != nil {
		return nil, err
	}
	f := &File{k: k, b: b, h: h}
	if _, err := f.Size(); err != nil {
		return nil, err
	}
	return f, nil
}

// CreateFile writes a fresh header into the empty backing b and returns the
// (empty) encrypted file. It needs the key.
func CreateFile(k *Keyring, b Backing) (*File, error) {
	h, err := k.NewHeader()
	if err != nil {
		return nil, err
	}
	hb := h.Marshal()
	if _, err := b.WriteAt(hb[:], 0); err != nil {
		return nil, err
	}
	return &File{k: k, b: b, h: h}, nil
}

// Header returns the parsed header.
func (f *File) Header() Header { return f.h }

// SetBacking points f at another handle holding the same ciphertext, e.g.
// after the file was replaced by rename.
func (f *File) SetBacking(b Backing) { f.b = b }

// cipherSize returns the backing file's size.
func (f *File) cipherSize() (int64, error) {
	if fd, ok := f.b.(fder); ok {
		var st syscall.Stat_t
		if err := syscall.Fstat(int(fd.Fd()), &st); err != nil {
			return 0, &os.PathError{Op: "fstat", Path: "backing", Err: err}
		}
		return st.Size, nil
	}
	fi, err := f.b.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// Size returns the plaintext size, computed from the backing size.
func (f *File) Size() (int64, error) {
	cs, err := f.cipherSize()
	if err != nil {
		return 0, err
	}
	if cs < HeaderSize {
		return 0, fmt.Errorf("%w: %d bytes is shorter than the header", ErrBadSize, cs)
	}
	return PlainSize(cs)
}

// ReadAt reads plaintext at off. Like io.ReaderAt it returns io.EOF when
// fewer than len(p) bytes are available. A block that fails authentication
// gives an error wrapping ErrUnauthenticated and no data.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("crypto: negative offset %d", off)
	}
	hold, err := f.k.acquire()
	if err != nil {
		return 0, err
	}
	defer hold.release()
	aead, err := f.k.fileAEAD(&f.h)
	if err != nil {
		return 0, err
	}
	s := getScratch(off, int64(len(p)))
	defer putScratch(s)

	done := 0
	for done < len(p) {
		want := min(len(p)-done, s.chunk()-int((off+int64(done))%BlockSize))
		n, err := f.readChunk(s, aead, p[done:done+want], off+int64(done))
		done += n
		if err != nil {
			if errors.Is(err, io.EOF) {
				return done, io.EOF
			}
			return 0, err
		}
	}
	return done, nil
}

// readChunk reads into p (at most chunkBlocks blocks from off).
func (f *File) readChunk(s *scratch, aead cipher.AEAD, p []byte, off int64) (int, error) {
	first := off / BlockSize
	last := (off + int64(len(p)) - 1) / BlockSize
	nb := int(last - first + 1)
	clen := nb * CipherBlockSize
	n, err := f.b.ReadAt(s.cbuf[:clen], blockOffset(first))
	if err != nil && !errors.Is(err, io.EOF) {
		return 0, err
	}
	full, rem := n/CipherBlockSize, n%CipherBlockSize
	if rem != 0 && rem <= BlockOverhead {
		return 0, &BlockError{Block: first + int64(full), Err: ErrBadSize}
	}
	avail := full
	if rem != 0 {
		avail++
	}
	if avail == 0 {
		return 0, io.EOF
	}
	// Plaintext available from off to the end of the last available block.
	endPlain := (first+int64(full))*BlockSize + int64(max(rem-BlockOverhead, 0))
	if rem == 0 {
		endPlain = (first + int64(full)) * BlockSize
	}
	got := int(min(int64(len(p)), endPlain-off))
	if got <= 0 {
		return 0, io.EOF
	}
	err = f.forBlocks(s, avail, func(w, i int) error {
		blk := first + int64(i)
		ct := s.cbuf[i*CipherBlockSize : min((i+1)*CipherBlockSize, n)]
		bstart := blk * BlockSize
		plen := int64(len(ct) - BlockOverhead)
		// The part of this block that p wants.
		lo, hi := max(bstart, off), min(bstart+plen, off+int64(got))
		if lo >= hi {
			return nil
		}
		f.h.aad(&s.aad[w], uint64(blk))
		var dst []byte
		direct := lo == bstart && hi == bstart+plen
		if direct {
			dst = p[lo-off : lo-off : hi-off]
		} else {
			dst = ct[NonceSize:NonceSize] // decrypt in place
		}
		pt, err := aead.Open(dst, ct[:NonceSize], ct[NonceSize:], s.aad[w][:])
		if err != nil {
			return &BlockError{Block: blk, Err: ErrUnauthenticated}
		}
		if !direct {
			copy(p[lo-off:hi-off], pt[lo-bstart:hi-bstart])
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	if got < len(p) {
		return got, io.EOF
	}
	return got, nil
}

// forBlocks calls fn(worker, i) for i in [0, n), in parallel for large n.
// It returns the first error.
func (f *File) forBlocks(s *scratch, n int, fn func(w, i int) error) error {
	workers := min(runtime.GOMAXPROCS(0), maxWorkers, n/(parallelMin/2))
	if n < parallelMin || workers < 2 {
		for i := 0; i < n; i++ {
			if err := fn(0, i); err != nil {
				return err
			}
		}
		return nil
	}
	var wg sync.WaitGroup
	errs := [maxWorkers]error{}
	per := (n + workers - 1) / workers
	for w := 0; w < workers; w++ {
		lo, hi := w*per, min((w+1)*per, n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := lo; i < hi; i++ {
				if err := fn(w, i); err != nil {
					errs[w] = err
					return
				}
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// WriteAt writes plaintext p at off, re-encrypting the touched blocks with
// fresh nonces. A gap between the current end and off is filled with
// encrypted zero blocks.
func (f *File) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("crypto: negative offset %d", off)
	}
	if len(p) == 0 {
		return 0, nil
	}
	hold, err := f.k.acquire()
	if err != nil {
		return 0, err
	}
	defer hold.release()
	size, err := f.Size()
	if err != nil {
		return 0, err
	}
	if size == 0 {
		// A header-only file gets a new file-id on its first data write,
		// so a planted header cannot fix the file-id (gocryptfs audit 2.2).
		if err := f.rehead(); err != nil {
			return 0, err
		}
	}
	aead, err := f.k.fileAEAD(&f.h)
	if err != nil {
		return 0, err
	}
	var s *scratch
	if off > size {
		s = getScratch(size, off+int64(len(p))-size)
	} else {
		s = getScratch(off, int64(len(p)))
	}
	defer putScratch(s)
	if err := f.fill(s, aead, &size, off); err != nil {
		return 0, err
	}
	return f.write(s, aead, &size, p, off)
}

// rehead writes a new header with a fresh file-id. Caller holds the read lock.
func (f *File) rehead() error {
	h := Header{Version: Version, KeyID: f.k.keyID}
	if _, err := rand.Read(h.FileID[:]); err != nil {
		return fmt.Errorf("crypto: random file-id: %w", err)
	}
	hb := h.Marshal()
	if _, err := f.b.WriteAt(hb[:], 0); err != nil {
		return err
	}
	f.h = h
	return nil
}

// fill extends the file with encrypted zeros from *size up to end.
func (f *File) fill(s *scratch, aead cipher.AEAD, size *int64, end int64) error {
	for *size < end {
		n := min(end-*size, int64(s.chunk())-*size%BlockSize)
		if _, err := f.write(s, aead, size, zeroChunk[:n], *size); err != nil {
			return err
		}
	}
	return nil
}

// write writes p at off (off <= *size) chunk by chunk and updates *size.
func (f *File) write(s *scratch, aead cipher.AEAD, size *int64, p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) {
		o := off + int64(done)
		n := min(len(p)-done, s.chunk()-int(o%BlockSize))
		if err := f.writeChunk(s, aead, *size, p[done:done+n], o); err != nil {
			return done, err
		}
		done += n
		*size = max(*size, o+int64(n))
	}
	return done, nil
}

// oldBlock reads and decrypts block blk of a file of plaintext size size
// into dst, returning its plaintext length (0 past the end).
func (f *File) oldBlock(aead cipher.AEAD, s *scratch, dst *[BlockSize]byte, size int64, blk int64) (int, error) {
	plen := min(size-blk*BlockSize, BlockSize)
	if plen <= 0 {
		return 0, nil
	}
	ct := s.cbuf[:plen+BlockOverhead]
	if _, err := f.b.ReadAt(ct, blockOffset(blk)); err != nil {
		if errors.Is(err, io.EOF) {
			return 0, &BlockError{Block: blk, Err: ErrBadSize}
		}
		return 0, err
	}
	f.h.aad(&s.aad[0], uint64(blk))
	if _, err := aead.Open(dst[:0], ct[:NonceSize], ct[NonceSize:], s.aad[0][:]); err != nil {
		return 0, &BlockError{Block: blk, Err: ErrUnauthenticated}
	}
	return int(plen), nil
}

// writeChunk writes p (at most one chunk of blocks) at off <= size.
func (f *File) writeChunk(s *scratch, aead cipher.AEAD, size int64, p []byte, off int64) error {
	end := off + int64(len(p))
	first, last := off/BlockSize, (end-1)/BlockSize
	nb := int(last - first + 1)

	// Read-modify-write of the first and last blocks where p does not
	// cover everything that must be in them.
	headLen, tailLen := -1, -1
	if off%BlockSize != 0 || (end < (first+1)*BlockSize && end < size) {
		n, err := f.oldBlock(aead, s, &s.head, size, first)
		if err != nil {
			return err
		}
		headLen = n
	}
	if last != first && end%BlockSize != 0 && end < size {
		n, err := f.oldBlock(aead, s, &s.tail, size, last)
		if err != nil {
			return err
		}
		tailLen = n
	}
	if _, err := rand.Read(s.nonces[:nb*NonceSize]); err != nil {
		return fmt.Errorf("crypto: random nonce: %w", err)
	}

	newEnd := max(end, size)
	lens := func(i int) int { // plaintext length of block first+i after the write
		return int(min(newEnd-(first+int64(i))*BlockSize, BlockSize))
	}
	clen := 0
	for i := 0; i < nb; i++ {
		clen += lens(i) + BlockOverhead
	}
	// Only space past the current end can be missing (ENOSPC); rewriting
	// allocated blocks in place needs none.
	if oldEnd, wEnd := CipherSize(size), blockOffset(first)+int64(clen); wEnd > oldEnd {
		from := max(blockOffset(first), oldEnd)
		if err := f.preallocate(from, wEnd-from); err != nil {
			return err
		}
	}
	seal := func(w, i int) error {
		blk := first + int64(i)
		bstart := blk * BlockSize
		plen := lens(i)
		var pt []byte
		switch {
		case i == 0 && headLen >= 0:
			pt = s.head[:plen]
			clear(pt[headLen:]) // bytes between the old end and off are zeros
			copy(pt[off-bstart:], p[:min(int64(len(p)), bstart+int64(plen)-off)])
		case i == nb-1 && tailLen >= 0:
			pt = s.tail[:plen]
			copy(pt, p[bstart-off:])
		default:
			pt = p[bstart-off : bstart-off+int64(plen)]
		}
		o := i * CipherBlockSize
		out := s.cbuf[o : o+NonceSize+plen+TagSize]
		copy(out[:NonceSize], s.nonces[i*NonceSize:])
		f.h.aad(&s.aad[w], uint64(blk))
		aead.Seal(out[NonceSize:NonceSize], out[:NonceSize], pt, s.aad[w][:])
		return nil
	}
	// Blocks before the last are full, so the sealed blocks are contiguous.
	if nb < 2*pipeBlocks {
		if err := f.forBlocks(s, nb, seal); err != nil {
			return err
		}
		_, err := f.b.WriteAt(s.cbuf[:clen], blockOffset(first))
		return err
	}
	// A large chunk is sealed and written in segments, each segment
	// written while the next is sealed: the copy into the backing file's
	// pages then overlaps the encryption instead of following it.
	var wg sync.WaitGroup
	var errs [chunkBlocks / pipeBlocks]error
	defer wg.Wait()
	for k, lo := 0, 0; lo < nb; k, lo = k+1, lo+pipeBlocks {
		hi := min(lo+pipeBlocks, nb)
		if err := f.forBlocks(s, hi-lo, func(w, i int) error { return seal(w, lo+i) }); err != nil {
			return err
		}
		cEnd := hi * CipherBlockSize
		if hi == nb {
			cEnd = clen
		}
		seg, at := s.cbuf[lo*CipherBlockSize:cEnd], blockOffset(first+int64(lo))
		wg.Go(func() { _, errs[k] = f.b.WriteAt(seg, at) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// preallocate reserves backing space for [off, off+n) without changing the
// size, so a full disk fails the write before any block is half-written.
func (f *File) preallocate(off, n int64) error {
	fd, ok := f.b.(fder)
	if !ok {
		return nil
	}
	const keepSize = 1 // FALLOC_FL_KEEP_SIZE
	err := syscall.Fallocate(int(fd.Fd()), keepSize, off, n)
	switch err {
	case nil, syscall.EOPNOTSUPP, syscall.ENOSYS, syscall.EINVAL:
		return nil
	}
	return &os.PathError{Op: "fallocate", Path: "backing", Err: err}
}

// Truncate sets the plaintext size. Growing appends encrypted zero blocks;
// shrinking re-seals the new last block when it is cut.
func (f *File) Truncate(size int64) error {
	if size < 0 {
		return fmt.Errorf("crypto: negative size %d", size)
	}
	hold, err := f.k.acquire()
	if err != nil {
		return err
	}
	defer hold.release()
	cur, err := f.Size()
	if err != nil {
		return err
	}
	aead, err := f.k.fileAEAD(&f.h)
	if err != nil {
		return err
	}
	switch {
	case size == cur:
		return nil
	case size > cur:
		if cur == 0 {
			if err := f.rehead(); err != nil {
				return err
			}
			if aead, err = f.k.fileAEAD(&f.h); err != nil {
				return err
			}
		}
		s := getScratch(cur, size-cur)
		defer putScratch(s)
		return f.fill(s, aead, &cur, size)
	}
	r := size % BlockSize
	if r == 0 {
		return f.b.Truncate(CipherSize(size))
	}
	s := getScratch(0, BlockSize)
	defer putScratch(s)
	blk := size / BlockSize
	if _, err := f.oldBlock(aead, s, &s.head, cur, blk); err != nil {
		return err
	}
	if err := f.b.Truncate(CipherSize(size)); err != nil {
		return err
	}
	out := s.cbuf[:NonceSize+r+TagSize]
	if _, err := rand.Read(out[:NonceSize]); err != nil {
		return fmt.Errorf("crypto: random nonce: %w", err)
	}
	f.h.aad(&s.aad[0], uint64(blk))
	aead.Seal(out[NonceSize:NonceSize], out[:NonceSize], s.head[:r], s.aad[0][:])
	_, err = f.b.WriteAt(out, blockOffset(blk))
	return err
}

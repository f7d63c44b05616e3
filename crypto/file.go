package crypto

import (
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
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
	// enough for the largest FUSE request (1 MiB) at any offset in either
	// version (260 blocks of version 2 hold 1 MiB and a block), so one
	// request is one chunk, and one change of the backing file's size
	// when it grows (version 2 sets the size first). On a network file
	// system a size change is a round trip that waits for the writes in
	// flight; with 256 blocks a 1 MiB append made two.
	chunkBlocks = 260
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
	cbuf   []byte // blocks * CipherBlockSize (a slot of either version fits), and a page more of capacity (the zeros of a growing write, makeRoom)
	nonces []byte // blocks * NonceSize
	aad    [maxWorkers][aadSize]byte
	head   [BlockSize]byte // first block of a read-modify-write
	tail   [BlockSize]byte // last block of a read-modify-write
}

// smallBlocks is the capacity of a small scratch.
const smallBlocks = 16

func newScratch(blocks int) *scratch {
	n := blocks * CipherBlockSize
	return &scratch{cbuf: make([]byte, n, n+PageSize), nonces: make([]byte, blocks*NonceSize)}
}

var (
	smallPool = sync.Pool{New: func() any { return newScratch(smallBlocks) }}
	largePool = sync.Pool{New: func() any { return newScratch(chunkBlocks) }}
)

// getScratch returns a scratch for n bytes at off (a large one when they
// span more than smallBlocks blocks; callers loop over spans of s.span()).
func getScratch(g geom, off int64, n int64) *scratch {
	if n <= 0 || g.blockOf(off+n-1)-g.blockOf(off) < smallBlocks {
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

// span is the most plaintext from off that one pass over s covers: up to
// the end of the last of the blocks s holds.
func (s *scratch) span(g geom, off int64) int64 {
	blocks := int64(len(s.cbuf) / CipherBlockSize)
	return g.blockStart(g.blockOf(off)+blocks) - off
}

// File is random access to the plaintext of an encrypted file.
//
// ReadAt may run concurrently with other ReadAt calls. WriteAt, Truncate and
// SetBacking must not run concurrently with any other call on the same File
// (the filesystem holds a per-inode lock). Every call checks the Keyring:
// once it is cleared, every method returns ErrLocked.
//
// Writes keep the file's format version, except that an empty file (a bare
// header) gets a version 2 header with a new file-id on its first write.
type File struct {
	k *Keyring
	b Backing
	h Header
	// last is the slot this File last wrote of the last block a write
	// touched, as written, so that the next write into that block (the
	// next append) does not read it back: on a network file system that
	// read waits for every write in flight. It is ciphertext, what the
	// backing file holds, not a secret. Any other change of the backing
	// file through this File drops it.
	last lastSlot
	// network: the backing file is on a network file system; see
	// SetNetworkBacking.
	network bool
	// direct: large slot writes go with O_DIRECT; see SetDirectWrites.
	direct bool
}

// lastSlot is File.last.
type lastSlot struct {
	ok   bool
	i    int64 // block number
	n    int   // bytes of slot in use
	slot [CipherBlockSize]byte
}

// OpenFile opens the encrypted file in b, reading and checking its header.
// The key is not needed until data is read or written. A file whose end was
// cut (by a crash, or by hand) opens: the blocks that are whole read back,
// the rest fails with a BlockError (see Header.PlainSize).
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
func (f *File) SetBacking(b Backing) {
	f.b = b
	f.last.ok = false
}

// SetNetworkBacking tells f whether its backing file is on a network file
// system, where the client makes a size change a round trip to the server
// that waits for the writes in flight, and where the transport to the
// server (ssh, or a kernel client encrypting and copying) is what limits a
// write and needs the CPU. There, f
//   - grows a version 2 file by the write of its slots, which goes on with
//     zeros up to the new size, instead of by ftruncate before it (one
//     round trip less per growing write; the page past the last slot, a
//     hole otherwise, is allocated: a page more per file);
//   - seals a chunk on one goroutine and writes it with one call, instead
//     of spreading the sealing over the cores and writing segments while
//     the next is sealed (more CPU left for the transport, fewer
//     hand-offs).
//
// docs/FORMAT.md section 5 has the crash argument of both ways of growing.
func (f *File) SetNetworkBacking(on bool) { f.network = on }

// directMin is the smallest slot write that SetDirectWrites sends with
// O_DIRECT: below it the page-cache copy costs less than pinning pages.
const directMin = 64 << 10

// SetDirectWrites tells f whether to write the slots of a chunk of at
// least directMin bytes, when they go in one call (always on a network
// file system, SetNetworkBacking), with O_DIRECT set on the backing
// descriptor for that call: on a FUSE file system (sshfs) the kernel then
// hands the daemon's own pages to the file system's server instead of
// copying them into its page cache first (a copy of every byte less, and
// the pieces of the write go to the server together). Reads keep the page
// cache (the flag is set back after the write). Not for NFS or SMB, whose
// O_DIRECT writes wait for the server, nor local file systems, which want
// aligned O_DIRECT writes: a file system that refuses the flag, or a write
// with it (EINVAL), turns it off for f, and the write goes the usual way.
func (f *File) SetDirectWrites(on bool) { f.direct = on }

// DirectWrites reports whether f writes large chunks with O_DIRECT (set,
// and not turned off by a file system that refused it).
func (f *File) DirectWrites() bool { return f.direct }

// writeSlots writes b (sealed slots, and the zeros of a growing write) at
// backing offset off in one call, with O_DIRECT when SetDirectWrites asks
// for it and b is large enough.
func (f *File) writeSlots(b []byte, off int64) error {
	fd, ok := f.b.(fder)
	if !f.direct || !ok || len(b) < directMin {
		_, err := f.b.WriteAt(b, off)
		return err
	}
	n := fd.Fd()
	fl, err := unix.FcntlInt(n, unix.F_GETFL, 0)
	if err == nil {
		_, err = unix.FcntlInt(n, unix.F_SETFL, fl|unix.O_DIRECT)
	}
	if err != nil {
		f.direct = false // the file system takes no O_DIRECT
		_, err := f.b.WriteAt(b, off)
		return err
	}
	_, err = f.b.WriteAt(b, off)
	if _, rerr := unix.FcntlInt(n, unix.F_SETFL, fl); rerr != nil {
		f.direct = false // never again: the descriptor may be left direct
	}
	if errors.Is(err, syscall.EINVAL) {
		// An O_DIRECT write this file system wants aligned: nothing
		// was written. The usual way, from now on.
		f.direct = false
		_, err = f.b.WriteAt(b, off)
	}
	return err
}

// cipherSize returns the backing file's size.
func (f *File) cipherSize() (int64, error) {
	if fd, ok := f.b.(fder); ok {
		// AT_STATX_DONT_SYNC: on a network file system the client's
		// size, which this File's own writes keep current (one writer
		// per data directory), instead of a round trip to the server
		// that waits for the writes in flight. A local file system
		// answers the same either way.
		var st unix.Statx_t
		if err := unix.Statx(int(fd.Fd()), "", unix.AT_EMPTY_PATH|unix.AT_STATX_DONT_SYNC, unix.STATX_SIZE, &st); err != nil {
			return 0, &os.PathError{Op: "statx", Path: "backing", Err: err}
		}
		return int64(st.Size), nil
	}
	fi, err := f.b.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// Size returns the plaintext size, computed from the backing size (see
// Header.PlainSize).
func (f *File) Size() (int64, error) {
	cs, err := f.cipherSize()
	if err != nil {
		return 0, err
	}
	return f.h.PlainSize(cs)
}

// ReadAt reads plaintext at off. Like io.ReaderAt it returns io.EOF when
// fewer than len(p) bytes are available. A block that fails authentication
// gives an error wrapping ErrUnauthenticated, one that holds fewer bytes
// than the file size says an error wrapping ErrBadSize, both in a
// BlockError, and no data.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("crypto: negative offset %d", off)
	}
	if len(p) == 0 {
		return 0, nil
	}
	hold, err := f.k.acquireRead()
	if err != nil {
		return 0, err
	}
	defer hold.release()
	aead, err := f.k.fileAEAD(&f.h)
	if err != nil {
		return 0, err
	}
	size, err := f.Size()
	if err != nil {
		return 0, err
	}
	if off >= size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), size-off)
	g := f.h.geom()
	s := getScratch(g, off, want)
	defer putScratch(s)
	for done := int64(0); done < want; {
		o := off + done
		n := min(want-done, s.span(g, o))
		if err := f.readChunk(s, aead, size, p[done:done+n], o); err != nil {
			return 0, err
		}
		done += n
	}
	if want < int64(len(p)) {
		return int(want), io.EOF
	}
	return int(want), nil
}

// readSlots reads the slots of blocks first..last of a file of plaintext
// size size into s.cbuf and returns them with their backing offset.
func (f *File) readSlots(s *scratch, size, first, last int64) ([]byte, int64, error) {
	g := f.h.geom()
	lo := g.slotOff(first)
	hi := g.slotOff(last) + g.slotLen(last, min(g.blockLen(last), size-g.blockStart(last)))
	buf := s.cbuf[:hi-lo]
	n, err := f.b.ReadAt(buf, lo)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, 0, err
	}
	if int64(n) < hi-lo {
		// The backing file is shorter than its size said a moment ago.
		return nil, 0, &BlockError{Block: g.blockOf(max(g.blockStart(first), size-1)), Err: ErrBadSize}
	}
	return buf, lo, nil
}

// openSlot authenticates and decrypts the slot of block i (as read from
// disk; in version 1 exactly the sealed block) and returns its plaintext:
// into direct when it is exactly len(direct) bytes long, else in place.
func (f *File) openSlot(aead cipher.AEAD, aad *[aadSize]byte, i int64, slot, direct []byte) ([]byte, error) {
	var nonce, sealed, meta []byte
	if f.h.Version == 1 {
		nonce, sealed = slot[:NonceSize], slot[NonceSize:]
	} else {
		meta = slot[:slotMetaSize]
		l := int64(binary.BigEndian.Uint16(meta))
		if l == 0 || l > f.h.geom().blockLen(i) || meta[2] != 0 || meta[3] != 0 {
			return nil, &BlockError{Block: i, Err: ErrUnauthenticated}
		}
		nonce = slot[slotMetaSize : slotMetaSize+NonceSize]
		sealed = slot[slotMetaSize+NonceSize : slotMetaSize+NonceSize+l+TagSize]
	}
	dst := sealed[:0]
	if direct != nil && len(direct) == len(sealed)-TagSize {
		dst = direct[:0]
	}
	pt, err := aead.Open(dst, nonce, sealed, f.h.aad(aad, uint64(i), meta))
	if err != nil {
		return nil, &BlockError{Block: i, Err: ErrUnauthenticated}
	}
	return pt, nil
}

// readChunk reads p (at most one span of s) at off; off+len(p) <= size.
func (f *File) readChunk(s *scratch, aead cipher.AEAD, size int64, p []byte, off int64) error {
	g := f.h.geom()
	end := off + int64(len(p))
	first, last := g.blockOf(off), g.blockOf(end-1)
	buf, lo, err := f.readSlots(s, size, first, last)
	if err != nil {
		return err
	}
	return f.forBlocks(int(last-first+1), func(w, k int) error {
		i := first + int64(k)
		bstart := g.blockStart(i)
		want := min(g.blockLen(i), size-bstart) // what the size says it holds
		so := g.slotOff(i) - lo
		slot := buf[so : so+g.slotLen(i, want)]
		// The part of this block that p wants.
		rlo, rhi := max(bstart, off), min(bstart+want, end)
		var direct []byte
		if rlo == bstart && rhi == bstart+want {
			direct = p[rlo-off : rhi-off]
		}
		pt, err := f.openSlot(aead, &s.aad[w], i, slot, direct)
		if err != nil {
			return err
		}
		if int64(len(pt)) < rhi-bstart {
			// Authentic, but shorter than the size says: the rest was
			// never written (a crash between the two).
			return &BlockError{Block: i, Err: ErrBadSize}
		}
		if direct == nil || &pt[0] != &direct[0] {
			copy(p[rlo-off:rhi-off], pt[rlo-bstart:rhi-bstart])
		}
		return nil
	})
}

// forBlocks calls fn(worker, i) for i in [0, n), in parallel for large n.
// It returns the first error.
func (f *File) forBlocks(n int, fn func(w, i int) error) error {
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
	g := f.h.geom()
	end := off + int64(len(p))
	if off <= size {
		s := getScratch(g, off, int64(len(p)))
		defer putScratch(s)
		return f.write(s, aead, &size, p, off)
	}
	// A write past the end: an extension, all or nothing.
	s := getScratch(g, size, end-size)
	defer putScratch(s)
	old := size
	if err := f.grow(s, aead, &size, off, end); err != nil {
		return 0, err
	}
	n, err := f.write(s, aead, &size, p, off)
	if n == 0 && err != nil {
		return 0, f.rollback(s, aead, old, err)
	}
	return n, err
}

// rehead gives the empty file a version 2 header with a fresh file-id
// (dropping whatever a crash left past the old header). Caller holds the
// read lock.
func (f *File) rehead() error {
	h := Header{Version: Version, KeyID: f.k.keyID}
	if _, err := rand.Read(h.FileID[:]); err != nil {
		return fmt.Errorf("crypto: random file-id: %w", err)
	}
	f.last.ok = false
	if err := f.b.Truncate(HeaderSize); err != nil {
		return err
	}
	hb := h.Marshal()
	if _, err := f.b.WriteAt(hb[:], 0); err != nil {
		return err
	}
	f.h = h
	return nil
}

// write writes p at off (off <= *size) span by span and updates *size.
func (f *File) write(s *scratch, aead cipher.AEAD, size *int64, p []byte, off int64) (int, error) {
	g := f.h.geom()
	done := 0
	for done < len(p) {
		o := off + int64(done)
		n := int(min(int64(len(p)-done), s.span(g, o)))
		if err := f.writeChunk(s, aead, *size, p[done:done+n], o); err != nil {
			return done, err
		}
		done += n
		*size = max(*size, o+int64(n))
	}
	return done, nil
}

// oldBlock reads and decrypts block i of a file of plaintext size size
// into dst and returns how many bytes the block holds (0 past the end).
func (f *File) oldBlock(aead cipher.AEAD, s *scratch, dst []byte, size int64, i int64) (int, error) {
	g := f.h.geom()
	want := min(size-g.blockStart(i), g.blockLen(i))
	if want <= 0 {
		return 0, nil
	}
	var buf []byte
	if n := g.slotLen(i, want); f.last.ok && f.last.i == i && int64(f.last.n) == n {
		// Opened in place: a copy.
		buf = s.cbuf[:n]
		copy(buf, f.last.slot[:n])
	} else {
		var err error
		if buf, _, err = f.readSlots(s, size, i, i); err != nil {
			return 0, err
		}
	}
	pt, err := f.openSlot(aead, &s.aad[0], i, buf, nil)
	if err != nil {
		return 0, err
	}
	if int64(len(pt)) < want {
		return 0, &BlockError{Block: i, Err: ErrBadSize}
	}
	return copy(dst, pt[:want]), nil
}

// writeChunk writes p (at most one span of s) at off <= size.
func (f *File) writeChunk(s *scratch, aead cipher.AEAD, size int64, p []byte, off int64) error {
	g := f.h.geom()
	end := off + int64(len(p))
	newSize := max(end, size)
	first, last := g.blockOf(off), g.blockOf(end-1)
	nb := int(last - first + 1)

	// Read-modify-write of the first and last blocks where p does not
	// cover everything that must be in them.
	headLen, tailLen := -1, -1
	if fs := g.blockStart(first); off > fs || (end < fs+g.blockLen(first) && end < size) {
		n, err := f.oldBlock(aead, s, s.head[:], size, first)
		if err != nil {
			return err
		}
		headLen = n
	}
	if ls := g.blockStart(last); last != first && end < ls+g.blockLen(last) && end < size {
		n, err := f.oldBlock(aead, s, s.tail[:], size, last)
		if err != nil {
			return err
		}
		tailLen = n
	}
	f.last.ok = false // the backing file changes from here on
	if _, err := rand.Read(s.nonces[:nb*NonceSize]); err != nil {
		return fmt.Errorf("crypto: random nonce: %w", err)
	}

	lens := func(i int64) int64 { // plaintext length of block i after the write
		return min(newSize-g.blockStart(i), g.blockLen(i))
	}
	base := g.slotOff(first)
	slotsEnd := int(g.slotOff(last) + g.slotLen(last, lens(last)) - base)
	tail, err := f.makeRoom(size, newSize, base+int64(slotsEnd))
	if err != nil {
		return err
	}
	// What is written: the slots, then (growing by write) the zeros that
	// set the new size.
	clen := slotsEnd + tail
	clear(s.cbuf[slotsEnd:clen])
	seal := func(w, k int) error {
		i := first + int64(k)
		bstart := g.blockStart(i)
		plen := lens(i)
		var pt []byte
		switch {
		case k == 0 && headLen >= 0:
			pt = s.head[:plen]
			clear(pt[headLen:]) // bytes between the old end and off are zeros
			copy(pt[off-bstart:], p[:min(int64(len(p)), bstart+plen-off)])
		case k == nb-1 && tailLen >= 0:
			pt = s.tail[:plen]
			copy(pt, p[bstart-off:])
		default:
			pt = p[bstart-off : bstart-off+plen]
		}
		o := g.slotOff(i) - base
		slot := s.cbuf[o : o+g.slotLen(i, plen)]
		nonce := s.nonces[k*NonceSize : (k+1)*NonceSize]
		if g.v == 1 {
			copy(slot[:NonceSize], nonce)
			aead.Seal(slot[NonceSize:NonceSize], slot[:NonceSize], pt, f.h.aad(&s.aad[w], uint64(i), nil))
			return nil
		}
		binary.BigEndian.PutUint16(slot[:2], uint16(plen))
		slot[2], slot[3] = 0, 0
		copy(slot[slotMetaSize:], nonce)
		ct := slot[slotMetaSize+NonceSize:]
		aead.Seal(ct[:0], slot[slotMetaSize:slotMetaSize+NonceSize], pt, f.h.aad(&s.aad[w], uint64(i), slot))
		clear(ct[plen+TagSize:])
		return nil
	}
	// A failed write leaves the old plaintext size (what was written of
	// it may fail to authenticate: the caller was told it failed).
	restore := func(err error) error {
		if err != nil && g.v == 2 && newSize > size {
			if terr := f.b.Truncate(g.cipherSize(size)); terr != nil {
				return errors.Join(err, terr)
			}
		}
		return err
	}
	// Blocks before the last are full, so the sealed slots are contiguous.
	if nb < 2*pipeBlocks || f.network {
		var err error
		if f.network {
			for k := 0; k < nb && err == nil; k++ {
				err = seal(0, k)
			}
		} else {
			err = f.forBlocks(nb, seal)
		}
		if err != nil {
			return restore(err)
		}
		if err := f.writeSlots(s.cbuf[:clen], base); err != nil {
			return restore(err)
		}
		f.keepLast(s.cbuf[g.slotOff(last)-base:slotsEnd], last)
		return nil
	}
	// A large chunk is sealed and written in segments, each segment
	// written while the next is sealed: the copy into the backing file's
	// pages then overlaps the encryption instead of following it.
	var wg sync.WaitGroup
	var errs [(chunkBlocks + pipeBlocks - 1) / pipeBlocks]error
	defer wg.Wait()
	for k, lo := 0, 0; lo < nb; k, lo = k+1, lo+pipeBlocks {
		hi := min(lo+pipeBlocks, nb)
		if err := f.forBlocks(hi-lo, func(w, i int) error { return seal(w, lo+i) }); err != nil {
			wg.Wait()
			return restore(err)
		}
		segEnd := clen
		if hi < nb {
			segEnd = int(g.slotOff(first+int64(hi)) - base)
		}
		seg, at := s.cbuf[g.slotOff(first+int64(lo))-base:segEnd], g.slotOff(first+int64(lo))
		wg.Go(func() { _, errs[k] = f.b.WriteAt(seg, at) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return restore(err)
		}
	}
	f.keepLast(s.cbuf[g.slotOff(last)-base:slotsEnd], last)
	return nil
}

// keepLast records slot, just written whole as block i's, in f.last.
func (f *File) keepLast(slot []byte, i int64) {
	f.last.n = copy(f.last.slot[:], slot)
	f.last.i, f.last.ok = i, f.last.n == len(slot)
}

// Damage is a plaintext range of an encrypted file that cannot be read:
// its block fails authentication (ErrUnauthenticated) or holds fewer bytes
// than the file size says (ErrBadSize). Len 0 with ErrBadSize marks a
// backing size that no writer makes (a cut end); Off is then the
// plaintext size reported for the file.
type Damage struct {
	Block    int64
	Off, Len int64
	Err      error
}

// Verify authenticates every block of the file, in order, and calls fn for
// each damaged range (and once for a cut end); it stops at fn's first
// error and returns it. It returns an error of its own only when the file
// cannot be read at all (I/O error, no key, another master key). Memory
// is bounded whatever the file size.
func (f *File) Verify(fn func(Damage) error) error {
	hold, err := f.k.acquireRead()
	if err != nil {
		return err
	}
	defer hold.release()
	aead, err := f.k.fileAEAD(&f.h)
	if err != nil {
		return err
	}
	cs, err := f.cipherSize()
	if err != nil {
		return err
	}
	size, err := f.h.PlainSize(cs)
	if err != nil {
		return fn(Damage{Err: err})
	}
	g := f.h.geom()
	s := largePool.Get().(*scratch)
	defer putScratch(s)
	var res [chunkBlocks]error
	var got [chunkBlocks]int64
	for first := int64(0); g.blockStart(first) < size; {
		last := min(g.blockOf(size-1), first+chunkBlocks-1)
		buf, lo, err := f.readSlots(s, size, first, last)
		if err != nil {
			return err
		}
		// The callback never fails: each block's result is kept in res.
		_ = f.forBlocks(int(last-first+1), func(w, k int) error {
			i := first + int64(k)
			want := min(g.blockLen(i), size-g.blockStart(i))
			so := g.slotOff(i) - lo
			pt, err := f.openSlot(aead, &s.aad[w], i, buf[so:so+g.slotLen(i, want)], nil)
			res[k], got[k] = err, int64(len(pt))
			return nil
		})
		for k := range int(last - first + 1) {
			i := first + int64(k)
			bstart := g.blockStart(i)
			want := min(g.blockLen(i), size-bstart)
			var d *Damage
			switch {
			case res[k] != nil:
				d = &Damage{Block: i, Off: bstart, Len: want, Err: ErrUnauthenticated}
			case got[k] < want:
				d = &Damage{Block: i, Off: bstart + got[k], Len: want - got[k], Err: ErrBadSize}
			}
			if d != nil {
				if err := fn(*d); err != nil {
					return err
				}
			}
		}
		first = last + 1
	}
	if f.h.SizeDamaged(cs) {
		return fn(Damage{Block: g.blockOf(max(size-1, 0)), Off: size, Err: ErrBadSize})
	}
	return nil
}

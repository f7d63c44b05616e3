package crypto

import (
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"syscall"
)

// The size of an encrypted file: extensions past the end (all or
// nothing), the backing room a write needs, and truncation.

// reserveStep is the most backing space one fallocate call of an
// extension reserves, so that a pending logout is seen between two.
const reserveStep = 1 << 30

// grow extends the file from *size to end with encrypted zero blocks, as
// the start of an operation whose plaintext ends at wEnd (>= end): all or
// nothing. It first reserves the backing space up to wEnd's cipher size,
// so that a size the backing file system cannot hold fails at once with
// EFBIG and a full disk with ENOSPC, before any block is written; it
// writes the zero blocks a chunk (about 1 MiB) at a time and stops with
// ErrLocked at a pending logout (Keyring.LogoutPending), so one request
// never holds a logout back for more than a chunk; and on any failure it
// cuts the file back to its old size (rollback). Caller holds a keyHold.
func (f *File) grow(s *scratch, aead cipher.AEAD, size *int64, end, wEnd int64) error {
	old := *size
	g := f.h.geom()
	newCS := g.cipherSize(wEnd)
	if newCS < wEnd {
		// Past what a cipher size can say (int64): no file system holds it.
		return &os.PathError{Op: "truncate", Path: "backing", Err: syscall.EFBIG}
	}
	oldCS, err := f.cipherSize()
	if err != nil {
		return err
	}
	if err := f.reserve(oldCS, newCS); err != nil {
		return f.rollback(s, aead, old, err)
	}
	if err := f.fill(s, aead, size, end); err != nil {
		return f.rollback(s, aead, old, err)
	}
	return nil
}

// reserve makes the backing file ready to grow from cipher size oldCS to
// newCS: an end the file system cannot hold fails with EFBIG before
// anything is allocated (the kernel checks the end of a fallocate range
// against the file system's maximum file size first), then the space is
// reserved past the end (FALLOC_FL_KEEP_SIZE), a step at a time, ENOSPC
// on a full disk. Without fallocate, the size alone is probed by setting
// it and setting it back.
func (f *File) reserve(oldCS, newCS int64) error {
	fd, ok := f.b.(fder)
	if !ok || newCS <= oldCS {
		return nil
	}
	const keepSize = 1 // FALLOC_FL_KEEP_SIZE
	err := syscall.Fallocate(int(fd.Fd()), keepSize, newCS-1, 1)
	switch err {
	case nil:
	case syscall.EOPNOTSUPP, syscall.ENOSYS, syscall.EINVAL:
		if err := f.b.Truncate(newCS); err != nil {
			return err
		}
		return f.b.Truncate(oldCS)
	default:
		return &os.PathError{Op: "fallocate", Path: "backing", Err: err}
	}
	for off := oldCS; off < newCS-1; off += reserveStep {
		if f.k.pending.Load() {
			return ErrLocked
		}
		if err := syscall.Fallocate(int(fd.Fd()), keepSize, off, min(reserveStep, newCS-1-off)); err != nil {
			return &os.PathError{Op: "fallocate", Path: "backing", Err: err}
		}
	}
	return nil
}

// rollback undoes a failed extension: it cuts the file back to the
// plaintext size old (which also frees the space reserved past the end)
// and returns cause, or the rollback's own error joined to it. The old
// content stays: in version 2 the old last slot, rewritten with zeros
// appended, still holds the old bytes and the size takes just them; in
// version 1 the last block is re-sealed at its old length. Caller holds a
// keyHold.
func (f *File) rollback(s *scratch, aead cipher.AEAD, old int64, cause error) error {
	var err error
	if f.h.geom().v == 2 {
		err = f.cut(old)
	} else {
		var cur int64
		if cur, err = f.Size(); err == nil {
			err = f.shrinkV1(s, aead, cur, old)
		}
	}
	if err != nil {
		return errors.Join(cause, fmt.Errorf("crypto: rolling back an extension: %w", err))
	}
	return cause
}

// fill extends the file with encrypted zeros from *size up to end, a
// chunk at a time; it stops with ErrLocked at a pending logout.
func (f *File) fill(s *scratch, aead cipher.AEAD, size *int64, end int64) error {
	g := f.h.geom()
	for *size < end {
		if f.k.pending.Load() {
			return ErrLocked
		}
		n := min(end-*size, s.span(g, *size), chunkPlain)
		if _, err := f.write(s, aead, size, zeroChunk[:n], *size); err != nil {
			return err
		}
	}
	return nil
}

// makeRoom prepares the backing file for a write that ends at backing
// offset wEnd and leaves the plaintext size at newSize (from size): it
// reserves the space past the current end, so that a full disk fails the
// write before any block is half-written, and in version 2 makes sure
// the size never says less than the slots hold. A file that grows by
// ftruncate gets its new size now, before the slots are written. One that
// grows by write (on a network file system: SetNetworkBacking) gets it
// from the write itself: makeRoom returns how many zero bytes the caller
// appends to its write, past the last slot up to the new size (less than
// a page: the scratch has room for them past its slots).
func (f *File) makeRoom(size, newSize, wEnd int64) (tail int, err error) {
	g := f.h.geom()
	oldEnd := g.cipherSize(size)
	if g.v == 2 && size > 0 {
		oldEnd -= oldEnd % PageSize // the last slot's end, not the size
	}
	grows := g.v == 2 && newSize > size
	cs := g.cipherSize(newSize)
	if grows && f.network {
		wEnd = max(wEnd, cs) // the page past the last slot is written too
	}
	if wEnd > oldEnd {
		if err := f.preallocate(oldEnd, wEnd-oldEnd); err != nil {
			return 0, err
		}
	}
	if !grows {
		return 0, nil
	}
	if !f.network {
		return 0, f.b.Truncate(cs)
	}
	// The new last slot ends at a page boundary, cs is past it.
	return int(cs % PageSize), nil
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

// Truncate sets the plaintext size. Growing appends encrypted zero blocks.
// Shrinking a version 2 file only cuts the backing file (the last slot
// keeps the bytes past the new end until it is rewritten; reads stop at
// the size and a later extension writes zeros there); in version 1 it
// re-seals the new last block when it is cut.
func (f *File) Truncate(size int64) error {
	if size < 0 {
		return fmt.Errorf("crypto: negative size %d", size)
	}
	hold, err := f.k.acquire()
	if err != nil {
		return err
	}
	defer hold.release()
	f.last.ok = false
	cur, err := f.Size()
	if err != nil {
		return err
	}
	aead, err := f.k.fileAEAD(&f.h)
	if err != nil {
		return err
	}
	g := f.h.geom()
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
			g = f.h.geom()
		}
		s := getScratch(g, cur, size-cur)
		defer putScratch(s)
		return f.grow(s, aead, &cur, size, size)
	}
	if g.v == 2 {
		return f.cut(size)
	}
	s := getScratch(g, 0, 1)
	defer putScratch(s)
	return f.shrinkV1(s, aead, cur, size)
}

// shrinkV1 cuts a version 1 file from plaintext size cur to size,
// re-sealing the new last block when it is cut.
func (f *File) shrinkV1(s *scratch, aead cipher.AEAD, cur, size int64) error {
	f.last.ok = false
	g := f.h.geom()
	i := g.blockOf(size)
	if size == g.blockStart(i) || size == cur {
		return f.b.Truncate(g.cipherSize(size))
	}
	r := size - g.blockStart(i)
	if _, err := f.oldBlock(aead, s, s.head[:], cur, i); err != nil {
		return err
	}
	if err := f.b.Truncate(g.cipherSize(size)); err != nil {
		return err
	}
	out := s.cbuf[:NonceSize+r+TagSize]
	if _, err := rand.Read(out[:NonceSize]); err != nil {
		return fmt.Errorf("crypto: random nonce: %w", err)
	}
	aead.Seal(out[NonceSize:NonceSize], out[:NonceSize], s.head[:r], f.h.aad(&s.aad[0], uint64(i), nil))
	_, err := f.b.WriteAt(out, g.slotOff(i))
	return err
}

// cut shrinks a version 2 file to size. The file system zeroes the rest of
// the page the new end falls in, and may write that page before the new
// size is on disk: the new end must never fall in a page that holds a
// slot. So the file is first cut at the page boundary after the last slot
// (cutting whole pages only), then extended to its size.
func (f *File) cut(size int64) error {
	f.last.ok = false
	cs, err := f.cipherSize()
	if err != nil {
		return err
	}
	c := f.h.geom().cipherSize(size)
	if pages := c / PageSize * PageSize; size > 0 && cs > pages+PageSize {
		if err := f.b.Truncate(pages); err != nil {
			return err
		}
	}
	return f.b.Truncate(c)
}

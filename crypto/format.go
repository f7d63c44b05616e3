package crypto

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Content formats (docs/FORMAT.md has the full specification).
//
//	header = magic "MTDENC\x00" (7) | version (1) | key-id (8) | file-id (16)
//
// Version 1 (read and written in place, never created any more):
//
//	block i = nonce (12) | AES-256-GCM ciphertext of plaintext block i (1..4096) | tag (16)
//
// Blocks follow the header back to back, so a full block (4124 bytes)
// straddles two 4 KiB pages of the backing file; the size of the last one
// follows from the file size.
//
// Version 2 (written by this package) puts every block in a page of its own,
// so that a block is rewritten by one aligned 4 KiB write:
//
//	page 0 = header (32) | slot of block 0 (4064)
//	page i = slot of block i (4096), i >= 1
//	slot   = length (2) | reserved, zero (2) | nonce (12) | ciphertext (length) | tag (16) | zeros
//
// Block 0 holds up to 4032 plaintext bytes, every other block up to 4064.
// The plaintext length of a block is stored in its slot (authenticated), so
// a slot reads back on its own whatever the file size says. The file size is
// pages*4096 + r, where r (1..4064) is the plaintext length of the last
// block: the plaintext size follows from the file size without the key. The
// r bytes past the last page are a hole, never read.
//
// The per-file key is HKDF-SHA256(master key, info = "mountd/v1/content" |
// file-id). The associated data of block i is header (32) | uint64 i (v1),
// and header | uint64 i | the slot's first 4 bytes (v2).
const (
	KeySize   = 32
	MagicSize = 8
	// HeaderSize is the size of the header, the same in every version.
	HeaderSize = 32
	NonceSize  = 12
	TagSize    = 16

	// BlockSize is the plaintext block of version 1.
	BlockSize = 4096
	// BlockOverhead is what version 1 adds to every block.
	BlockOverhead = NonceSize + TagSize
	// CipherBlockSize is a full version 1 block on disk.
	CipherBlockSize = BlockSize + BlockOverhead

	// PageSize is a version 2 slot: one page of the backing file.
	PageSize = 4096
	// slotMetaSize is the length field and the reserved bytes of a slot.
	slotMetaSize = 4
	// PageOverhead is what version 2 adds to every block.
	PageOverhead = slotMetaSize + NonceSize + TagSize
	// PageBlockSize is the plaintext of a version 2 block, but block 0.
	PageBlockSize = PageSize - PageOverhead
	// FirstBlockSize is the plaintext of version 2's block 0, which shares
	// page 0 with the header.
	FirstBlockSize = PageBlockSize - HeaderSize

	// Version is the content format version this package writes.
	Version = 2

	aadSize = HeaderSize + 8 + slotMetaSize
)

// magic is the first MagicSize-1 bytes of every encrypted file; the
// version byte follows.
var magic = [MagicSize - 1]byte{'M', 'T', 'D', 'E', 'N', 'C', 0}

// KeyID identifies a master key without revealing it:
// the first 8 bytes of HKDF-SHA256(master key, info = "mountd/v1/key-id").
type KeyID [8]byte

// FileID is the random per-file identifier stored in the header.
type FileID [16]byte

// Header is the parsed 32-byte header of an encrypted file.
type Header struct {
	Version uint8
	KeyID   KeyID
	FileID  FileID
}

// HasMagic reports whether b starts with the content-format magic of any
// version ("MTDENC\x00" followed by a version byte). Content that has the
// magic is treated as encrypted: it is never served raw.
func HasMagic(b []byte) bool {
	return len(b) >= MagicSize && bytes.Equal(b[:MagicSize-1], magic[:])
}

// ParseHeader parses the first HeaderSize bytes of b. It accepts versions 1
// and 2.
func ParseHeader(b []byte) (Header, error) {
	var h Header
	if len(b) < HeaderSize {
		return h, fmt.Errorf("%w: %d bytes, want %d", ErrBadHeader, len(b), HeaderSize)
	}
	if !HasMagic(b) {
		return h, fmt.Errorf("%w: no magic", ErrBadHeader)
	}
	if v := b[MagicSize-1]; v != 1 && v != 2 {
		return h, fmt.Errorf("%w: unsupported version %d", ErrBadHeader, v)
	}
	h.Version = b[MagicSize-1]
	copy(h.KeyID[:], b[8:16])
	copy(h.FileID[:], b[16:32])
	return h, nil
}

// Marshal returns the 32-byte encoding of h.
func (h Header) Marshal() [HeaderSize]byte {
	var b [HeaderSize]byte
	copy(b[:], magic[:])
	b[MagicSize-1] = h.Version
	copy(b[8:16], h.KeyID[:])
	copy(b[16:32], h.FileID[:])
	return b
}

// aad writes the associated data of block into dst and returns it: the
// header and the block number, and for version 2 the slot's length field.
func (h *Header) aad(dst *[aadSize]byte, block uint64, meta []byte) []byte {
	*(*[HeaderSize]byte)(dst[:HeaderSize]) = h.Marshal()
	binary.BigEndian.PutUint64(dst[HeaderSize:], block)
	if h.Version == 1 {
		return dst[:HeaderSize+8]
	}
	copy(dst[HeaderSize+8:], meta[:slotMetaSize])
	return dst[:]
}

// PlainSize returns the plaintext size of an encrypted file of cipherSize
// bytes, without the key. Every size from HeaderSize up maps to one: a
// size that no writer makes (a file cut short by a crash or by hand) maps
// to the part of the file that can still be read, as docs/FORMAT.md says;
// reads of a block that is not all there fail with a BlockError.
// Sizes below HeaderSize give ErrBadSize.
func (h Header) PlainSize(cipherSize int64) (int64, error) {
	if cipherSize < HeaderSize {
		return 0, fmt.Errorf("%w: %d bytes is shorter than the header", ErrBadSize, cipherSize)
	}
	p, _ := h.geom().plainSize(cipherSize)
	return p, nil
}

// CipherSize returns the size of the encrypted file of h's version that
// holds plainSize bytes of plaintext. An encrypted empty file is a bare
// header.
func (h Header) CipherSize(plainSize int64) int64 { return h.geom().cipherSize(plainSize) }

// CipherOffset returns where in the backing file the block holding
// plaintext offset off starts (for readahead hints).
func (h Header) CipherOffset(off int64) int64 {
	g := h.geom()
	return g.slotOff(g.blockOf(max(off, 0)))
}

// BlockOf returns the number of the block that holds plaintext offset
// off >= 0 (for a file of h's version).
func (h Header) BlockOf(off int64) int64 { return h.geom().blockOf(max(off, 0)) }

// BlockRange returns the plaintext offset of block i and the most
// plaintext it holds.
func (h Header) BlockRange(i int64) (off, n int64) {
	g := h.geom()
	return g.blockStart(i), g.blockLen(i)
}

// SizeDamaged reports whether cipherSize is a size no writer makes for
// h's version: the end of the file was cut by a crash or by hand.
func (h Header) SizeDamaged(cipherSize int64) bool {
	if cipherSize < HeaderSize {
		return true
	}
	_, damaged := h.geom().plainSize(cipherSize)
	return damaged
}

// geom is the block geometry of a format version.
type geom struct{ v uint8 }

func (h *Header) geom() geom { return geom{h.Version} }

// blockLen is the most plaintext block i holds.
func (g geom) blockLen(i int64) int64 {
	switch {
	case g.v == 1:
		return BlockSize
	case i == 0:
		return FirstBlockSize
	}
	return PageBlockSize
}

// blockStart is the plaintext offset of block i.
func (g geom) blockStart(i int64) int64 {
	switch {
	case g.v == 1:
		return i * BlockSize
	case i == 0:
		return 0
	}
	return FirstBlockSize + (i-1)*PageBlockSize
}

// blockOf is the block holding plaintext offset off >= 0.
func (g geom) blockOf(off int64) int64 {
	switch {
	case g.v == 1:
		return off / BlockSize
	case off < FirstBlockSize:
		return 0
	}
	return 1 + (off-FirstBlockSize)/PageBlockSize
}

// slotOff is the backing offset of block i.
func (g geom) slotOff(i int64) int64 {
	switch {
	case g.v == 1:
		return HeaderSize + i*CipherBlockSize
	case i == 0:
		return HeaderSize
	}
	return i * PageSize
}

// slotLen is the size of block i's slot on disk when the block holds n
// plaintext bytes: the sealed block in version 1, the whole slot in 2.
func (g geom) slotLen(i int64, n int64) int64 {
	switch {
	case g.v == 1:
		return n + BlockOverhead
	case i == 0:
		return PageSize - HeaderSize
	}
	return PageSize
}

// cipherSize is the backing size of a file holding p plaintext bytes.
func (g geom) cipherSize(p int64) int64 {
	if p <= 0 {
		return HeaderSize
	}
	last := g.blockOf(p - 1)
	r := p - g.blockStart(last)
	if g.v == 1 {
		return g.slotOff(last) + r + BlockOverhead
	}
	return (last+1)*PageSize + r
}

// plainSize is the plaintext size of a backing file of c >= HeaderSize
// bytes, and whether c is a size no writer makes (then the size of what
// can still be read: whole blocks only in version 1; in version 2 the
// last page read as a full block, its slot says how much it holds).
func (g geom) plainSize(c int64) (p int64, damaged bool) {
	if g.v == 1 {
		body := c - HeaderSize
		full, rem := body/CipherBlockSize, body%CipherBlockSize
		p = full * BlockSize
		if rem > BlockOverhead {
			p += rem - BlockOverhead
		}
		return p, rem != 0 && rem <= BlockOverhead
	}
	if c == HeaderSize {
		return 0, false
	}
	pages, t := c/PageSize, c%PageSize
	if pages == 0 {
		return 0, true // page 0 cut short
	}
	last := pages - 1
	r, l := t, g.blockLen(last)
	if t == 0 || t > l {
		r, damaged = l, true
	}
	return g.blockStart(last) + r, damaged
}

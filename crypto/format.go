package crypto

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Content format v1 (docs/FORMAT.md has the full specification).
//
//	header  = magic "MTDENC\x00" (7) | version 0x01 (1) | key-id (8) | file-id (16)
//	block i = nonce (12) | AES-256-GCM ciphertext of plaintext block i (1..4096) | tag (16)
//
// Every block but the last holds exactly BlockSize plaintext bytes. The
// per-file key is HKDF-SHA256(master key, info = "mountd/v1/content" | file-id)
// and the associated data of block i is header (32) | uint64 big-endian i.
const (
	KeySize         = 32
	MagicSize       = 8
	HeaderSize      = 32
	BlockSize       = 4096
	NonceSize       = 12
	TagSize         = 16
	BlockOverhead   = NonceSize + TagSize
	CipherBlockSize = BlockSize + BlockOverhead

	// Version is the content format version this package writes.
	Version = 1

	aadSize = HeaderSize + 8
)

// magic is the first MagicSize bytes of every encrypted file: a 7-byte tag
// followed by the version byte.
var magic = [MagicSize]byte{'M', 'T', 'D', 'E', 'N', 'C', 0, Version}

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
	return len(b) >= MagicSize && bytes.Equal(b[:MagicSize-1], magic[:MagicSize-1])
}

// ParseHeader parses the first HeaderSize bytes of b.
func ParseHeader(b []byte) (Header, error) {
	var h Header
	if len(b) < HeaderSize {
		return h, fmt.Errorf("%w: %d bytes, want %d", ErrBadHeader, len(b), HeaderSize)
	}
	if !HasMagic(b) {
		return h, fmt.Errorf("%w: no magic", ErrBadHeader)
	}
	if b[MagicSize-1] != Version {
		return h, fmt.Errorf("%w: unsupported version %d", ErrBadHeader, b[MagicSize-1])
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

// appendAAD writes the associated data of block into dst (len aadSize).
func (h *Header) aad(dst *[aadSize]byte, block uint64) {
	*(*[HeaderSize]byte)(dst[:HeaderSize]) = h.Marshal()
	binary.BigEndian.PutUint64(dst[HeaderSize:], block)
}

// CipherSize returns the size of the encrypted file that holds plainSize
// bytes of plaintext. An encrypted empty file is a bare header.
func CipherSize(plainSize int64) int64 {
	if plainSize <= 0 {
		return HeaderSize
	}
	blocks := (plainSize + BlockSize - 1) / BlockSize
	return HeaderSize + plainSize + blocks*BlockOverhead
}

// PlainSize returns the plaintext size of an encrypted file of cipherSize
// bytes, without needing the key. Sizes that no plaintext maps to (a
// truncated header, or a trailing fragment of BlockOverhead bytes or fewer)
// give ErrBadSize.
func PlainSize(cipherSize int64) (int64, error) {
	if cipherSize == 0 {
		return 0, nil
	}
	if cipherSize < HeaderSize {
		return 0, fmt.Errorf("%w: %d bytes is shorter than the header", ErrBadSize, cipherSize)
	}
	body := cipherSize - HeaderSize
	full, rem := body/CipherBlockSize, body%CipherBlockSize
	if rem != 0 && rem <= BlockOverhead {
		return 0, fmt.Errorf("%w: trailing fragment of %d bytes", ErrBadSize, rem)
	}
	plain := full * BlockSize
	if rem != 0 {
		plain += rem - BlockOverhead
	}
	return plain, nil
}

// blockOffset is the ciphertext offset of block i.
func blockOffset(i int64) int64 { return HeaderSize + i*CipherBlockSize }

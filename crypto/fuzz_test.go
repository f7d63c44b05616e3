package crypto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func FuzzParseHeader(f *testing.F) {
	h := Header{Version: Version, KeyID: KeyID{1}, FileID: FileID{2}}
	hb := h.Marshal()
	f.Add(hb[:])
	f.Add([]byte("MTDENC\x00\x02"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := ParseHeader(b)
		if err != nil {
			if !errors.Is(err, ErrBadHeader) {
				t.Fatalf("unexpected error type %v", err)
			}
			return
		}
		m := got.Marshal()
		if !bytes.Equal(m[:], b[:HeaderSize]) {
			t.Fatal("header does not round-trip")
		}
	})
}

// FuzzPlainSize: every backing size from the header up maps to a
// plaintext size; the sizes a writer makes round-trip, the others are
// flagged and never claim more than the backing file holds.
func FuzzPlainSize(f *testing.F) {
	f.Add(uint8(1), int64(0))
	f.Add(uint8(1), int64(HeaderSize+29))
	f.Add(uint8(2), int64(PageSize))
	f.Add(uint8(2), int64(3*PageSize+17))
	f.Fuzz(func(t *testing.T, v uint8, c int64) {
		h := Header{Version: 1 + v%2}
		p, err := h.PlainSize(c)
		if c < HeaderSize {
			if !errors.Is(err, ErrBadSize) {
				t.Fatalf("PlainSize(%d) = %d, %v; want ErrBadSize", c, p, err)
			}
			return
		}
		if err != nil || p < 0 {
			t.Fatalf("v%d PlainSize(%d) = %d, %v", h.Version, c, p, err)
		}
		canon := h.CipherSize(p)
		if damaged := h.SizeDamaged(c); damaged == (canon == c) {
			t.Fatalf("v%d PlainSize(%d) = %d (damaged %v), CipherSize back = %d", h.Version, c, p, damaged, canon)
		}
		// The slots of p's blocks lie within c.
		g := h.geom()
		if p > 0 {
			last := g.blockOf(p - 1)
			if end := g.slotOff(last) + g.slotLen(last, p-g.blockStart(last)); end > c {
				t.Fatalf("v%d PlainSize(%d) = %d: its last slot ends at %d", h.Version, c, p, end)
			}
		}
	})
}

func FuzzParseVerifier(f *testing.F) {
	raw, err := os.ReadFile("testdata/kat-verifier.bin")
	if err != nil {
		f.Fatal(err)
	}
	raw2, err := os.ReadFile("testdata/kat-verifier-v2.bin")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(raw)
	f.Add(raw[:50])
	f.Add(raw2)
	f.Add(raw2[:v2HeaderSize+pwSlotSize])
	f.Add(raw2[:v2HeaderSize+pwSlotSize+10])
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := ParseVerifier(b)
		if err != nil {
			if !errors.Is(err, ErrBadVerifier) {
				t.Fatalf("unexpected error type %v", err)
			}
			return
		}
		if err := v.Params.Validate(); err != nil {
			t.Fatalf("accepted invalid params: %v", err)
		}
		switch {
		case v.Version == 1 && !v.Recovery && len(b) == v1Size:
		case v.Version == 2 && !v.Recovery && len(b) == v2HeaderSize+pwSlotSize:
		case v.Version == 2 && v.Recovery && len(b) == maxVerifierLen:
		default:
			t.Fatalf("accepted version %d, recovery %v, %d bytes", v.Version, v.Recovery, len(b))
		}
		if _, ok := v.recoverySlot(); ok != v.Recovery {
			t.Fatal("recovery slot disagrees with Recovery")
		}
		if !bytes.Equal(v.Marshal(), b) {
			t.Fatal("verifier does not round-trip")
		}
	})
}

// FuzzDecode decrypts arbitrary file contents: no panic, and no data
// unless the content is the authentic file (or a block-aligned prefix of it).
func FuzzDecode(f *testing.F) {
	k := NewKeyring()
	if err := k.setKeyForTest(katKey()); err != nil {
		f.Fatal(err)
	}
	authentic := map[string][]byte{}
	for _, prefix := range katPrefix {
		for name := range katPlaintexts {
			enc, _ := os.ReadFile(filepath.Join("testdata", prefix+name+".enc"))
			plain, _ := os.ReadFile(filepath.Join("testdata", "kat-"+name+".plain"))
			authentic[string(enc)] = plain
			f.Add(enc)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 4*CipherBlockSize+HeaderSize {
			return // larger inputs only repeat what these cover, slower
		}
		bk := &memBacking{b: b}
		file, err := OpenFile(k, bk)
		if err != nil {
			return
		}
		var damaged int64
		verr := file.Verify(func(d Damage) error { damaged += d.Len; return nil })
		buf := make([]byte, len(b)+BlockSize)
		n, err := file.ReadAt(buf, 0)
		if verr != nil {
			// Unreadable as a whole (another master key): so is the data.
			if n != 0 {
				t.Fatalf("Verify failed (%v), ReadAt returned %d bytes", verr, n)
			}
			return
		}
		if err != nil && err != io.EOF {
			if n != 0 {
				t.Fatalf("%d bytes returned with error %v", n, err)
			}
			if damaged == 0 {
				t.Fatalf("ReadAt failed (%v), Verify found nothing", err)
			}
			return
		}
		if damaged != 0 {
			t.Fatalf("ReadAt read it all, Verify found %d bytes damaged", damaged)
		}
		if n == 0 {
			return
		}
		// Data came back: it must be a prefix of an authentic plaintext.
		for enc, plain := range authentic {
			if bytes.HasPrefix([]byte(enc), b[:HeaderSize]) && bytes.HasPrefix(plain, buf[:n]) {
				return
			}
		}
		t.Fatalf("garbage input decrypted to %d bytes", n)
	})
}

// memBacking is an in-memory Backing, so the fuzzer runs (and minimizes)
// without file I/O. Its WriteAt may fail (failAt), for tests.
type memBacking struct {
	mu     sync.Mutex
	b      []byte
	failAt int64 // WriteAt of a range holding this offset fails, if > 0
}

var errInjected = errors.New("injected write error")

func (m *memBacking) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *memBacking) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failAt > 0 && off <= m.failAt && m.failAt < off+int64(len(p)) {
		return 0, errInjected
	}
	if end := off + int64(len(p)); end > int64(len(m.b)) {
		m.b = append(m.b, make([]byte, end-int64(len(m.b)))...)
	}
	return copy(m.b[off:], p), nil
}

func (m *memBacking) Truncate(size int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if size > int64(len(m.b)) {
		m.b = append(m.b, make([]byte, size-int64(len(m.b)))...)
	}
	m.b = m.b[:size]
	return nil
}

func (m *memBacking) Stat() (os.FileInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return memInfo(len(m.b)), nil
}

type memInfo int64

func (s memInfo) Name() string       { return "mem" }
func (s memInfo) Size() int64        { return int64(s) }
func (s memInfo) Mode() os.FileMode  { return 0o600 }
func (s memInfo) ModTime() time.Time { return time.Time{} }
func (s memInfo) IsDir() bool        { return false }
func (s memInfo) Sys() any           { return nil }

// FuzzSlot: a version 2 slot of arbitrary bytes (its length field, the
// reserved bytes, nonce, ciphertext, tag) never panics and never
// authenticates; the authentic slot of a known-answer file does, and any
// change to it does not.
func FuzzSlot(f *testing.F) {
	k := NewKeyring()
	if err := k.setKeyForTest(katKey()); err != nil {
		f.Fatal(err)
	}
	enc, err := os.ReadFile(filepath.Join("testdata", "kat2-threepart.enc"))
	if err != nil {
		f.Fatal(err)
	}
	h, err := ParseHeader(enc)
	if err != nil {
		f.Fatal(err)
	}
	file := &File{k: k, h: h}
	authentic := [][]byte{enc[HeaderSize:PageSize], enc[PageSize : 2*PageSize], enc[2*PageSize : 3*PageSize]}
	for i, a := range authentic {
		f.Add(uint8(i), a)
	}
	f.Add(uint8(3), make([]byte, PageSize))
	f.Fuzz(func(t *testing.T, block uint8, slot []byte) {
		i := int64(block % 4)
		want := PageSize - HeaderSize
		if i > 0 {
			want = PageSize
		}
		if len(slot) != want {
			return
		}
		k.mu.RLock()
		defer k.mu.RUnlock()
		aead, err := k.fileAEAD(&h)
		if err != nil {
			t.Fatal(err)
		}
		var aad [aadSize]byte
		pt, err := file.openSlot(aead, &aad, i, append([]byte(nil), slot...), nil)
		if i < 3 && bytes.Equal(slot, authentic[i]) {
			if err != nil {
				t.Fatalf("authentic slot %d: %v", i, err)
			}
			return
		}
		if err == nil {
			// Only an untouched authentic slot opens (the zero padding
			// past the tag is not authenticated).
			n := int(binary.BigEndian.Uint16(slot))
			if i >= 3 || !bytes.Equal(slot[:PageOverhead+n], authentic[i][:PageOverhead+n]) {
				t.Fatalf("block %d: forged slot opened to %d bytes", i, len(pt))
			}
		}
	})
}

package crypto

import (
	"errors"
	"testing"
)

var (
	hdrV1 = Header{Version: 1}
	hdrV2 = Header{Version: 2}
)

func TestSizeMappingV1(t *testing.T) {
	for _, tc := range []struct{ plain, cipher int64 }{
		{0, HeaderSize},
		{1, HeaderSize + 1 + BlockOverhead},
		{4095, HeaderSize + 4095 + BlockOverhead},
		{4096, HeaderSize + CipherBlockSize},
		{4097, HeaderSize + CipherBlockSize + 1 + BlockOverhead},
		{3 << 20, HeaderSize + 768*CipherBlockSize},
	} {
		if got := hdrV1.CipherSize(tc.plain); got != tc.cipher {
			t.Errorf("CipherSize(%d) = %d, want %d", tc.plain, got, tc.cipher)
		}
		if got, err := hdrV1.PlainSize(tc.cipher); err != nil || got != tc.plain || hdrV1.SizeDamaged(tc.cipher) {
			t.Errorf("PlainSize(%d) = %d, %v; want %d", tc.cipher, got, err, tc.plain)
		}
	}
	for p := int64(0); p < 3*BlockSize+10; p++ {
		if got, err := hdrV1.PlainSize(hdrV1.CipherSize(p)); err != nil || got != p {
			t.Fatalf("round trip %d: %d, %v", p, got, err)
		}
	}
}

func TestSizeMappingV2(t *testing.T) {
	for _, tc := range []struct{ plain, cipher int64 }{
		{0, HeaderSize},
		{1, PageSize + 1},
		{FirstBlockSize, PageSize + FirstBlockSize},
		{FirstBlockSize + 1, 2*PageSize + 1},
		{FirstBlockSize + PageBlockSize, 2*PageSize + PageBlockSize},
		{FirstBlockSize + 2*PageBlockSize + 7, 4*PageSize + 7},
	} {
		if got := hdrV2.CipherSize(tc.plain); got != tc.cipher {
			t.Errorf("CipherSize(%d) = %d, want %d", tc.plain, got, tc.cipher)
		}
		if got, err := hdrV2.PlainSize(tc.cipher); err != nil || got != tc.plain || hdrV2.SizeDamaged(tc.cipher) {
			t.Errorf("PlainSize(%d) = %d, %v; want %d", tc.cipher, got, err, tc.plain)
		}
	}
	g := hdrV2.geom()
	for p := int64(0); p < 4*PageSize+10; p++ {
		c := hdrV2.CipherSize(p)
		if got, err := hdrV2.PlainSize(c); err != nil || got != p {
			t.Fatalf("round trip %d: %d, %v", p, got, err)
		}
		if p > 0 {
			// The last slot ends on a page boundary, the size r past it.
			i := g.blockOf(p - 1)
			if c-(i+1)*PageSize != p-g.blockStart(i) {
				t.Fatalf("size %d: trailer %d, last block holds %d", c, c-(i+1)*PageSize, p-g.blockStart(i))
			}
			if g.blockStart(i) > p-1 || p-1 >= g.blockStart(i)+g.blockLen(i) {
				t.Fatalf("blockOf(%d) = %d, which spans [%d, +%d)", p-1, i, g.blockStart(i), g.blockLen(i))
			}
		}
	}
	// Slots: block 0 after the header in page 0, block i in page i.
	if g.slotOff(0) != HeaderSize || g.slotLen(0, 1) != PageSize-HeaderSize || g.slotOff(1) != PageSize || g.slotLen(5, 1) != PageSize {
		t.Fatal("v2 slot geometry")
	}
}

// TestPlainSizeOfCutFiles: a size no writer makes maps to what can still
// be read, and says so.
func TestPlainSizeOfCutFiles(t *testing.T) {
	for _, tc := range []struct {
		h           Header
		cipher      int64
		plain       int64
		damaged     bool
		description string
	}{
		{hdrV1, HeaderSize + 1, 0, true, "v1: a fragment of the first block"},
		{hdrV1, HeaderSize + BlockOverhead, 0, true, "v1: nonce and tag, no byte"},
		{hdrV1, HeaderSize + CipherBlockSize + 4, BlockSize, true, "v1: one block and 4 bytes"},
		{hdrV1, HeaderSize + 2*CipherBlockSize + BlockOverhead + 1, 2*BlockSize + 1, false, "v1: two blocks and one byte"},
		{hdrV2, HeaderSize + 1, 0, true, "v2: page 0 cut"},
		{hdrV2, PageSize, FirstBlockSize, true, "v2: one page, no size past it"},
		{hdrV2, 3 * PageSize, FirstBlockSize + 2*PageBlockSize, true, "v2: three pages, no size past them"},
		{hdrV2, 2*PageSize + PageBlockSize + 1, FirstBlockSize + PageBlockSize, true, "v2: more past the last page than a block holds"},
		{hdrV2, PageSize + FirstBlockSize + 1, FirstBlockSize, true, "v2: more past page 0 than block 0 holds"},
	} {
		got, err := tc.h.PlainSize(tc.cipher)
		if err != nil || got != tc.plain || tc.h.SizeDamaged(tc.cipher) != tc.damaged {
			t.Errorf("%s: PlainSize(%d) = %d, %v, damaged %v; want %d, damaged %v", tc.description, tc.cipher, got, err, tc.h.SizeDamaged(tc.cipher), tc.plain, tc.damaged)
		}
	}
	for _, h := range []Header{hdrV1, hdrV2} {
		for _, c := range []int64{0, 1, HeaderSize - 1} {
			if _, err := h.PlainSize(c); !errors.Is(err, ErrBadSize) {
				t.Errorf("v%d PlainSize(%d): err = %v, want ErrBadSize", h.Version, c, err)
			}
		}
	}
}

func TestHeaderRoundTrip(t *testing.T) {
	for _, v := range []uint8{1, 2} {
		h := Header{Version: v, KeyID: KeyID{1, 2, 3}, FileID: FileID{9, 8, 7}}
		b := h.Marshal()
		if !HasMagic(b[:]) {
			t.Fatal("marshalled header has no magic")
		}
		got, err := ParseHeader(b[:])
		if err != nil || got != h {
			t.Fatalf("ParseHeader = %+v, %v", got, err)
		}
	}
	h := Header{Version: Version, KeyID: KeyID{1, 2, 3}, FileID: FileID{9, 8, 7}}
	b := h.Marshal()
	for _, v := range []byte{0, 3, 0xff} {
		b[MagicSize-1] = v
		if _, err := ParseHeader(b[:]); !errors.Is(err, ErrBadHeader) {
			t.Errorf("version %d: err = %v", v, err)
		}
		if !HasMagic(b[:]) {
			t.Error("HasMagic must accept any version so unknown formats are never served raw")
		}
	}
	if _, err := ParseHeader(b[:20]); !errors.Is(err, ErrBadHeader) {
		t.Errorf("short: err = %v", err)
	}
	if _, err := ParseHeader(make([]byte, HeaderSize)); !errors.Is(err, ErrBadHeader) {
		t.Errorf("zeros: err = %v", err)
	}
}

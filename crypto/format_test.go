package crypto

import (
	"errors"
	"testing"
)

func TestSizeMapping(t *testing.T) {
	for _, tc := range []struct{ plain, cipher int64 }{
		{0, HeaderSize},
		{1, HeaderSize + 1 + BlockOverhead},
		{4095, HeaderSize + 4095 + BlockOverhead},
		{4096, HeaderSize + CipherBlockSize},
		{4097, HeaderSize + CipherBlockSize + 1 + BlockOverhead},
		{3 << 20, HeaderSize + 768*CipherBlockSize},
	} {
		if got := CipherSize(tc.plain); got != tc.cipher {
			t.Errorf("CipherSize(%d) = %d, want %d", tc.plain, got, tc.cipher)
		}
		if got, err := PlainSize(tc.cipher); err != nil || got != tc.plain {
			t.Errorf("PlainSize(%d) = %d, %v; want %d", tc.cipher, got, err, tc.plain)
		}
	}
	if got, err := PlainSize(0); got != 0 || err != nil {
		t.Errorf("PlainSize(0) = %d, %v", got, err)
	}
	// Every plaintext size round-trips across the first few blocks.
	for p := int64(0); p < 3*BlockSize+10; p++ {
		if got, err := PlainSize(CipherSize(p)); err != nil || got != p {
			t.Fatalf("round trip %d: %d, %v", p, got, err)
		}
	}
}

func TestPlainSizeRejectsImpossible(t *testing.T) {
	bad := []int64{1, 31, HeaderSize + 1, HeaderSize + BlockOverhead, HeaderSize + CipherBlockSize + BlockOverhead}
	for _, c := range bad {
		if _, err := PlainSize(c); !errors.Is(err, ErrBadSize) {
			t.Errorf("PlainSize(%d): err = %v, want ErrBadSize", c, err)
		}
	}
}

func TestHeaderRoundTrip(t *testing.T) {
	h := Header{Version: Version, KeyID: KeyID{1, 2, 3}, FileID: FileID{9, 8, 7}}
	b := h.Marshal()
	if !HasMagic(b[:]) {
		t.Fatal("marshalled header has no magic")
	}
	got, err := ParseHeader(b[:])
	if err != nil || got != h {
		t.Fatalf("ParseHeader = %+v, %v", got, err)
	}
	b[MagicSize-1] = 2
	if _, err := ParseHeader(b[:]); !errors.Is(err, ErrBadHeader) {
		t.Errorf("version 2: err = %v", err)
	}
	if !HasMagic(b[:]) {
		t.Error("HasMagic must accept any version so unknown formats are never served raw")
	}
	if _, err := ParseHeader(b[:20]); !errors.Is(err, ErrBadHeader) {
		t.Errorf("short: err = %v", err)
	}
	if _, err := ParseHeader(make([]byte, HeaderSize)); !errors.Is(err, ErrBadHeader) {
		t.Errorf("zeros: err = %v", err)
	}
}

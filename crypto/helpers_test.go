package crypto

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
)

// testKDF is the cheapest parameter set Validate accepts.
var testKDF = KDFParams{Time: 2, MemoryKiB: minMemoryKiB, Threads: 1}

func testKey(seed byte) []byte {
	return bytes.Repeat([]byte{seed}, KeySize)
}

func newTestKeyring(t testing.TB, seed byte) *Keyring {
	t.Helper()
	k := NewKeyring()
	if err := k.setKeyForTest(testKey(seed)); err != nil {
		t.Fatal(err)
	}
	return k
}

// newTestFile creates an encrypted file in a temp dir.
func newTestFile(t testing.TB, k *Keyring) (*File, *os.File) {
	t.Helper()
	b, err := os.OpenFile(filepath.Join(t.TempDir(), "f.bin"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	f, err := CreateFile(k, b)
	if err != nil {
		t.Fatal(err)
	}
	return f, b
}

// newV1File writes plain as a version 1 file (as the previous release of
// this package made them) and opens it. Writes keep a non-empty version 1
// file in version 1.
func newV1File(t testing.TB, k *Keyring, plain []byte) (*File, *os.File) {
	t.Helper()
	b, err := os.OpenFile(filepath.Join(t.TempDir(), "v1.bin"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	if _, err := b.Write(v1Bytes(t, k, plain)); err != nil {
		t.Fatal(err)
	}
	f, err := OpenFile(k, b)
	if err != nil {
		t.Fatal(err)
	}
	return f, b
}

// v1Bytes encodes plain as a version 1 file under k's key.
func v1Bytes(t testing.TB, k *Keyring, plain []byte) []byte {
	t.Helper()
	h, err := k.NewHeader()
	if err != nil {
		t.Fatal(err)
	}
	h.Version = 1
	k.mu.RLock()
	aead, err := k.fileAEAD(&h)
	k.mu.RUnlock()
	if err != nil {
		t.Fatal(err)
	}
	hb := h.Marshal()
	out := append([]byte(nil), hb[:]...)
	var aad [aadSize]byte
	for i := 0; i*BlockSize < len(plain); i++ {
		nonce := make([]byte, NonceSize)
		rand.Read(nonce)
		out = append(out, nonce...)
		out = aead.Seal(out, nonce, plain[i*BlockSize:min(len(plain), (i+1)*BlockSize)], h.aad(&aad, uint64(i), nil))
	}
	return out
}

// newFileV returns a file of format version v holding initial (which must
// not be empty for version 1).
func newFileV(t testing.TB, k *Keyring, v uint8, initial []byte) (*File, *os.File) {
	t.Helper()
	if v == 1 {
		return newV1File(t, k, initial)
	}
	f, b := newTestFile(t, k)
	if len(initial) > 0 {
		if _, err := f.WriteAt(initial, 0); err != nil {
			t.Fatal(err)
		}
	}
	return f, b
}

// slotOff is where block i of f starts in the backing file.
func slotOff(f *File, i int64) int64 { return f.h.geom().slotOff(i) }

// blockStart is the plaintext offset of block i of f.
func blockStart(f *File, i int64) int64 { return f.h.geom().blockStart(i) }

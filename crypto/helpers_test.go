package crypto

import (
	"bytes"
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

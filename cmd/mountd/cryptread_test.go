package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/mountd/mountd/crypto"
)

// bigEncrypted writes an encrypted file of n plaintext bytes with the
// given blocks damaged, and returns it open for reading with its
// plaintext.
func bigEncrypted(t *testing.T, n int, damage ...int) (*cryptFile, []byte) {
	t.Helper()
	data, _ := initData(t, "pw")
	kr := keyring(t, data, "pw")
	plain := randomBytes(n)
	writeEncrypted(t, kr, data, "big.bin", plain)
	p := filepath.Join(data, "big.bin")
	b, _ := os.ReadFile(p)
	for _, blk := range damage {
		b[blockAt(blk)+40] ^= 0x80
	}
	os.WriteFile(p, b, 0o600)
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	cf, err := openCrypt(kr, f, int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	return cf, plain
}

// TestStreamZeroFills: export's path over a file of several buffers
// writes every authentic byte in order and zeros for each bad block
// (at the start, at buffer edges, inside), through the pipe writer, and
// reports the bad blocks in order.
func TestStreamZeroFills(t *testing.T) {
	const bufBlocks = exportBuf / 2 / crypto.BlockSize
	bad := []int{0, bufBlocks - 1, bufBlocks, 2*bufBlocks + 3, 3*bufBlocks + 1}
	cf, plain := bigEncrypted(t, 3*exportBuf/2+5*crypto.BlockSize+77, bad...)
	var out bytes.Buffer
	buf := make([]byte, exportBuf)
	half := len(buf) / 2
	pw := newPipeWriter(&out, [][]byte{buf[:half:half], buf[half:]})
	var got []int64
	err := cf.stream(pw.get, pw.emit, func(b badBlock) bool { got = append(got, b.Block); return true })
	if cerr := pw.close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(plain)
	for _, b := range bad {
		clear(want[blockStart(int64(b)):min(blockStart(int64(b)+1), int64(len(want)))])
	}
	if !bytes.Equal(out.Bytes(), want) {
		t.Fatalf("%d bytes out, not the plaintext with the bad blocks zeroed", out.Len())
	}
	if len(got) != len(bad) {
		t.Fatalf("bad blocks %v, want %v", got, bad)
	}
	for i := range bad {
		if got[i] != int64(bad[i]) {
			t.Fatalf("bad blocks %v, want %v", got, bad)
		}
	}
	// fsck's path stops at the first one.
	var first []int64
	if err := cf.stream(func() []byte { return buf }, nil, func(b badBlock) bool { first = append(first, b.Block); return false }); err != nil || len(first) != 1 || first[0] != 0 {
		t.Fatalf("fsck path: %v %v", first, err)
	}
}

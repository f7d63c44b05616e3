package fs

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/mountd/mountd/crypto"
	"github.com/mountd/mountd/logkey"
)

// waitIdle waits until no file is open through the mount, so the next
// open reads the backing file afresh.
func (e *testEnv) waitIdle() {
	e.t.Helper()
	waitFor(e.t, 10*time.Second, "open files to be released", func() bool {
		return len(e.root.files.states()) == 0
	})
}

// patchBacking overwrites bytes of a backing file directly.
func (e *testEnv) patchBacking(name string, off int64, b []byte) {
	e.t.Helper()
	f, err := os.OpenFile(e.b(name), os.O_RDWR, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		e.t.Fatal(err)
	}
}

// blockOff is where block i of the encrypted file raw starts on disk.
func blockOff(raw []byte, i int64) int64 {
	h, err := crypto.ParseHeader(raw)
	if err != nil {
		panic(err)
	}
	start, _ := h.BlockRange(i)
	return h.CipherOffset(start)
}

// TestTamper: modified ciphertext reads as EIO (never garbage), is logged
// once per inode with its path and block, and the daemon keeps serving.
func TestTamper(t *testing.T) {
	e := newEnv(t, envOpts{allowWarn: true})
	data := markerData(3*crypto.BlockSize + 500)
	for _, n := range []string{"flip.bin", "swap.bin", "fileid.bin", "keyid.bin", "short.bin", "zero.bin", "ok.bin"} {
		mustWrite(t, e.m(n), data)
	}
	e.waitIdle()

	// A flipped bit in block 1.
	raw := e.backingBytes("flip.bin")
	e.patchBacking("flip.bin", blockOff(raw, 1)+100, []byte{raw[blockOff(raw, 1)+100] ^ 1})
	f, err := os.Open(e.m("flip.bin"))
	if err != nil {
		t.Fatal(err)
	}
	h, _ := crypto.ParseHeader(raw)
	_, n0 := h.BlockRange(0)
	buf := make([]byte, n0)
	if _, err := f.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, data[:n0]) {
		t.Errorf("block 0 of flip.bin: %v", err)
	}
	for i := 0; i < 3; i++ {
		_, err = f.ReadAt(buf, crypto.BlockSize+10)
		wantErrno(t, err, syscall.EIO, "read tampered block 1")
	}
	f.Close()
	_, err = os.ReadFile(e.m("flip.bin"))
	wantErrno(t, err, syscall.EIO, "read whole tampered file")

	// Blocks 0 and 1 swapped.
	raw = e.backingBytes("swap.bin")
	b1 := append([]byte(nil), raw[blockOff(raw, 1):blockOff(raw, 2)]...)
	b2 := append([]byte(nil), raw[blockOff(raw, 2):blockOff(raw, 3)]...)
	e.patchBacking("swap.bin", blockOff(raw, 1), b2)
	e.patchBacking("swap.bin", blockOff(raw, 2), b1)
	_, err = os.ReadFile(e.m("swap.bin"))
	wantErrno(t, err, syscall.EIO, "read swapped blocks")

	// The file-id in the header (bound into every block).
	raw = e.backingBytes("fileid.bin")
	e.patchBacking("fileid.bin", 20, []byte{raw[20] ^ 0x80})
	_, err = os.ReadFile(e.m("fileid.bin"))
	wantErrno(t, err, syscall.EIO, "read with a changed file-id")

	// The key-id: the file now claims another master key.
	raw = e.backingBytes("keyid.bin")
	e.patchBacking("keyid.bin", 10, []byte{raw[10] ^ 0x01})
	_, err = os.Open(e.m("keyid.bin"))
	wantErrno(t, err, syscall.EIO, "open with a changed key-id")

	// An impossible size (the file cut at the end of its last page, as
	// a crash can leave it): it opens, every whole block reads back, and
	// what the size claims past them is EIO.
	raw = e.backingBytes("short.bin")
	if err := os.Truncate(e.b("short.bin"), int64(len(raw))/4096*4096); err != nil {
		t.Fatal(err)
	}
	f, err = os.Open(e.m("short.bin"))
	if err != nil {
		t.Fatalf("open a file with a cut end: %v", err)
	}
	whole := make([]byte, len(data))
	if _, err := f.ReadAt(whole, 0); err != nil || !bytes.Equal(whole, data) {
		t.Errorf("read the whole blocks of a file with a cut end: %v", err)
	}
	if fi, _ := f.Stat(); fi.Size() <= int64(len(data)) {
		t.Errorf("stat size %d: the documented size of a cut file is its last block in full", fi.Size())
	}
	_, err = f.ReadAt(buf[:10], int64(len(data)))
	wantErrno(t, err, syscall.EIO, "read past what the last block holds")
	f.Close()

	// A block of zeros is not a hole.
	raw = e.backingBytes("zero.bin")
	e.patchBacking("zero.bin", blockOff(raw, 2), make([]byte, blockOff(raw, 3)-blockOff(raw, 2)))
	_, err = os.ReadFile(e.m("zero.bin"))
	wantErrno(t, err, syscall.EIO, "read a zeroed block")

	// The daemon keeps serving everything else.
	if got := mustRead(t, e.m("ok.bin")); !bytes.Equal(got, data) {
		t.Error("ok.bin differs after tamper errors")
	}
	mustWrite(t, e.m("new.bin"), data)
	if got := mustRead(t, e.m("new.bin")); !bytes.Equal(got, data) {
		t.Error("new.bin differs after tamper errors")
	}

	// Logged once per inode, naming path and block.
	var flips int
	for _, w := range e.warnings() {
		if w.Data[logkey.Path] == "flip.bin" {
			flips++
			if w.Data[fieldBlock] != int64(1) {
				t.Errorf("flip.bin warning names block %v, want 1", w.Data[fieldBlock])
			}
		}
		for _, v := range w.Data {
			if s, ok := v.(string); ok && bytes.Contains([]byte(s), marker) {
				t.Error("plaintext in a log line")
			}
		}
	}
	if flips != 1 {
		t.Errorf("%d warnings for flip.bin, want 1", flips)
	}
	for _, n := range []string{"swap.bin", "fileid.bin", "keyid.bin", "short.bin", "zero.bin"} {
		found := false
		for _, w := range e.warnings() {
			found = found || w.Data[logkey.Path] == n
		}
		if !found {
			t.Errorf("no warning for %s", n)
		}
	}
}

// TestForeignContent: files with the magic that are not ours are never
// served raw: another master key, an unknown version, a truncated header.
func TestForeignContent(t *testing.T) {
	e := newEnv(t, envOpts{allowWarn: true})

	// Encrypted under another master key.
	other := crypto.NewKeyring()
	if err := other.Create(filepath.Join(t.TempDir(), "v.bin"), testPassword, testKDF); err != nil {
		t.Fatal(err)
	}
	bf, err := os.OpenFile(e.b("foreign.bin"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := crypto.CreateFile(other, bf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cf.WriteAt(marker, 0); err != nil {
		t.Fatal(err)
	}
	bf.Close()
	_, err = os.ReadFile(e.m("foreign.bin"))
	wantErrno(t, err, syscall.EIO, "read a file of another master key")
	if fi, err := os.Stat(e.m("foreign.bin")); err != nil || fi.Size() != int64(len(marker)) {
		t.Errorf("stat foreign.bin: %v, size %d", err, fi.Size())
	}

	// The magic with an unknown version, and a truncated header: plain
	// files by their names, but the content carries the magic.
	hdr := []byte("MTDENC\x00\x09")
	mustWrite(t, e.b("future.txt"), append(hdr, bytes.Repeat([]byte{1}, 100)...))
	_, err = os.ReadFile(e.m("future.txt"))
	wantErrno(t, err, syscall.EIO, "read an unknown version")
	mustWrite(t, e.b("stub.txt"), []byte("MTDENC\x00\x01abc"))
	_, err = os.ReadFile(e.m("stub.txt"))
	wantErrno(t, err, syscall.EIO, "read a truncated header")

	// Logged out, the foreign file is EACCES like any encrypted file.
	e.logout()
	_, err = os.ReadFile(e.m("foreign.bin"))
	wantErrno(t, err, syscall.EACCES, "read foreign file logged out")
}

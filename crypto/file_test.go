package crypto

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

func readAll(t *testing.T, f *File) []byte {
	t.Helper()
	size, err := f.Size()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, size)
	n, err := f.ReadAt(buf, 0)
	if err != nil && !(err == io.EOF && n == int(size)) {
		t.Fatalf("ReadAt: %d, %v", n, err)
	}
	return buf[:n]
}

// TestModel runs thousands of random writes, truncates and reads against
// an in-memory model, on a real file, straddling block boundaries.
func TestModel(t *testing.T) {
	k := newTestKeyring(t, 1)
	f, b := newTestFile(t, k)
	rng := rand.New(rand.NewPCG(1, 2))
	var model []byte
	pool := make([]byte, 2*chunkPlain+4*BlockSize)
	rand.NewChaCha8([32]byte{1}).Read(pool)
	offset := func() int64 {
		// Favour offsets near block and chunk boundaries.
		switch rng.IntN(4) {
		case 0:
			return int64(rng.IntN(3*chunkPlain + BlockSize))
		case 1:
			return int64(rng.IntN(12))*BlockSize + int64(rng.IntN(5)) - 2
		default:
			return int64(rng.IntN(len(model) + 2*BlockSize + 1))
		}
	}
	length := func() int {
		switch rng.IntN(4) {
		case 0:
			return rng.IntN(chunkPlain + 3*BlockSize)
		case 1:
			return BlockSize + rng.IntN(5) - 2
		default:
			return rng.IntN(3 * BlockSize)
		}
	}
	ops := 3000
	if testing.Short() {
		ops = 500
	}
	for i := 0; i < ops; i++ {
		switch op := rng.IntN(10); {
		case op < 5: // write
			off, n := max(offset(), 0), length()
			start := rng.IntN(len(pool) - n)
			data := pool[start : start+n]
			if _, err := f.WriteAt(data, off); err != nil {
				t.Fatalf("op %d WriteAt(%d, %d): %v", i, off, n, err)
			}
			if n > 0 {
				if end := off + int64(n); end > int64(len(model)) {
					model = append(model, make([]byte, end-int64(len(model)))...)
				}
				copy(model[off:], data)
			}
		case op < 7: // truncate
			size := max(offset(), 0)
			if err := f.Truncate(size); err != nil {
				t.Fatalf("op %d Truncate(%d): %v", i, size, err)
			}
			if size > int64(len(model)) {
				model = append(model, make([]byte, size-int64(len(model)))...)
			}
			model = model[:size]
		default: // read
			off, n := max(offset(), 0), length()
			got := make([]byte, n)
			m, err := f.ReadAt(got, off)
			want := []byte{}
			if off < int64(len(model)) {
				want = model[off:min(off+int64(n), int64(len(model)))]
			}
			if m != len(want) || !bytes.Equal(got[:m], want) {
				t.Fatalf("op %d ReadAt(%d, %d) = %d bytes, %v; want %d bytes (mismatch)", i, off, n, m, err, len(want))
			}
			if m < n && err != io.EOF {
				t.Fatalf("op %d short read without io.EOF: %v", i, err)
			}
		}
		if i%100 == 0 {
			fi, _ := b.Stat()
			if fi.Size() != CipherSize(int64(len(model))) {
				t.Fatalf("op %d: backing size %d, want %d", i, fi.Size(), CipherSize(int64(len(model))))
			}
		}
	}
	if got := readAll(t, f); !bytes.Equal(got, model) {
		t.Fatal("final content differs from model")
	}
	// Reopening from the backing handle gives the same content.
	f2, err := OpenFile(k, b)
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, f2); !bytes.Equal(got, model) {
		t.Fatal("reopened content differs from model")
	}
}

func TestMarkerNeverOnDisk(t *testing.T) {
	k := newTestKeyring(t, 2)
	f, b := newTestFile(t, k)
	marker := bytes.Repeat([]byte("SECRET-MARKER-"), 1000)
	if _, err := f.WriteAt(marker, 100); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(b.Name())
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte("SECRET-MARKER")) {
		t.Fatal("plaintext marker found in the backing file")
	}
}

func TestExtendStoresRealZeroBlocks(t *testing.T) {
	k := newTestKeyring(t, 3)
	f, b := newTestFile(t, k)
	if _, err := f.WriteAt([]byte("end"), 5*BlockSize+7); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(9 * BlockSize); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(b.Name())
	for i := int64(0); i < 9; i++ {
		blk := raw[blockOffset(i):blockOffset(i+1)]
		if bytes.Equal(blk, make([]byte, len(blk))) {
			t.Fatalf("block %d is an unencrypted hole", i)
		}
	}
	got := readAll(t, f)
	want := make([]byte, 9*BlockSize)
	copy(want[5*BlockSize+7:], "end")
	if !bytes.Equal(got, want) {
		t.Fatal("content mismatch after extension")
	}
	// Zeroing a block on disk (a hole punched behind our back) is an
	// authentication failure, never zeros.
	if _, err := b.WriteAt(make([]byte, CipherBlockSize), blockOffset(2)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadAt(make([]byte, 10), 2*BlockSize); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("zeroed block: err = %v, want ErrUnauthenticated", err)
	}
}

func TestHeaderOnlyFileGetsNewFileID(t *testing.T) {
	k := newTestKeyring(t, 4)
	f, b := newTestFile(t, k)
	before := f.Header().FileID
	if _, err := f.WriteAt([]byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	if f.Header().FileID == before {
		t.Fatal("file-id unchanged after first write into a header-only file")
	}
	f2, err := OpenFile(k, b)
	if err != nil || f2.Header() != f.Header() {
		t.Fatalf("header on disk not updated: %v", err)
	}
	// Truncating to zero keeps a header; the next write re-heads again.
	if err := f.Truncate(0); err != nil {
		t.Fatal(err)
	}
	if fi, _ := b.Stat(); fi.Size() != HeaderSize {
		t.Fatalf("truncate(0) left %d bytes", fi.Size())
	}
}

func TestLockedAfterClear(t *testing.T) {
	k := newTestKeyring(t, 5)
	f, b := newTestFile(t, k)
	if _, err := f.WriteAt([]byte("hello"), 0); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(b.Name())
	k.Clear()
	if _, err := f.ReadAt(make([]byte, 5), 0); !errors.Is(err, ErrLocked) {
		t.Errorf("ReadAt after Clear: %v", err)
	}
	if _, err := f.WriteAt([]byte("x"), 0); !errors.Is(err, ErrLocked) {
		t.Errorf("WriteAt after Clear: %v", err)
	}
	if err := f.Truncate(1); !errors.Is(err, ErrLocked) {
		t.Errorf("Truncate after Clear: %v", err)
	}
	if after, _ := os.ReadFile(b.Name()); !bytes.Equal(before, after) {
		t.Error("backing file changed while locked")
	}
	// Size works without the key.
	if n, err := f.Size(); n != 5 || err != nil {
		t.Errorf("Size while locked = %d, %v", n, err)
	}
	if err := k.setKeyForTest(testKey(5)); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, f); string(got) != "hello" {
		t.Errorf("after re-login: %q", got)
	}
}

func TestWrongKey(t *testing.T) {
	k := newTestKeyring(t, 6)
	f, b := newTestFile(t, k)
	if _, err := f.WriteAt([]byte("data"), 0); err != nil {
		t.Fatal(err)
	}
	other := newTestKeyring(t, 7)
	g, err := OpenFile(other, b)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.ReadAt(make([]byte, 4), 0); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("err = %v, want ErrWrongKey", err)
	}
}

// TestTamper checks that every kind of tampering gives an error and never
// data.
func TestTamper(t *testing.T) {
	k := newTestKeyring(t, 8)
	make3 := func(t *testing.T) (*File, *os.File, []byte) {
		f, b := newTestFile(t, k)
		data := bytes.Repeat([]byte("0123456789abcdef"), 3*BlockSize/16)
		if _, err := f.WriteAt(data, 0); err != nil {
			t.Fatal(err)
		}
		return f, b, data
	}
	flip := func(off int64) func(t *testing.T, b *os.File) {
		return func(t *testing.T, b *os.File) {
			var c [1]byte
			b.ReadAt(c[:], off)
			c[0] ^= 0x01
			b.WriteAt(c[:], off)
		}
	}
	cases := []struct {
		name   string
		tamper func(t *testing.T, b *os.File)
		want   error
	}{
		{"header file-id bit", flip(20), ErrUnauthenticated},
		{"header key-id bit", flip(9), ErrWrongKey},
		{"nonce bit", flip(blockOffset(1) + 3), ErrUnauthenticated},
		{"ciphertext bit", flip(blockOffset(1) + NonceSize + 100), ErrUnauthenticated},
		{"tag bit", flip(blockOffset(2) - 1), ErrUnauthenticated},
		{"blocks swapped", func(t *testing.T, b *os.File) {
			b0, b1 := make([]byte, CipherBlockSize), make([]byte, CipherBlockSize)
			b.ReadAt(b0, blockOffset(0))
			b.ReadAt(b1, blockOffset(1))
			b.WriteAt(b1, blockOffset(0))
			b.WriteAt(b0, blockOffset(1))
		}, ErrUnauthenticated},
		{"block from another file", func(t *testing.T, b *os.File) {
			_, other, _ := make3(t)
			blk := make([]byte, CipherBlockSize)
			other.ReadAt(blk, blockOffset(1))
			b.WriteAt(blk, blockOffset(1))
		}, ErrUnauthenticated},
		{"header from another file", func(t *testing.T, b *os.File) {
			_, other, _ := make3(t)
			h := make([]byte, HeaderSize)
			other.ReadAt(h, 0)
			b.WriteAt(h, 0)
		}, ErrUnauthenticated},
		{"truncated mid-tag", func(t *testing.T, b *os.File) {
			b.Truncate(blockOffset(2) + 10)
		}, ErrBadSize},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, b, _ := make3(t)
			tc.tamper(t, b)
			g, err := OpenFile(k, b)
			if err != nil {
				if !errors.Is(err, tc.want) {
					t.Fatalf("OpenFile: %v, want %v", err, tc.want)
				}
				return
			}
			buf := make([]byte, 3*BlockSize)
			n, err := g.ReadAt(buf, 0)
			if !errors.Is(err, tc.want) {
				t.Fatalf("ReadAt = %d, %v; want %v", n, err, tc.want)
			}
			if n != 0 {
				t.Fatalf("ReadAt returned %d bytes of data with an error", n)
			}
		})
	}
}

func TestNoncesNeverRepeat(t *testing.T) {
	k := newTestKeyring(t, 9)
	f, b := newTestFile(t, k)
	seen := map[[NonceSize]byte]bool{}
	for i := 0; i < 10000; i++ {
		if _, err := f.WriteAt([]byte{byte(i)}, 0); err != nil {
			t.Fatal(err)
		}
		var n [NonceSize]byte
		b.ReadAt(n[:], HeaderSize)
		if seen[n] {
			t.Fatalf("nonce repeated after %d writes", i)
		}
		seen[n] = true
	}
}

func TestOpenFileErrors(t *testing.T) {
	k := newTestKeyring(t, 10)
	dir := t.TempDir()
	for name, content := range map[string][]byte{
		"empty":       nil,
		"plaintext":   []byte("just some text that is long enough to hold a header"),
		"short magic": []byte("MTDENC\x00\x01abc"),
	} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, content, 0o600)
		b, _ := os.Open(p)
		if _, err := OpenFile(k, b); !errors.Is(err, ErrBadHeader) {
			t.Errorf("%s: err = %v, want ErrBadHeader", name, err)
		}
		b.Close()
	}
}

func TestBlockErrorLocates(t *testing.T) {
	k := newTestKeyring(t, 12)
	f, b := newTestFile(t, k)
	f.WriteAt(make([]byte, 5*BlockSize), 0)
	var c [1]byte
	b.ReadAt(c[:], blockOffset(3)+50)
	c[0] ^= 1
	b.WriteAt(c[:], blockOffset(3)+50)
	_, err := f.ReadAt(make([]byte, 5*BlockSize), 0)
	var be *BlockError
	if !errors.As(err, &be) || be.Block != 3 || !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("err = %v, want a BlockError for block 3", err)
	}
}

// TestWritePipelined: a 1 MiB write, sealed and written in segments that
// overlap, reads back whole, on a file and in memory; a segment that
// fails to be written fails the write.
func TestWritePipelined(t *testing.T) {
	k := newTestKeyring(t, 9)
	data := make([]byte, chunkPlain+3*BlockSize+77)
	for i := range data {
		data[i] = byte(i*7 + i>>12)
	}
	f, _ := newTestFile(t, k)
	mb := &memBacking{}
	mf, err := CreateFile(k, mb)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range []*File{f, mf} {
		if n, err := x.WriteAt(data, 100); err != nil || n != len(data) {
			t.Fatalf("write: %d %v", n, err)
		}
		got := make([]byte, len(data))
		if n, err := x.ReadAt(got, 100); err != nil && !errors.Is(err, io.EOF) || n != len(data) || !bytes.Equal(got, data) {
			t.Fatalf("read back: %d %v", n, err)
		}
	}
	// Rewrite with the third segment failing.
	mb.failAt = blockOffset(2*pipeBlocks + 5)
	if _, err := mf.WriteAt(data, 0); !errors.Is(err, errInjected) {
		t.Fatalf("write with a failing segment: %v", err)
	}
}

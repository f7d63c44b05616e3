package crypto

import (
	"bytes"
	"errors"
	"fmt"
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
// an in-memory model, on a real file, straddling block boundaries, for a
// new (version 2) file, one growing by write (SetNetworkBacking), and an
// existing version 1 file.
func TestModel(t *testing.T) {
	for _, v := range []uint8{1, 2} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) { testModel(t, v, false) })
	}
	t.Run("v2-grow-by-write", func(t *testing.T) { testModel(t, 2, true) })
}

func testModel(t *testing.T, v uint8, byWrite bool) {
	k := newTestKeyring(t, 1)
	pool := make([]byte, 2*chunkPlain+4*BlockSize)
	rand.NewChaCha8([32]byte{1}).Read(pool)
	model := append([]byte(nil), pool[:3*BlockSize+77]...)
	f, b := newFileV(t, k, v, model)
	f.SetNetworkBacking(byWrite)
	rng := rand.New(rand.NewPCG(1, uint64(v)))
	// Offsets near the block boundaries of both versions.
	bound := func() int64 {
		i := int64(rng.IntN(12))
		if rng.IntN(2) == 0 {
			return i * BlockSize
		}
		return blockStart(&File{h: Header{Version: 2}}, i)
	}
	offset := func() int64 {
		// Favour offsets near block and chunk boundaries.
		switch rng.IntN(4) {
		case 0:
			return int64(rng.IntN(3*chunkPlain + BlockSize))
		case 1:
			return bound() + int64(rng.IntN(5)) - 2
		default:
			return int64(rng.IntN(len(model) + 2*BlockSize + 1))
		}
	}
	length := func() int {
		switch rng.IntN(4) {
		case 0:
			return rng.IntN(chunkPlain + 3*BlockSize)
		case 1:
			a, b := bound(), bound()
			d := a - b // a distance between two boundaries
			return int(max(d, -d)) + rng.IntN(5)
		default:
			return rng.IntN(3 * BlockSize)
		}
	}
	ops := 3000
	if v == 1 {
		ops = 1500 // the version only existing files have
	}
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
			if h := f.Header(); fi.Size() != h.CipherSize(int64(len(model))) {
				t.Fatalf("op %d: v%d backing size %d, want %d", i, h.Version, fi.Size(), h.CipherSize(int64(len(model))))
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
	for _, v := range []uint8{1, 2} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
			k := newTestKeyring(t, 3)
			f, b := newFileV(t, k, v, []byte("start"))
			if _, err := f.WriteAt([]byte("end"), 5*BlockSize+7); err != nil {
				t.Fatal(err)
			}
			if err := f.Truncate(9 * BlockSize); err != nil {
				t.Fatal(err)
			}
			raw, _ := os.ReadFile(b.Name())
			for i := int64(0); blockStart(f, i) < 9*BlockSize; i++ {
				blk := raw[slotOff(f, i):min(slotOff(f, i+1), int64(len(raw)))]
				if bytes.Equal(blk, make([]byte, len(blk))) {
					t.Fatalf("block %d is an unencrypted hole", i)
				}
			}
			got := readAll(t, f)
			want := make([]byte, 9*BlockSize)
			copy(want, "start")
			copy(want[5*BlockSize+7:], "end")
			if !bytes.Equal(got, want) {
				t.Fatal("content mismatch after extension")
			}
			// Zeroing a block on disk (a hole punched behind our back) is an
			// authentication failure, never zeros.
			if _, err := b.WriteAt(make([]byte, slotOff(f, 3)-slotOff(f, 2)), slotOff(f, 2)); err != nil {
				t.Fatal(err)
			}
			if _, err := f.ReadAt(make([]byte, 10), blockStart(f, 2)); !errors.Is(err, ErrUnauthenticated) {
				t.Fatalf("zeroed block: err = %v, want ErrUnauthenticated", err)
			}
		})
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
	// A version 1 file emptied and written again becomes version 2.
	g, _ := newV1File(t, k, []byte("old format"))
	if err := g.Truncate(0); err != nil {
		t.Fatal(err)
	}
	if _, err := g.WriteAt([]byte("new"), 0); err != nil || g.Header().Version != 2 {
		t.Fatalf("rewritten version 1 file: version %d, %v", g.Header().Version, err)
	}
	if got := readAll(t, g); string(got) != "new" {
		t.Fatalf("read %q", got)
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
// data, in both versions.
func TestTamper(t *testing.T) {
	for _, v := range []uint8{1, 2} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) { testTamper(t, v) })
	}
}

func testTamper(t *testing.T, v uint8) {
	k := newTestKeyring(t, 8)
	data := bytes.Repeat([]byte("0123456789abcdef"), 3*BlockSize/16)
	make3 := func(t *testing.T) (*File, *os.File) {
		return newFileV(t, k, v, data)
	}
	f0, _ := make3(t)
	slot := func(i int64) int64 { return slotOff(f0, i) }
	slotLen := slot(2) - slot(1)
	nonceAt := int64(0)
	if v == 2 {
		nonceAt = slotMetaSize
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
		{"nonce bit", flip(slot(1) + nonceAt + 3), ErrUnauthenticated},
		{"ciphertext bit", flip(slot(1) + nonceAt + NonceSize + 100), ErrUnauthenticated},
		{"tag bit", flip(slot(2) - 1), ErrUnauthenticated},
		{"blocks swapped", func(t *testing.T, b *os.File) {
			b1, b2 := make([]byte, slotLen), make([]byte, slotLen)
			b.ReadAt(b1, slot(1))
			b.ReadAt(b2, slot(2))
			b.WriteAt(b2, slot(1))
			b.WriteAt(b1, slot(2))
		}, ErrUnauthenticated},
		{"block from another file", func(t *testing.T, b *os.File) {
			_, other := make3(t)
			blk := make([]byte, slotLen)
			other.ReadAt(blk, slot(1))
			b.WriteAt(blk, slot(1))
		}, ErrUnauthenticated},
		{"header from another file", func(t *testing.T, b *os.File) {
			_, other := make3(t)
			h := make([]byte, HeaderSize)
			other.ReadAt(h, 0)
			b.WriteAt(h, 0)
		}, ErrUnauthenticated},
		{"version byte", func(t *testing.T, b *os.File) {
			b.WriteAt([]byte{3 - v}, MagicSize-1)
		}, ErrUnauthenticated},
	}
	if v == 2 {
		cases = append(cases, []struct {
			name   string
			tamper func(t *testing.T, b *os.File)
			want   error
		}{
			{"length field", flip(slot(1) + 1), ErrUnauthenticated},
			{"reserved field", flip(slot(1) + 3), ErrUnauthenticated},
			{"length field of the last block", func(t *testing.T, b *os.File) {
				b.WriteAt([]byte{0, 10}, slot(3))
			}, ErrUnauthenticated},
		}...)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, b := make3(t)
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
		b.ReadAt(n[:], HeaderSize+slotMetaSize)
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
	for _, v := range []uint8{1, 2} {
		k := newTestKeyring(t, 12)
		f, b := newFileV(t, k, v, make([]byte, 5*BlockSize))
		var c [1]byte
		b.ReadAt(c[:], slotOff(f, 3)+50)
		c[0] ^= 1
		b.WriteAt(c[:], slotOff(f, 3)+50)
		_, err := f.ReadAt(make([]byte, 5*BlockSize), 0)
		var be *BlockError
		if !errors.As(err, &be) || be.Block != 3 || !errors.Is(err, ErrUnauthenticated) {
			t.Fatalf("v%d: err = %v, want a BlockError for block 3", v, err)
		}
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
	f1, _ := newV1File(t, k, []byte("v1"))
	mb := &memBacking{}
	mf, err := CreateFile(k, mb)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range []*File{f, f1, mf} {
		if n, err := x.WriteAt(data, 100); err != nil || n != len(data) {
			t.Fatalf("write: %d %v", n, err)
		}
		got := make([]byte, len(data))
		if n, err := x.ReadAt(got, 100); err != nil && !errors.Is(err, io.EOF) || n != len(data) || !bytes.Equal(got, data) {
			t.Fatalf("read back: %d %v", n, err)
		}
	}
	// Rewrite with the third segment failing.
	mb.failAt = slotOff(mf, 2*pipeBlocks+5)
	if _, err := mf.WriteAt(data, 0); !errors.Is(err, errInjected) {
		t.Fatalf("write with a failing segment: %v", err)
	}
}

// TestCutEnd: a file whose end was cut (by a crash or by hand) opens,
// reports the documented size (FORMAT.md), reads back every whole block,
// fails with a BlockError only for the range no block holds, and Verify
// lists exactly that.
func TestCutEnd(t *testing.T) {
	k := newTestKeyring(t, 13)
	data := make([]byte, 3*BlockSize+500)
	for i := range data {
		data[i] = byte(i*31 + i>>8)
	}
	g2 := geom{2}
	for _, tc := range []struct {
		name    string
		v       uint8
		cut     int64 // backing size after the cut
		size    int64 // plaintext size reported
		bad     []Damage
		damaged bool // the size is one no writer makes
	}{
		{"v1 trailing fragment of 10 bytes", 1, HeaderSize + 3*CipherBlockSize + 10, 3 * BlockSize,
			[]Damage{{Block: 2, Off: 3 * BlockSize, Err: ErrBadSize}}, true},
		{"v1 last block cut inside", 1, HeaderSize + 2*CipherBlockSize + 1000, 2*BlockSize + 1000 - BlockOverhead,
			[]Damage{{Block: 2, Off: 2 * BlockSize, Len: 1000 - BlockOverhead, Err: ErrUnauthenticated}}, false},
		{"v1 cut inside the first block", 1, HeaderSize + 4, 0,
			[]Damage{{Block: 0, Off: 0, Err: ErrBadSize}}, true},
		{"v2 cut at the end of the last page", 2, 4 * PageSize, g2.blockStart(3) + PageBlockSize,
			[]Damage{{Block: 3, Off: int64(len(data)), Len: g2.blockStart(3) + PageBlockSize - int64(len(data)), Err: ErrBadSize},
				{Block: 3, Off: g2.blockStart(3) + PageBlockSize, Err: ErrBadSize}}, true},
		{"v2 last page gone", 2, 3*PageSize + 100, g2.blockStart(2) + 100, nil, false},
		{"v2 more past the last page than a block holds", 2, 2*PageSize + 4090, g2.blockStart(2),
			[]Damage{{Block: 1, Off: g2.blockStart(2), Err: ErrBadSize}}, true},
		{"v2 cut inside page 0", 2, 1000, 0, []Damage{{Block: 0, Off: 0, Err: ErrBadSize}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, b := newFileV(t, k, tc.v, data)
			if err := b.Truncate(tc.cut); err != nil {
				t.Fatal(err)
			}
			f, err := OpenFile(k, b)
			if err != nil {
				t.Fatalf("OpenFile: %v", err)
			}
			size, err := f.Size()
			if err != nil || size != tc.size || f.Header().SizeDamaged(tc.cut) != tc.damaged {
				t.Fatalf("Size = %d, %v (damaged %v); want %d (damaged %v)", size, err, f.Header().SizeDamaged(tc.cut), tc.size, tc.damaged)
			}
			var got []Damage
			if err := f.Verify(func(d Damage) error { got = append(got, d); return nil }); err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.bad) {
				t.Fatalf("Verify: %v\nwant     %v", got, tc.bad)
			}
			// Every byte outside the damage reads back; inside, a
			// BlockError for the right block.
			bad := func(x int64) *Damage {
				for i := range got {
					if d := &got[i]; d.Len > 0 && d.Off <= x && x < d.Off+d.Len {
						return d
					}
				}
				return nil
			}
			g := f.h.geom()
			for i := int64(0); g.blockStart(i) < size; i++ {
				lo, hi := g.blockStart(i), min(g.blockStart(i)+g.blockLen(i), size)
				buf := make([]byte, hi-lo)
				n, err := f.ReadAt(buf, lo)
				if d := bad(hi - 1); d != nil {
					var be *BlockError
					if !errors.As(err, &be) || be.Block != d.Block || !errors.Is(err, d.Err) {
						t.Fatalf("block %d: %d bytes, %v; want a BlockError %v", i, n, err, d.Err)
					}
					if d.Off > lo { // the part before the damage reads back
						if n, err := f.ReadAt(buf[:d.Off-lo], lo); err != nil || !bytes.Equal(buf[:n], data[lo:d.Off]) {
							t.Fatalf("block %d before the damage: %d bytes, %v", i, n, err)
						}
					}
					continue
				}
				if (err != nil && err != io.EOF) || int64(n) != hi-lo || !bytes.Equal(buf, data[lo:hi]) {
					t.Fatalf("block %d: %d bytes, %v", i, n, err)
				}
			}
		})
	}
	// The case: 145 whole version 1 blocks, then 4 bytes.
	_, b := newV1File(t, k, make([]byte, 146*BlockSize))
	b.Truncate(HeaderSize + 145*CipherBlockSize + 4)
	f, err := OpenFile(k, b)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 146*BlockSize)
	if n, err := f.ReadAt(buf, 0); n != 145*BlockSize || err != io.EOF {
		t.Fatalf("read %d bytes, %v; want the 145 whole blocks", n, err)
	}
}

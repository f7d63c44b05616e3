package crypto

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"sync/atomic"
	"testing"
)

// opCounting is a backing file that counts its reads and size changes.
type opCounting struct {
	*os.File
	reads, truncates atomic.Int32
}

func (b *opCounting) ReadAt(p []byte, off int64) (int, error) {
	b.reads.Add(1)
	return b.File.ReadAt(p, off)
}

func (b *opCounting) Truncate(size int64) error {
	b.truncates.Add(1)
	return b.File.Truncate(size)
}

func newCountingFile(t *testing.T, k *Keyring) (*File, *opCounting) {
	t.Helper()
	raw, err := os.OpenFile(t.TempDir()+"/f.bin", os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	b := &opCounting{File: raw}
	f, err := CreateFile(k, b)
	if err != nil {
		t.Fatal(err)
	}
	return f, b
}

// appendSizes are appends of every kind: within a block, across a few,
// a small request that fills the small scratch's 16 slots and has 3000
// zero bytes to write past them, 1 MiB requests (the large scratch).
var appendSizes = []int{1, 200, 4000, 5000, 15*PageBlockSize + 3000, 100, 1 << 20, 1<<20 + 3, 7}

// TestGrowByWrite: a file growing by write never changes its backing
// size by ftruncate, ends every append at the size the format maps, holds
// zeros past its last slot, and reads back what was written.
func TestGrowByWrite(t *testing.T) {
	k := newTestKeyring(t, 0x31)
	f, b := newCountingFile(t, k)
	f.SetNetworkBacking(true)
	rng := rand.New(rand.NewPCG(3, 1))
	var model []byte
	for i, n := range appendSizes {
		if i == 1 {
			// The first write of an empty file cuts it to its new
			// header (a fresh file-id); the appends after it count.
			b.truncates.Store(0)
		}
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(rng.Uint32())
		}
		if _, err := f.WriteAt(p, int64(len(model))); err != nil {
			t.Fatal(err)
		}
		model = append(model, p...)
		fi, err := b.Stat()
		if err != nil {
			t.Fatal(err)
		}
		h := f.Header()
		cs := h.CipherSize(int64(len(model)))
		if fi.Size() != cs {
			t.Fatalf("after an append of %d bytes: backing size %d, want %d", n, fi.Size(), cs)
		}
		// The page past the last slot: zeros, up to the size.
		tail := make([]byte, cs%PageSize)
		if _, err := b.File.ReadAt(tail, cs-int64(len(tail))); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(tail, make([]byte, len(tail))) {
			t.Fatalf("after an append of %d bytes: the page past the last slot is not zeros", n)
		}
	}
	if n := b.truncates.Load(); n != 0 {
		t.Errorf("%d appends growing by write changed the backing size by ftruncate %d times", len(appendSizes)-1, n)
	}
	if got := readAll(t, f); !bytes.Equal(got, model) {
		t.Fatal("content differs from what was written")
	}
	// Growing by ftruncate, the default, sets the size first, once per
	// growing append.
	g, gb := newCountingFile(t, k)
	for _, n := range appendSizes[:4] {
		if _, err := g.WriteAt(make([]byte, n), mustSize(t, g)); err != nil {
			t.Fatal(err)
		}
	}
	if n := gb.truncates.Load(); n < 4 {
		t.Errorf("4 growing appends by ftruncate changed the size %d times", n)
	}
}

func mustSize(t *testing.T, f *File) int64 {
	t.Helper()
	n, err := f.Size()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestAppendReadsNothingBack: an append that starts inside the last block
// takes that block's old content from the slot the File last wrote, not
// from the backing file (on a network file system that read waits for the
// writes in flight); after any other change of the backing file it reads
// it again, and the content is always right.
func TestAppendReadsNothingBack(t *testing.T) {
	for _, mode := range growModes {
		t.Run(mode.name, func(t *testing.T) {
			k := newTestKeyring(t, 0x32)
			f, b := newCountingFile(t, k)
			f.SetNetworkBacking(mode.byWrite)
			rng := rand.New(rand.NewPCG(4, 1))
			var model []byte
			write := func(n int, off int64) {
				t.Helper()
				p := make([]byte, n)
				for i := range p {
					p[i] = byte(rng.Uint32())
				}
				if _, err := f.WriteAt(p, off); err != nil {
					t.Fatal(err)
				}
				if end := off + int64(n); end > int64(len(model)) {
					model = append(model, make([]byte, end-int64(len(model)))...)
				}
				copy(model[off:], p)
			}
			write(100, 0)
			b.reads.Store(0)
			for _, n := range appendSizes {
				write(n, int64(len(model)))
			}
			if n := b.reads.Load(); n != 0 {
				t.Errorf("%d appends read the backing file %d times, want none", len(appendSizes), n)
			}
			check := func(what string) {
				t.Helper()
				if got := readAll(t, f); !bytes.Equal(got, model) {
					t.Fatalf("after %s: content differs", what)
				}
			}
			check("the appends")
			// A truncation inside the last block, then an append into it.
			cut := int64(len(model)) - 1000
			if err := f.Truncate(cut); err != nil {
				t.Fatal(err)
			}
			model = model[:cut]
			write(300, cut)
			check("a truncation and an append")
			// A rewrite of an earlier block, then an append: the last
			// slot kept is the rewritten one's, not the last block's.
			write(50, 10)
			b.reads.Store(0)
			write(20, int64(len(model)))
			if b.reads.Load() == 0 {
				t.Error("an append after a rewrite elsewhere did not read its block back")
			}
			check("a rewrite and an append")
			// Another handle on the same content (SetBacking): the
			// slot kept is dropped, the block read from it.
			rw, err := os.OpenFile(b.Name(), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer rw.Close()
			nb := &opCounting{File: rw}
			f.SetBacking(nb)
			write(5, int64(len(model)))
			if nb.reads.Load() == 0 {
				t.Error("an append after SetBacking did not read its block back")
			}
			check("SetBacking and an append")
		})
	}
}

// TestFailedAppendKeepsFile: an append whose backing write fails (a full
// disk, a server gone) returns the error and leaves the file as it was,
// its size and content, in both ways of growing; the next append works.
func TestFailedAppendKeepsFile(t *testing.T) {
	for _, mode := range growModes {
		t.Run(mode.name, func(t *testing.T) {
			k := newTestKeyring(t, 0x33)
			mb := &memBacking{}
			f, err := CreateFile(k, mb)
			if err != nil {
				t.Fatal(err)
			}
			f.SetNetworkBacking(mode.byWrite)
			old := bytes.Repeat([]byte("acknowledged "), 700) // 9100 bytes: three blocks
			if _, err := f.WriteAt(old, 0); err != nil {
				t.Fatal(err)
			}
			oldCS := int64(len(mb.b))
			more := bytes.Repeat([]byte{0xa5}, 1<<20)
			mb.failAt = slotOff(f, 100) // inside the append
			if _, err := f.WriteAt(more, int64(len(old))); !errors.Is(err, errInjected) {
				t.Fatalf("append with a failing write: %v", err)
			}
			mb.failAt = 0
			if got := int64(len(mb.b)); got != oldCS {
				t.Errorf("backing size %d after the failed append, was %d", got, oldCS)
			}
			if got := readAll(t, f); !bytes.Equal(got, old) {
				t.Fatalf("after the failed append: %d bytes, not the %d acknowledged", len(got), len(old))
			}
			if _, err := f.WriteAt(more[:5000], int64(len(old))); err != nil {
				t.Fatal(err)
			}
			if got := readAll(t, f); !bytes.Equal(got, append(old, more[:5000]...)) {
				t.Fatal("the append after a failed one reads back wrong")
			}
		})
	}
}

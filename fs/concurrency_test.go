package fs

import (
	"bytes"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/mountd/mountd/crypto"
)

// TestConcurrentRMW: writers on separate descriptors each write single
// bytes into the same blocks of an encrypted file. Every write is a
// read-modify-write of a block; none may be lost.
func TestConcurrentRMW(t *testing.T) {
	e := newEnv(t, envOpts{})
	const writers = 8
	const size = 3*crypto.BlockSize + 100
	mustWrite(t, e.m("rmw.bin"), make([]byte, size))

	var wg sync.WaitGroup
	for g := 0; g < writers; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			f, err := os.OpenFile(e.m("rmw.bin"), os.O_RDWR, 0)
			if err != nil {
				t.Error(err)
				return
			}
			defer f.Close()
			rng := rand.New(rand.NewPCG(uint64(g), 3))
			// This writer owns the offsets ≡ g (mod writers); it
			// visits them in random order.
			offs := rng.Perm(size / writers)
			for _, k := range offs {
				if _, err := f.WriteAt([]byte{byte(g + 1)}, int64(k*writers+g)); err != nil {
					t.Error(err)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	got := mustRead(t, e.m("rmw.bin"))
	for i := 0; i < size/writers*writers; i++ {
		if got[i] != byte(i%writers+1) {
			t.Fatalf("byte %d = %d, want %d: an update was lost", i, got[i], i%writers+1)
		}
	}
}

// TestTruncateRacingReads: truncates and rewrites race readers. Every byte
// a reader sees is the file's pattern byte or a zero (from truncate-up),
// and no read fails.
func TestTruncateRacingReads(t *testing.T) {
	e := newEnv(t, envOpts{})
	const size = 6 * crypto.BlockSize
	data := markerData(size)
	mustWrite(t, e.m("tr.bin"), data)

	var stop atomic.Bool
	var wg sync.WaitGroup
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func(r int) {
			defer wg.Done()
			f, err := os.Open(e.m("tr.bin"))
			if err != nil {
				t.Error(err)
				return
			}
			defer f.Close()
			rng := rand.New(rand.NewPCG(uint64(r), 4))
			buf := make([]byte, 3*crypto.BlockSize)
			for !stop.Load() {
				off := rng.IntN(size)
				n, err := f.ReadAt(buf, int64(off))
				if err != nil && n == len(buf) {
					t.Errorf("read: %v", err)
					return
				}
				for i := 0; i < n; i++ {
					if b := buf[i]; b != 0 && b != data[off+i] {
						t.Errorf("read garbage at %d: %q", off+i, b)
						return
					}
				}
			}
		}(r)
	}
	f, err := os.OpenFile(e.m("tr.bin"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(9, 9))
	for i := 0; i < 300 && !t.Failed(); i++ {
		cut := rng.IntN(size)
		if err := f.Truncate(int64(cut)); err != nil {
			t.Fatal(err)
		}
		if rng.IntN(2) == 0 {
			if err := f.Truncate(size); err != nil { // zeros up to size
				t.Fatal(err)
			}
		}
		if _, err := f.WriteAt(data[cut:], int64(cut)); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	stop.Store(true)
	wg.Wait()
	if got := mustRead(t, e.m("tr.bin")); !bytes.Equal(got, data) {
		t.Error("final content differs")
	}
}

// TestParallelReaders: many readers of one encrypted file share its state.
func TestParallelReaders(t *testing.T) {
	e := newEnv(t, envOpts{})
	data := markerData(2 << 20)
	mustWrite(t, e.m("p.bin"), data)
	var wg sync.WaitGroup
	for r := 0; r < 8; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 5; i++ {
				got, err := os.ReadFile(e.m("p.bin"))
				if err != nil || !bytes.Equal(got, data) {
					t.Errorf("read: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

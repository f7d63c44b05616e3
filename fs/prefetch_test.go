package fs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mountd/mountd/crypto"
)

// mustOpen opens path, closed in t.Cleanup (before the unmount).
func mustOpen(t *testing.T, path string, flag int) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// seqRead reads n bytes of f from off in chunks of size, sequentially,
// as dd would.
func seqRead(t *testing.T, f *os.File, off int64, n, size int) ([]byte, error) {
	t.Helper()
	out := make([]byte, 0, n)
	buf := make([]byte, size)
	for len(out) < n {
		k, err := f.ReadAt(buf[:min(size, n-len(out))], off+int64(len(out)))
		out = append(out, buf[:k]...)
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

// TestPrefetchSequentialRead: a large encrypted file read sequentially in
// large requests is answered from the prefetch, with the right bytes,
// including the short last request.
func TestPrefetchSequentialRead(t *testing.T) {
	e := newEnv(t, envOpts{})
	data := pattern(3, 9<<20+12345)
	mustWrite(t, e.m("big.bin"), data)
	f := mustOpen(t, e.m("big.bin"), os.O_RDONLY)
	before := e.root.stats.prefetched.Load()
	got, err := seqRead(t, f, 0, len(data)+1, 1<<20)
	if err != io.EOF || !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes (%v), want %d", len(got), err, len(data))
	}
	if hits := e.root.stats.prefetched.Load() - before; hits < 4 {
		t.Fatalf("%d reads answered from the prefetch, want most of 10", hits)
	}
}

// TestPrefetchSeesWrites: bytes written (through another descriptor)
// ahead of a sequential reader, into a region already prefetched, and a
// truncation, are what the reader gets next.
func TestPrefetchSeesWrites(t *testing.T) {
	e := newEnv(t, envOpts{})
	data := pattern(4, 8<<20)
	mustWrite(t, e.m("big.bin"), data)
	r := mustOpen(t, e.m("big.bin"), os.O_RDONLY)
	w := mustOpen(t, e.m("big.bin"), os.O_WRONLY)
	const chunk = 1 << 20
	if _, err := seqRead(t, r, 0, 3*chunk, chunk); err != nil { // prefetches 3 and 4 MiB
		t.Fatal(err)
	}
	patch := pattern(5, 5000)
	if _, err := w.WriteAt(patch, 3*chunk+100); err != nil {
		t.Fatal(err)
	}
	copy(data[3*chunk+100:], patch)
	got, err := seqRead(t, r, 3*chunk, 2*chunk, chunk)
	if err != nil || !bytes.Equal(got, data[3*chunk:5*chunk]) {
		t.Fatalf("after a write ahead of the reader: %v, equal %v", err, bytes.Equal(got, data[3*chunk:5*chunk]))
	}
	// Now prefetched: 5 and 6 MiB. Cut the file in the middle of 5.
	if err := w.Truncate(5*chunk + 777); err != nil {
		t.Fatal(err)
	}
	got, err = seqRead(t, r, 5*chunk, 2*chunk, chunk)
	if err != io.EOF || !bytes.Equal(got, data[5*chunk:5*chunk+777]) {
		t.Fatalf("after a truncation: %d bytes, %v", len(got), err)
	}
	// The same through the path (truncate(2), no handle), on a file read
	// in a new stream: prefetched 2 and 3 MiB, cut in the middle of 2.
	r2 := mustOpen(t, e.m("big.bin"), os.O_RDONLY)
	if _, err := seqRead(t, r2, 0, 2*chunk, chunk); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(e.m("big.bin"), 2*chunk+5); err != nil {
		t.Fatal(err)
	}
	got, err = seqRead(t, r2, 2*chunk, 2*chunk, chunk)
	if err != io.EOF || !bytes.Equal(got, data[2*chunk:2*chunk+5]) {
		t.Fatalf("after a truncation by path: %d bytes, %v", len(got), err)
	}
}

// TestPrefetchTampered: a tampered block ahead of a sequential reader
// gives EIO when the reader gets there, never its bytes.
func TestPrefetchTampered(t *testing.T) {
	e := newEnv(t, envOpts{allowWarn: true})
	data := pattern(6, 6<<20)
	mustWrite(t, e.m("big.bin"), data)
	// Flip a byte of block 4*256+3, inside the fifth MiB.
	blk := int64(4*256 + 3)
	b, err := os.OpenFile(e.b("big.bin"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	var c [crypto.HeaderSize]byte
	b.ReadAt(c[:], 0)
	h, err := crypto.ParseHeader(c[:])
	if err != nil {
		t.Fatal(err)
	}
	start, _ := h.BlockRange(blk)
	pos := h.CipherOffset(start) + 40
	b.ReadAt(c[:], pos)
	c[0] ^= 1
	b.WriteAt(c[:], pos)
	b.Close()
	f := mustOpen(t, e.m("big.bin"), os.O_RDONLY)
	got, err := seqRead(t, f, 0, len(data), 1<<20)
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("read %d bytes, err %v; want EIO", len(got), err)
	}
	if int64(len(got)) > start || !bytes.Equal(got, data[:len(got)]) {
		t.Fatalf("served %d bytes, tampered block starts at %d", len(got), start)
	}
	if len(e.warnings()) == 0 {
		t.Fatal("the authentication failure was not logged")
	}
	// The prefetch that hit the bad block had decrypted the blocks before
	// it into its buffer; it reported no bytes, and its buffer came back
	// zeroed all the same.
	r := e.root
	r.clearPrefetches()
	waitFor(t, 2*time.Second, "every prefetch buffer back", func() bool {
		r.pf.mu.Lock()
		defer r.pf.mu.Unlock()
		return len(r.pf.free) == r.pf.made
	})
	r.pf.mu.Lock()
	defer r.pf.mu.Unlock()
	for _, buf := range r.pf.free {
		if !bytes.Equal(buf, make([]byte, len(buf))) {
			t.Fatal("a prefetch buffer holds plaintext after a failed prefetch")
		}
	}
}

// TestPrefetchLogout: after a logout, no prefetch is left and every
// prefetch buffer is zero; the reader gets EACCES, and after a new login
// reads go on.
func TestPrefetchLogout(t *testing.T) {
	e := newEnv(t, envOpts{})
	data := pattern(7, 6<<20)
	mustWrite(t, e.m("big.bin"), data)
	f := mustOpen(t, e.m("big.bin"), os.O_RDONLY)
	const chunk = 1 << 20
	before := e.root.stats.prefetched.Load()
	if _, err := seqRead(t, f, 0, 3*chunk, chunk); err != nil {
		t.Fatal(err)
	}
	if e.root.stats.prefetched.Load() == before {
		t.Fatal("no prefetch was used")
	}
	e.logout()
	r := e.root
	for _, st := range r.files.states() {
		st.pfMu.Lock()
		if len(st.pf) != 0 {
			t.Errorf("%d prefetches left after logout", len(st.pf))
		}
		st.pfMu.Unlock()
	}
	// A buffer whose reply go-fuse is still sending comes back (zeroed)
	// when the send is done, just after the reader got its bytes.
	waitFor(t, 2*time.Second, "every prefetch buffer back", func() bool {
		r.pf.mu.Lock()
		defer r.pf.mu.Unlock()
		return len(r.pf.free) == r.pf.made
	})
	r.pf.mu.Lock()
	if len(r.pf.free) != r.pf.made || r.pf.made == 0 {
		t.Errorf("%d of %d buffers free after logout", len(r.pf.free), r.pf.made)
	}
	for _, buf := range r.pf.free {
		if !bytes.Equal(buf, make([]byte, len(buf))) {
			t.Error("a prefetch buffer holds data after logout")
		}
	}
	r.pf.mu.Unlock()
	buf := make([]byte, chunk)
	_, err := f.ReadAt(buf, 3*chunk)
	wantErrno(t, err, syscall.EACCES, "sequential read after logout")
	e.login()
	got, err := seqRead(t, f, 3*chunk, 3*chunk, chunk)
	if err != nil || !bytes.Equal(got, data[3*chunk:]) {
		t.Fatalf("after login: %v", err)
	}
}

// TestPrefetchConcurrentWriters: sequential readers racing a writer that
// rewrites whole megabytes never see a megabyte older than the last
// rewrite that had finished when their read started (a stale prefetch),
// nor a block from the wrong place or a torn one.
func TestPrefetchConcurrentWriters(t *testing.T) {
	if testing.Short() {
		t.Skip("runs 2 s")
	}
	e := newEnv(t, envOpts{})
	const mib, n = 1 << 20, 8
	// Every 4 KiB block starts with its version and its index.
	stamp := func(buf []byte, first, version int) {
		for b := 0; b < len(buf)/crypto.BlockSize; b++ {
			blk := buf[b*crypto.BlockSize:]
			binary.LittleEndian.PutUint64(blk, uint64(version))
			binary.LittleEndian.PutUint64(blk[8:], uint64(first+b))
		}
	}
	init := make([]byte, n*mib)
	stamp(init, 0, 0)
	mustWrite(t, e.m("big.bin"), init)

	var done [n]atomic.Int64 // last version of each MiB whose write returned
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Go(func() {
		w, err := os.OpenFile(e.m("big.bin"), os.O_WRONLY, 0)
		if err != nil {
			t.Error(err)
			return
		}
		defer w.Close()
		buf := make([]byte, mib)
		rng := rand.New(rand.NewPCG(1, 2))
		for v := 1; !stop.Load(); v++ {
			i := rng.IntN(n)
			stamp(buf, i*mib/crypto.BlockSize, v)
			if _, err := w.WriteAt(buf, int64(i*mib)); err != nil {
				t.Error(err)
				return
			}
			done[i].Store(int64(v))
		}
	})
	var reads atomic.Int64
	for range 2 {
		wg.Go(func() {
			r, err := os.Open(e.m("big.bin"))
			if err != nil {
				t.Error(err)
				return
			}
			defer r.Close()
			buf := make([]byte, mib)
			for !stop.Load() {
				for i := 0; i < n; i++ {
					floor := done[i].Load()
					if _, err := r.ReadAt(buf, int64(i*mib)); err != nil {
						t.Error(err)
						return
					}
					reads.Add(1)
					v0 := int64(binary.LittleEndian.Uint64(buf))
					for b := 0; b < mib/crypto.BlockSize; b++ {
						blk := buf[b*crypto.BlockSize:]
						v, idx := int64(binary.LittleEndian.Uint64(blk)), int(binary.LittleEndian.Uint64(blk[8:]))
						if idx != i*mib/crypto.BlockSize+b || v != v0 {
							t.Errorf("MiB %d block %d: index %d version %d (block 0 has %d)", i, b, idx, v, v0)
							return
						}
					}
					if v0 < floor {
						t.Errorf("MiB %d: read version %d after version %d was written", i, v0, floor)
						return
					}
				}
			}
		})
	}
	// Run until enough reads raced the writer, prefetches among them:
	// a count, not a time, so a loaded machine only makes it slower.
	waitFor(t, 45*time.Second, "500 reads, some answered from a prefetch", func() bool {
		return reads.Load() >= 500 && e.root.stats.prefetched.Load() > 0
	})
	stop.Store(true)
	wg.Wait()
	t.Logf("%d reads, %d answered from a prefetch", reads.Load(), e.root.stats.prefetched.Load())
	if e.root.stats.prefetched.Load() == 0 {
		t.Error("no read was answered from a prefetch")
	}
}

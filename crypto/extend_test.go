package crypto

import (
	"bytes"
	"errors"
	"io"
	"math"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
)

// stallBacking is a backing file whose write number at stalls: it closes
// stalled and waits for release before writing.
type stallBacking struct {
	*os.File
	at      int32
	n       atomic.Int32
	stalled chan struct{}
	release chan struct{}
}

func (b *stallBacking) WriteAt(p []byte, off int64) (int, error) {
	if b.n.Add(1) == b.at {
		close(b.stalled)
		<-b.release
	}
	return b.File.WriteAt(p, off)
}

func blocksOf(t *testing.T, b *os.File) (size, blocks int64) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(b.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return st.Size, st.Blocks
}

// TestExtendEFBIG: pjdfstest truncate/12.t with the file encrypted. A size
// the backing file system cannot hold (999999999999999, and the largest
// int64) fails with EFBIG before anything is written or allocated, by
// truncation and by a write far past the end, in both format versions; the
// file keeps its size and content.
func TestExtendEFBIG(t *testing.T) {
	for _, v := range []uint8{1, 2} {
		k := newTestKeyring(t, 0x21)
		initial := []byte("hello world")
		f, b := newFileV(t, k, v, initial)
		size0, blocks0 := blocksOf(t, b)
		for _, size := range []int64{999999999999999, math.MaxInt64 - 1, math.MaxInt64} {
			if err := f.Truncate(size); !errors.Is(err, syscall.EFBIG) {
				t.Errorf("v%d: Truncate(%d) = %v, want EFBIG", v, size, err)
			}
			if n, err := f.WriteAt([]byte("x"), size-1); n != 0 || !errors.Is(err, syscall.EFBIG) {
				t.Errorf("v%d: WriteAt(%d) = %d, %v, want EFBIG", v, size-1, n, err)
			}
		}
		if s, bl := blocksOf(t, b); s != size0 || bl != blocks0 {
			t.Errorf("v%d: backing file went from %d bytes, %d blocks to %d, %d", v, size0, blocks0, s, bl)
		}
		got := make([]byte, 20)
		if n, _ := f.ReadAt(got, 0); !bytes.Equal(got[:n], initial) {
			t.Errorf("v%d: content %q after EFBIG", v, got[:n])
		}
	}
}

// TestExtendStopsAtLogout: an extension (truncate up, a write far past the
// end) that a logout interrupts stops at its next chunk with ErrLocked,
// before the Keyring is locked, and leaves the file as it was: its old
// size and content after the next login, in both format versions (in
// version 1 the old last block is re-sealed at its old length).
func TestExtendStopsAtLogout(t *testing.T) {
	for _, v := range []uint8{1, 2} {
		for _, op := range []string{"truncate", "write"} {
			k := newTestKeyring(t, 0x22)
			initial := bytes.Repeat([]byte("old content "), 1000) // ends inside a block
			f, b := newFileV(t, k, v, initial)
			before, err := os.ReadFile(b.Name())
			if err != nil {
				t.Fatal(err)
			}
			sb := &stallBacking{File: b, at: 3, stalled: make(chan struct{}), release: make(chan struct{})}
			f.SetBacking(sb)
			k.OnBeforeClear(func() { close(sb.release) })

			done := make(chan error, 1)
			go func() {
				const far = 1 << 30
				if op == "truncate" {
					done <- f.Truncate(far)
				} else {
					_, err := f.WriteAt([]byte("far"), far)
					done <- err
				}
			}()
			<-sb.stalled // the extension is under way
			k.Clear()    // returns only after the extension let go of the key
			if err := <-done; !errors.Is(err, ErrLocked) {
				t.Errorf("v%d %s: %v, want ErrLocked", v, op, err)
			}
			if err := k.setKeyForTest(testKey(0x22)); err != nil {
				t.Fatal(err)
			}
			if size, err := f.Size(); err != nil || size != int64(len(initial)) {
				t.Errorf("v%d %s: size %d %v after the interrupted extension, want %d", v, op, size, err, len(initial))
			}
			got := make([]byte, len(initial)+10)
			if n, err := f.ReadAt(got, 0); n != len(initial) || !bytes.Equal(got[:n], initial) {
				t.Errorf("v%d %s: old content not intact: %d %v", v, op, n, err)
			}
			after, err := os.ReadFile(b.Name())
			if err != nil {
				t.Fatal(err)
			}
			if v == 2 && !bytes.Equal(after[:HeaderSize], before[:HeaderSize]) {
				t.Errorf("v%d %s: header changed", v, op)
			}
			if len(after) != len(before) {
				t.Errorf("v%d %s: backing size %d, was %d", v, op, len(after), len(before))
			}
			if _, blocks := blocksOf(t, b); blocks*512 > int64(len(before))+64<<10 {
				t.Errorf("v%d %s: %d blocks still allocated for a %d-byte file", v, op, blocks, len(before))
			}
		}
	}
}

// sizeCounting is a backing file that counts its size changes.
type sizeCounting struct {
	*os.File
	n atomic.Int32
}

func (b *sizeCounting) Truncate(size int64) error {
	b.n.Add(1)
	return b.File.Truncate(size)
}

// TestOneSizeChangePerRequest: appending in 1 MiB writes (the largest
// FUSE request) changes the backing file's size once per write, however
// the writes fall on blocks: on a network file system each size change is
// a round trip that waits for the writes in flight (with 256-block chunks
// a 1 MiB append took two).
func TestOneSizeChangePerRequest(t *testing.T) {
	k := newTestKeyring(t, 0x22)
	raw, err := os.OpenFile(t.TempDir()+"/f.bin", os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	b := &sizeCounting{File: raw}
	f, err := CreateFile(k, b)
	if err != nil {
		t.Fatal(err)
	}
	const writes = 8
	chunk := bytes.Repeat([]byte{7}, 1<<20)
	off := int64(0)
	for i := 0; i < writes; i++ {
		if i == writes/2 {
			// Then off block boundaries: 1 MiB from an odd offset.
			if _, err := f.WriteAt([]byte("x"), off); err != nil {
				t.Fatal(err)
			}
			off++
			b.n.Store(0)
		}
		if _, err := f.WriteAt(chunk, off); err != nil {
			t.Fatal(err)
		}
		off += int64(len(chunk))
	}
	if n := b.n.Load(); n > writes/2 {
		t.Errorf("the last %d appends of 1 MiB changed the backing size %d times, want one each", writes/2, n)
	}
	got := make([]byte, off)
	if n, err := f.ReadAt(got, 0); int64(n) != off || (err != nil && err != io.EOF) {
		t.Fatalf("read back %d of %d bytes: %v", n, off, err)
	}
}

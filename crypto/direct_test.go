package crypto

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// flagBacking is a Backing whose WriteAt records, for each call, its
// length and whether O_DIRECT was set on the descriptor f uses (Fd), and
// then writes through a second descriptor of the same file without it
// (the temp dir's filesystem may want O_DIRECT writes aligned). With
// refuseDirect it fails a write made with O_DIRECT with EINVAL, writing
// nothing, as a filesystem that wants them aligned does.
type flagBacking struct {
	*os.File              // descriptor whose flags f changes
	plain        *os.File // the same file, for the I/O
	refuseDirect bool
	writes       []flagWrite
}

type flagWrite struct {
	n      int
	direct bool
}

func (b *flagBacking) WriteAt(p []byte, off int64) (int, error) {
	fl, err := unix.FcntlInt(b.Fd(), unix.F_GETFL, 0)
	if err != nil {
		return 0, err
	}
	d := fl&unix.O_DIRECT != 0
	b.writes = append(b.writes, flagWrite{len(p), d})
	if d && b.refuseDirect {
		return 0, &os.PathError{Op: "write", Path: b.Name(), Err: syscall.EINVAL}
	}
	return b.plain.WriteAt(p, off)
}

func (b *flagBacking) ReadAt(p []byte, off int64) (int, error) { return b.plain.ReadAt(p, off) }
func (b *flagBacking) Truncate(size int64) error               { return b.plain.Truncate(size) }

func newFlagFile(t *testing.T, k *Keyring, refuse bool) (*File, *flagBacking) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "f.bin")
	raw, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	plain, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { plain.Close() })
	b := &flagBacking{File: raw, plain: plain, refuseDirect: refuse}
	f, err := CreateFile(k, b)
	if err != nil {
		t.Fatal(err)
	}
	f.SetNetworkBacking(true)
	f.SetDirectWrites(true)
	return f, b
}

// TestDirectWrites: with SetDirectWrites, a slot write of at least
// directMin bytes goes with O_DIRECT on the descriptor and smaller ones
// without; the flag is off again after each (reads keep the page cache);
// the content reads back.
func TestDirectWrites(t *testing.T) {
	k := newTestKeyring(t, 0x44)
	f, b := newFlagFile(t, k, false)
	var model []byte
	for _, n := range []int{100, 1 << 20, 5000, directMin, 1<<20 + 3, 7} {
		p := bytes.Repeat([]byte{byte(n)}, n)
		if _, err := f.WriteAt(p, int64(len(model))); err != nil {
			t.Fatal(err)
		}
		model = append(model, p...)
	}
	large := 0
	for _, w := range b.writes {
		if w.direct != (w.n >= directMin) {
			t.Errorf("a write of %d bytes: O_DIRECT %v, want %v", w.n, w.direct, w.n >= directMin)
		}
		if w.direct {
			large++
		}
	}
	if large < 3 {
		t.Errorf("%d direct writes, want at least 3 (the three large appends): %v", large, b.writes)
	}
	fl, err := unix.FcntlInt(b.Fd(), unix.F_GETFL, 0)
	if err != nil || fl&unix.O_DIRECT != 0 {
		t.Errorf("after the writes the descriptor's flags are %#x (%v): O_DIRECT left on", fl, err)
	}
	if !f.DirectWrites() {
		t.Error("DirectWrites turned off without a failure")
	}
	if got := readAll(t, f); !bytes.Equal(got, model) {
		t.Fatal("content differs")
	}

	// Without SetDirectWrites nothing goes direct.
	f2, b2 := newFlagFile(t, k, false)
	f2.SetDirectWrites(false)
	if _, err := f2.WriteAt(make([]byte, 1<<20), 0); err != nil {
		t.Fatal(err)
	}
	for _, w := range b2.writes {
		if w.direct {
			t.Errorf("a write of %d bytes went with O_DIRECT, not asked for", w.n)
		}
	}
}

// TestDirectWritesRefused: a filesystem that fails an O_DIRECT write with
// EINVAL (one that wants them aligned) loses nothing: the write is made
// the usual way, the file stops asking, and the content reads back.
func TestDirectWritesRefused(t *testing.T) {
	k := newTestKeyring(t, 0x45)
	f, b := newFlagFile(t, k, true)
	p := bytes.Repeat([]byte{0x5a}, 1<<20)
	if n, err := f.WriteAt(p, 0); err != nil || n != len(p) {
		t.Fatalf("write: %d, %v", n, err)
	}
	if f.DirectWrites() {
		t.Error("still asking for O_DIRECT after an EINVAL")
	}
	if _, err := f.WriteAt(p, int64(len(p))); err != nil {
		t.Fatal(err)
	}
	direct := 0
	for _, w := range b.writes {
		if w.direct {
			direct++
		}
	}
	if direct != 1 {
		t.Errorf("%d writes with O_DIRECT, want exactly the refused one: %v", direct, b.writes)
	}
	if got := readAll(t, f); !bytes.Equal(got, append(p, p...)) {
		t.Fatal("content differs")
	}
}

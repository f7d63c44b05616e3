package fs

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/internal/testmount"
)

// tailPageHoldsData is testmount.TailPageHoldsData, failing t on error.
func tailPageHoldsData(t *testing.T, path string) bool {
	t.Helper()
	ok, err := testmount.TailPageHoldsData(path)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

// writeThrough writes data to path (through a mount) in two writes, the
// second growing the file, and makes it durable.
func writeThrough(t *testing.T, path string, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	half := len(data) / 2
	if _, err := f.Write(data[:half]); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data[half:]); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// TestGrowsByFtruncateLocally: on a local filesystem an encrypted file
// grows by ftruncate, so the page past its last slot stays a hole (growing
// by write would cost a page more per file).
func TestGrowsByFtruncateLocally(t *testing.T) {
	if netBacking != "" {
		t.Skip("the backing directory is on a network filesystem")
	}
	e := newEnv(t, envOpts{})
	data := markerData(10000)
	writeThrough(t, e.m("f.bin"), data)
	if !e.isEncrypted("f.bin") || !bytes.Equal(e.content("f.bin"), data) {
		t.Fatal("f.bin not encrypted whole")
	}
	if tailPageHoldsData(t, e.b("f.bin")) {
		t.Error("on a local filesystem the page past the last slot holds data: the file grew by write")
	}
	// Nor does a local file get O_DIRECT writes (which a local
	// filesystem wants aligned).
	f, st := e.openCryptState(t, "g.bin")
	defer f.Close()
	if _, err := f.Write(markerData(1 << 20)); err != nil {
		t.Fatal(err)
	}
	if directWrites(st) {
		t.Error("a file on a local filesystem is written with O_DIRECT")
	}
}

// openCryptState creates the encrypted file name through the mount and
// returns it open for writing, with its inode state.
func (e *testEnv) openCryptState(t *testing.T, name string) (*os.File, *inodeState) {
	t.Helper()
	f, err := os.OpenFile(e.m(name), os.O_CREATE|os.O_RDWR|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	var x unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, e.b(name), unix.AT_SYMLINK_NOFOLLOW, unix.STATX_INO, &x); err != nil {
		f.Close()
		t.Fatal(err)
	}
	key := keyOf(&x)
	for _, st := range e.root.files.states() {
		st.mu.RLock()
		ok := st.cf != nil && st.key == key
		st.mu.RUnlock()
		if ok {
			return f, st
		}
	}
	f.Close()
	t.Fatalf("%s: no encrypted inode state for %+v", name, key)
	return nil, nil
}

// directWrites reports whether st's encrypted file is written with
// O_DIRECT (crypto.File.DirectWrites).
func directWrites(st *inodeState) bool {
	st.mu.RLock()
	defer st.mu.RUnlock()
	return st.cf != nil && st.cf.DirectWrites()
}

// testNetDirectWrites (on sshfs): the mount asks for large writes to go to
// the backing file with O_DIRECT (crypto TestDirectWrites shows that they
// then do), and the content reads back.
func testNetDirectWrites(t *testing.T) {
	e := newEnv(t, envOpts{})
	f, st := e.openCryptState(t, "d.bin")
	defer f.Close()
	var data []byte
	for i := range 8 {
		p := markerData(1<<20 + i)
		if _, err := f.Write(p); err != nil {
			t.Fatal(err)
		}
		data = append(data, p...)
	}
	if !directWrites(st) {
		t.Error("a file on sshfs is not written with O_DIRECT")
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(e.content("d.bin"), data) {
		t.Fatal("d.bin reads back different")
	}
}

// testNetGrowsByWrite (on sshfs): an encrypted file grows by write, not by
// ftruncate (a round trip that waits for the writes in flight), which the
// server shows as data in the page past the last slot; the file reads back.
func testNetGrowsByWrite(t *testing.T, mnt, export string) {
	e := newEnv(t, envOpts{})
	data := markerData(10000)
	writeThrough(t, e.m("f.bin"), data)
	if !e.isEncrypted("f.bin") || !bytes.Equal(e.content("f.bin"), data) {
		t.Fatal("f.bin not encrypted whole")
	}
	rel, err := filepath.Rel(mnt, e.b("f.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if !tailPageHoldsData(t, filepath.Join(export, rel)) {
		t.Error("on sshfs the page past the last slot is a hole: the file grew by ftruncate")
	}
}

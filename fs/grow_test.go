package fs

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

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

package integration

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestLogoutFlushesDirtyMapping: flush, then lock, through the real
// daemon. An application writes into a MAP_SHARED mapping of an encrypted
// file and does not call msync; the logout (the seed's reply, byte for
// byte) writes those pages back encrypted before it locks: fsync and
// msync then succeed, the backing file has no plaintext, and after the
// next login the bytes are there. The mapping lives in this process,
// which is not the daemon, so touching it cannot deadlock the server.
func TestLogoutFlushesDirtyMapping(t *testing.T) {
	const size = 6 * 4096
	d, path, data, f, m := mappedEncryptedFile(t, size)
	defer f.Close()
	defer unix.Munmap(m)
	if !bytes.Equal(m, data) {
		t.Fatal("mapping differs from the file")
	}
	const text = "NEW-BYTES-ONLY-IN-A-DIRTY-PAGE"
	want := append([]byte(nil), data...)
	for _, off := range []int{10, 3*4096 + 7, size - len(text)} {
		copy(m[off:], text)
		copy(want[off:], text)
	}
	before, err := os.ReadFile(filepath.Join(d.data, "mapped.bin"))
	if err != nil {
		t.Fatal(err)
	}

	r := d.logout()
	if r.Status != 200 || string(bytes.TrimSpace(r.Raw)) != seedLogoutBody {
		t.Fatalf("logout: %d %q, want 200 %s", r.Status, r.Raw, seedLogoutBody)
	}
	if err := f.Sync(); err != nil {
		t.Errorf("fsync after logout: %v (a dirty page was lost)", err)
	}
	if err := unix.Msync(m, unix.MS_SYNC); err != nil {
		t.Errorf("msync after logout: %v", err)
	}
	raw, err := os.ReadFile(filepath.Join(d.data, "mapped.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(raw, before) {
		t.Error("the dirty pages were not written back at logout")
	}
	if bytes.Contains(raw, []byte(text)) || bytes.Contains(raw, []byte("mapped plaintext")) {
		t.Error("plaintext in the backing file")
	}
	if _, err := os.ReadFile(path); err == nil {
		t.Error("read after logout succeeded")
	}

	d.mustLogin(password)
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("after the next login: %v; the mapped writes are there: %v", err, bytes.Count(got, []byte(text)))
	}
	if out := d.out.String(); strings.Contains(out, "write-back of cached pages failed") {
		t.Errorf("daemon logged a failed write-back:\n%s", out)
	}
}

// TestShutdownFlushesDirtyMapping: the daemon's shutdown (SIGTERM) clears
// the key through the same Keyring.Clear, so it writes back the dirty pages
// of a shared mapping first too: after a restart and a login the bytes the
// application wrote without msync are there.
func TestShutdownFlushesDirtyMapping(t *testing.T) {
	const size = 3 * 4096
	d, path, data, f, m := mappedEncryptedFile(t, size)
	const text = "WRITTEN-BEFORE-SHUTDOWN"
	copy(m[5000:], text)
	want := append([]byte(nil), data...)
	copy(want[5000:], text)

	if err := d.stop(); err != nil {
		t.Errorf("stop: %v", err)
	}
	unix.Munmap(m)
	f.Close()
	if isMounted(d.mnt) {
		// The mapping kept the mount busy: the daemon detached it.
		exec.Command("umount", "-l", d.mnt).Run()
	}
	raw, err := os.ReadFile(filepath.Join(d.data, "mapped.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte(text)) {
		t.Fatal("plaintext in the backing file")
	}

	d.start()
	d.mustLogin(password)
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("after a restart: %v; the mapped write is there: %v", err, bytes.Contains(got, []byte(text)))
	}
}

// mappedEncryptedFile starts a daemon, logs in, writes mapped.bin (size
// bytes of known plaintext) through its mount and maps it MAP_SHARED,
// read-write, in this process.
func mappedEncryptedFile(t *testing.T, size int) (d *daemon, path string, data []byte, f *os.File, m []byte) {
	t.Helper()
	d = newDaemon(t)
	d.start()
	d.mustLogin(password)
	data = bytes.Repeat([]byte("mapped plaintext, old. "), size/23+1)[:size]
	path = filepath.Join(d.mnt, "mapped.bin")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	m, err = unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		t.Fatal(err)
	}
	return d, path, data, f, m
}

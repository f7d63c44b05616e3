package integration

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mountd/mountd/crypto"
)

var plainMarker = []byte("INTEGRATION-PLAINTEXT-MARKER-")

// waitCiphertext polls the backing file path (external state) until it is
// ciphertext with no plaintext marker, for at most d.
func waitCiphertext(t *testing.T, path string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		b, err := os.ReadFile(path)
		if err == nil && crypto.HasMagic(b) && !bytes.Contains(b, plainMarker) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not encrypted after %v (%v)", path, d, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func pendingOf(t *testing.T, d *daemon) int {
	t.Helper()
	n, ok := d.status(false)["pending_encryption"].(float64)
	if !ok {
		t.Fatal("status has no pending_encryption")
	}
	return int(n)
}

// TestPendingEncryptionSurvivesKill: a plaintext atomic save whose
// background conversion has not run (the file is still open) and a
// protected file written while logged out are recorded as pending; after
// kill -9 of the daemon (a crash or power loss between the rename and the
// conversion), a restart and a login, both are encrypted.
func TestPendingEncryptionSurvivesKill(t *testing.T) {
	d := newDaemon(t)
	d.start()
	d.mustLogin(password)
	data := bytes.Repeat(plainMarker, 300)

	tmp := filepath.Join(d.mnt, "tmp8812")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	held, err := os.Open(tmp) // busy: the conversion waits for it
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(d.mnt, "saved.bin")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(d.data, "saved.bin")); !bytes.Contains(b, plainMarker) {
		t.Fatal("saved.bin already encrypted although open: the test cannot check the restart")
	}
	if r := d.logout(); r.Status != 200 {
		t.Fatalf("logout: %d", r.Status)
	}
	if err := os.WriteFile(filepath.Join(d.mnt, "offline.bin"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	if n := pendingOf(t, d); n != 2 {
		t.Fatalf("status: %d pending, want 2", n)
	}
	d.kill()
	held.Close()

	d.start()
	if n := pendingOf(t, d); n != 2 {
		t.Errorf("after the restart, before login: %d pending, want 2", n)
	}
	d.mustLogin(password)
	for _, name := range []string{"saved.bin", "offline.bin"} {
		waitCiphertext(t, filepath.Join(d.data, name), 30*time.Second)
		got, err := os.ReadFile(filepath.Join(d.mnt, name))
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s: content differs after the conversion (%v)", name, err)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for pendingOf(t, d) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("still pending after the conversions")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

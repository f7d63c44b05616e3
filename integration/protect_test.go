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

// waitCiphertext waits until the daemon logs that it put the encrypted
// copy of name in place, then checks the backing file: ciphertext, with
// no plaintext marker.
func waitCiphertext(t *testing.T, d *daemon, name string, timeout time.Duration) {
	t.Helper()
	if !d.out.waitFor(timeout, "encrypted file in place", "path="+name) {
		t.Fatalf("%s: no conversion logged within %v", name, timeout)
	}
	b, err := os.ReadFile(filepath.Join(d.data, name))
	if err != nil || !crypto.HasMagic(b) || bytes.Contains(b, plainMarker) {
		t.Fatalf("%s: logged as encrypted, but the backing file is not ciphertext (%v)", name, err)
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
		waitCiphertext(t, d, name, 30*time.Second)
		got, err := os.ReadFile(filepath.Join(d.mnt, name))
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s: content differs after the conversion (%v)", name, err)
		}
	}
	if !d.out.waitFor(30*time.Second, "no protected file waits for encryption any more") {
		t.Fatal("the daemon never logged that nothing waits for encryption")
	}
	if n := pendingOf(t, d); n != 0 {
		t.Errorf("%d pending after the conversions, want 0", n)
	}
}

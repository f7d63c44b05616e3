package fs

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/internal/sshfsbed"
)

// TestOnSSHFS runs the filesystem with its backing directory on sshfs
// over loopback (internal/sshfsbed), a network filesystem without
// RENAME_EXCHANGE: conversions must find that out and commit by rename;
// atomic saves end encrypted; the fsx-style model, logout and the commit's
// crash states hold as on a local disk. Without sshd and sshfs it is
// skipped loudly (and fails under CI=true).
func TestOnSSHFS(t *testing.T) {
	if netBacking != "" {
		t.Skip("the package already runs on MOUNTD_FS_TEST_BACKING")
	}
	bed := sshfsbed.Start(t)
	export, mnt := tempDir(t, "export"), tempDir(t, "sshfs")
	bed.Mount(t, export, mnt)
	var s unix.Statfs_t
	if err := unix.Statfs(mnt, &s); err != nil || s.Type != fuseSuperMagic {
		t.Fatalf("%s is not a FUSE mount (%x, %v)", mnt, s.Type, err)
	}
	netBacking = mnt
	t.Cleanup(func() { netBacking = "" })

	t.Run("ExchangeUnsupportedFoundOnce", testNetNoExchange)
	t.Run("AtomicSaves", testNetAtomicSaves)
	t.Run("GrowsByWrite", func(t *testing.T) { testNetGrowsByWrite(t, mnt, export) })
	t.Run("DirectWrites", testNetDirectWrites)
	t.Run("Model", func(t *testing.T) {
		ops := 12000
		if testing.Short() {
			ops = 3000
		}
		runModel(t, 20261205, ops)
	})
	t.Run("LogoutCat", TestLogoutCat)
	t.Run("LogoutOpenFd", TestLogoutOpenFd)
	t.Run("LogoutUnderReaders", TestLogoutUnderReaders)
	t.Run("CrashStates", func(t *testing.T) { runCommitCrashStates(t, true) })
	t.Run("RenameCommitHoldsNames", TestRenameCommitHoldsNames)
	t.Run("RenameCommitSeesChanges", TestRenameCommitSeesChanges)
	t.Run("ConvertWhileReading", TestConvertWhileReading)
	t.Run("AtomicSaveBusy", TestAtomicSaveBusy)
}

// testNetNoExchange: the first conversion meets EINVAL from the exchange,
// marks the device, logs it once at Info, and still converts; later ones
// rename at once.
func testNetNoExchange(t *testing.T) {
	e := newEnv(t, envOpts{})
	data := markerData(20000)
	for _, n := range []string{"a.bin", "b.bin"} {
		mustWrite(t, e.b(n), data)
		if out := e.root.encryptInPlace(context.Background(), n); !out.Done() {
			t.Fatalf("%s: %+v", n, out)
		}
		if !e.isEncrypted(n) || !bytes.Equal(e.content(n), data) {
			t.Fatalf("%s not converted whole", n)
		}
	}
	// syncfs does not reach the sshfs server: the migration must fsync
	// each copy.
	mustWrite(t, e.b("c.bin"), data)
	c, out := e.root.PrepareConversion(context.Background(), "c.bin", PrepareOptions{})
	if c == nil {
		t.Fatalf("prepare: %+v", out)
	}
	if err := c.SyncFS(); err != ErrNoSyncFS {
		t.Errorf("SyncFS on sshfs: %v, want ErrNoSyncFS", err)
	}
	c.Abort()
	dev := e.root.rootDev
	if e.root.conv.caps.exchangeWorks(dev) {
		t.Error("the device is not marked as having no RENAME_EXCHANGE")
	}
	found := 0
	for _, en := range e.hook.AllEntries() {
		if bytes.Contains([]byte(en.Message), []byte("no RENAME_EXCHANGE")) {
			found++
		}
	}
	if found != 1 {
		t.Errorf("%d log lines about the missing RENAME_EXCHANGE, want 1", found)
	}
	if tmp := e.temps(); len(tmp) > 0 {
		t.Errorf("temp files left: %v", tmp)
	}
}

// testNetAtomicSaves: saves the way editors make them (write a temp file,
// fsync, rename it onto the name) end encrypted, each one, with the
// content of that save: repeatedly onto one name, and onto many names at
// once. (Before the rename commit, every one of them stayed plaintext:
// the exchange failed with EINVAL.)
func testNetAtomicSaves(t *testing.T) {
	e := newEnv(t, envOpts{timeout: 5 * time.Minute})
	save := func(name string, data []byte) {
		t.Helper()
		// A temp name unrelated to the protected one (a temporary of it
		// is encrypted from its first byte: nothing to convert).
		tmp := e.m("tmpsave-" + strings.TrimSuffix(name, ".bin"))
		f, err := os.Create(tmp)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, e.m(name)); err != nil {
			t.Fatal(err)
		}
	}
	rounds := 40
	if testing.Short() {
		rounds = 10
	}
	for i := range rounds {
		data := append(markerData(3000+i*97), fmt.Sprintf("save %d", i)...)
		save("x.bin", data)
		waitFor(t, 20*time.Second, "save to be encrypted", func() bool { return e.isEncrypted("x.bin") })
		if got := e.content("x.bin"); !bytes.Equal(got, data) {
			t.Fatalf("save %d: content differs", i)
		}
	}
	want := map[string][]byte{}
	for i := range 4 * rounds {
		name := fmt.Sprintf("many-%03d.bin", i)
		want[name] = append(markerData(1000+i), name...)
		save(name, want[name])
	}
	waitFor(t, 60*time.Second, "the converter to go idle", e.root.conv.idle)
	plain := 0
	for name, data := range want {
		if !e.isEncrypted(name) {
			plain++
			continue
		}
		if got := mustRead(t, e.m(name)); !bytes.Equal(got, data) {
			t.Errorf("%s differs through the mount", name)
		}
	}
	if plain > 0 {
		t.Errorf("%d of %d atomic saves stayed plaintext", plain, len(want))
	}
	if tmp := e.temps(); len(tmp) > 0 {
		t.Errorf("temp files left: %v", tmp)
	}
}

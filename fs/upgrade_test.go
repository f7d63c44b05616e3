package fs

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/crypto"
	"github.com/mountd/mountd/internal/testmount"
)

// Files in content format version 1 (written by an older mountd) are
// upgraded to the current version by the same conversion that encrypts
// plaintext: decrypted with the key, written to a temp file, checked,
// committed.

func (e *testEnv) version(name string) uint8 { e.t.Helper(); return testmount.Version(e.t, e.b(name)) }
func (e *testEnv) ino(name string) uint64    { e.t.Helper(); return testmount.Ino(e.t, e.b(name)) }

// TestUpgradeV1: a version 1 file under the key is rewritten in the
// current version, content, mode, times and xattrs kept; a file already
// in the current version, a damaged version 1 file (a block that fails
// authentication, a cut end, a damaged magic) and one under another key
// are skipped and left byte for byte as they were; without the key
// nothing happens.
func TestUpgradeV1(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := context.Background()
	v1 := testmount.NewV1Writer(t, e.backing)
	small := markerData(70000)
	big := markerData(3*convertChunk/2 + 5) // more than one copy chunk
	if err := os.Mkdir(e.b("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	v1.Write(t, e.b("d/a.bin"), small)
	v1.Write(t, e.b("big.bin"), big)
	if err := os.Chmod(e.b("d/a.bin"), 0o640); err != nil {
		t.Fatal(err)
	}
	mtime := time.Unix(1700000000, 123456789)
	if err := os.Chtimes(e.b("d/a.bin"), mtime, mtime); err != nil {
		t.Fatal(err)
	}
	xattr := unix.Setxattr(e.b("d/a.bin"), "user.tag", []byte("kept"), 0) == nil
	if e.version("d/a.bin") != 1 {
		t.Fatal("the test's file is not version 1")
	}
	if got := mustRead(t, e.m("d/a.bin")); !bytes.Equal(got, small) {
		t.Fatal("version 1 file does not read back through the mount")
	}
	e.waitIdle()

	// Logged out: nothing changes.
	e.logout()
	before := e.backingBytes("d/a.bin")
	if out := e.root.encryptInPlace(ctx, "d/a.bin"); !errors.Is(out.Err, crypto.ErrLocked) {
		t.Fatalf("logged out: %+v, want ErrLocked", out)
	}
	if !bytes.Equal(e.backingBytes("d/a.bin"), before) {
		t.Fatal("logged out: the file changed")
	}
	e.login()

	for _, rel := range []string{"d/a.bin", "big.bin"} {
		c, out := e.root.PrepareConversion(ctx, rel, PrepareOptions{})
		if c == nil {
			t.Fatalf("%s: prepare: %+v", rel, out)
		}
		if !c.Upgrade() {
			t.Errorf("%s: not prepared as an upgrade", rel)
		}
		if err := c.Sync(); err != nil {
			t.Fatal(err)
		}
		if out := c.Commit(CommitOptions{}); !out.Done() {
			t.Fatalf("%s: commit: %+v", rel, out)
		}
	}
	for rel, want := range map[string][]byte{"d/a.bin": small, "big.bin": big} {
		if v := e.version(rel); v != crypto.Version {
			t.Errorf("%s: version %d after the upgrade, want %d", rel, v, crypto.Version)
		}
		if !bytes.Equal(e.content(rel), want) {
			t.Errorf("%s: backing file does not decrypt to the content", rel)
		}
		if got := mustRead(t, e.m(rel)); !bytes.Equal(got, want) {
			t.Errorf("%s: content through the mount differs after the upgrade", rel)
		}
	}
	fi, err := os.Stat(e.m("d/a.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o640 || !fi.ModTime().Equal(mtime) || fi.Size() != int64(len(small)) {
		t.Errorf("metadata not kept: mode %v mtime %v size %d", fi.Mode(), fi.ModTime(), fi.Size())
	}
	buf := make([]byte, 16)
	if n, err := unix.Getxattr(e.b("d/a.bin"), "user.tag", buf); xattr && (err != nil || string(buf[:n]) != "kept") {
		t.Errorf("xattr not kept: %q %v", buf[:n], err)
	}
	if logged(e, "upgraded encrypted file to the current content format in place", "d/a.bin") == 0 {
		t.Error("the upgrade was not logged")
	}

	// Skipped, untouched.
	mustWrite(t, e.m("v2.bin"), small) // through the mount: the current version
	e.waitIdle()
	v1.Write(t, e.b("bad.bin"), small)
	e.patchBacking("bad.bin", crypto.HeaderSize+crypto.CipherBlockSize+100, []byte{0xff}) // block 1
	v1.Write(t, e.b("cut.bin"), small)
	if err := os.Truncate(e.b("cut.bin"), int64(len(e.backingBytes("cut.bin")))-(70000%crypto.BlockSize)-20); err != nil {
		t.Fatal(err)
	}
	testmount.ForeignV1Writer(t).Write(t, e.b("foreign.bin"), small)
	mustWrite(t, e.b("magic.bin"), e.backingBytes("big.bin")[:20000])
	e.patchBacking("magic.bin", 0, []byte{'X'}) // damaged magic, the key's id
	v1.Write(t, e.b("linked.bin"), small)
	if err := os.Link(e.b("linked.bin"), e.b("linked2.bin")); err != nil {
		t.Fatal(err)
	}
	cases := map[string]SkipReason{
		"linked.bin": SkipEncrypted, "linked2.bin": SkipEncrypted,
		"d/a.bin": SkipEncrypted, "v2.bin": SkipEncrypted, "bad.bin": SkipDamaged, "cut.bin": SkipDamaged,
		"foreign.bin": SkipOtherKey, "magic.bin": SkipDamaged,
	}
	raw, inos := map[string][]byte{}, map[string]uint64{}
	for rel := range cases {
		raw[rel], inos[rel] = e.backingBytes(rel), e.ino(rel)
	}
	for rel, want := range cases {
		if out := e.root.encryptInPlace(ctx, rel); out.Skip != want || out.Err != nil {
			t.Errorf("%s: %+v, want skipped (%d)", rel, out, want)
		}
		if !bytes.Equal(e.backingBytes(rel), raw[rel]) || e.ino(rel) != inos[rel] {
			t.Errorf("%s: changed although skipped", rel)
		}
	}
	if tmp := e.temps(); len(tmp) > 0 {
		t.Errorf("temp files left: %v", tmp)
	}
}

// logged counts the log entries with message msg about path rel.
func logged(e *testEnv, msg, rel string) int {
	n := 0
	for _, en := range e.hook.AllEntries() {
		if en.Message == msg && en.Data["path"] == rel {
			n++
		}
	}
	return n
}

// TestUpgradeCommitCrashStates stops an upgrade's commit at each of its
// steps, on both paths, as a kill -9 would, then runs the start-up
// recovery: the file is whole and readable, in version 1 or 2, no temp
// file is left, and the next attempt finishes the upgrade.
func TestUpgradeCommitCrashStates(t *testing.T) {
	for _, tc := range commitCrashCases {
		t.Run(tc.name(), func(t *testing.T) {
			e := newEnv(t, envOpts{})
			e.root.conv.caps.forceRename = tc.rename
			e.root.conv.caps.crash = func(rel string, s commitStep) bool { return rel == "x.bin" && s == tc.step }
			data := markerData(3*crypto.BlockSize + 77)
			testmount.NewV1Writer(t, e.backing).Write(t, e.b("x.bin"), data)

			c, out := e.root.PrepareConversion(context.Background(), "x.bin", PrepareOptions{})
			if c == nil || !c.Upgrade() {
				t.Fatalf("prepare: %+v", out)
			}
			if err := c.Sync(); err != nil {
				t.Fatal(err)
			}
			o := CommitOptions{}
			if tc.keep {
				o.KeepOld = func(string) {}
			}
			if out := c.Commit(o); !errors.Is(out.Err, errCrashed) {
				t.Fatalf("commit: %+v, want the simulated crash", out)
			}
			want := uint8(1)
			if tc.moved {
				want = crypto.Version
			}
			if v := e.version("x.bin"); v != want {
				t.Fatalf("after the crash: version %d, want %d", v, want)
			}
			if !bytes.Equal(e.content("x.bin"), data) {
				t.Fatal("after the crash: x.bin is not whole")
			}
			if _, err := RemoveStaleTemps(e.backing, nil); err != nil {
				t.Fatal(err)
			}
			if tmp := e.temps(); len(tmp) > 0 {
				t.Errorf("temp files after recovery: %v", tmp)
			}
			if v := e.version("x.bin"); v != want || !bytes.Equal(e.content("x.bin"), data) {
				t.Fatalf("after recovery: version %d, whole %v", v, bytes.Equal(e.content("x.bin"), data))
			}
			e.waitIdle()
			if got := mustRead(t, e.m("x.bin")); !bytes.Equal(got, data) {
				t.Fatal("after recovery: x.bin through the mount differs")
			}
			e.root.conv.caps.crash = nil
			e.waitIdle()
			if out := e.root.encryptInPlace(context.Background(), "x.bin"); !out.Done() && out.Skip != SkipEncrypted {
				t.Errorf("again: %+v", out)
			}
			if v := e.version("x.bin"); v != crypto.Version || !bytes.Equal(e.content("x.bin"), data) {
				t.Errorf("after the restart: version %d", v)
			}
		})
	}
}

// TestUpgradeOnWrite: a version 1 file written through the mount (in
// place) while logged in stays version 1 while it is open, the writes
// going in; once closed it is upgraded, its content the one written. A
// version 1 file only read is left alone.
func TestUpgradeOnWrite(t *testing.T) {
	e := newEnv(t, envOpts{})
	a := e.recordAttempts()
	v1 := testmount.NewV1Writer(t, e.backing)
	data := markerData(5*crypto.BlockSize + 300)
	v1.Write(t, e.b("w.bin"), data)
	v1.Write(t, e.b("r.bin"), data)

	f, err := os.OpenFile(e.m("w.bin"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte(nil), data...)
	patch := bytes.Repeat([]byte("new!"), 1500)
	if _, err := f.WriteAt(patch, 5000); err != nil {
		t.Fatal(err)
	}
	copy(want[5000:], patch)
	tail := []byte("appended while open")
	if _, err := f.WriteAt(tail, int64(len(want))); err != nil {
		t.Fatal(err)
	}
	want = append(want, tail...)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	// Open: written in place, in version 1.
	if v := e.version("w.bin"); v != 1 {
		t.Fatalf("while open: version %d, want 1", v)
	}
	if !bytes.Equal(e.content("w.bin"), want) {
		t.Fatal("while open: the writes are not in the backing file")
	}
	got := make([]byte, len(want)+10)
	if n, _ := f.ReadAt(got, 0); !bytes.Equal(got[:n], want) {
		t.Fatal("while open: reading back through the handle differs")
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if out := a.waitWithin(t, 30*time.Second, "w.bin", func(o Outcome) bool { return !o.Retry() }); !out.Done() {
		t.Fatalf("upgrade after close: %+v", out)
	}
	if v := e.version("w.bin"); v != crypto.Version {
		t.Fatalf("after close: version %d, want %d", v, crypto.Version)
	}
	if !bytes.Equal(e.content("w.bin"), want) {
		t.Fatal("after the upgrade: the backing file does not decrypt to what was written")
	}
	if got := mustRead(t, e.m("w.bin")); !bytes.Equal(got, want) {
		t.Fatal("after the upgrade: content through the mount differs")
	}
	if logged(e, "upgraded encrypted file to the current content format in place", "w.bin") != 1 {
		t.Error("the upgrade was not logged once")
	}
	if n := e.root.PendingEncryption(); n != 0 {
		t.Errorf("%d files pending encryption", n)
	}

	// Only read: not queued.
	if got := mustRead(t, e.m("r.bin")); !bytes.Equal(got, data) {
		t.Fatal("r.bin differs")
	}
	e.waitIdle()
	waitFor(t, 10*time.Second, "the converter to go idle", e.root.conv.idle)
	if v := e.version("r.bin"); v != 1 {
		t.Errorf("r.bin, only read: version %d, want 1", v)
	}
	for _, rel := range a.rels() {
		if rel == "r.bin" {
			t.Error("r.bin, only read, was queued")
		}
	}
}

// TestUpgradeItemOnlyUpgrades: a file queued for its upgrade that is
// plaintext by its turn (replaced in the backing directory) is left
// alone: the upgrade never encrypts a file under a name that does not
// encrypt.
func TestUpgradeItemOnlyUpgrades(t *testing.T) {
	e := newEnv(t, envOpts{})
	a := e.recordAttempts()
	data := markerData(9000)
	mustWrite(t, e.b("notes.txt"), data)
	e.root.conv.upgrade("notes.txt")
	e.root.conv.released() // as when the file's last handle closes
	if out := a.waitWithin(t, 30*time.Second, "notes.txt", func(Outcome) bool { return true }); out.Skip != SkipOther {
		t.Fatalf("attempt: %+v, want skipped (other)", out)
	}
	if !bytes.Equal(e.backingBytes("notes.txt"), data) {
		t.Fatal("the plaintext file was changed")
	}
}

// TestUpgradeOnTruncate: a version 1 file truncated through the mount
// (shrunk with truncate(2), grown with ftruncate) ends in the current
// version with what the truncations left, as after a write.
func TestUpgradeOnTruncate(t *testing.T) {
	e := newEnv(t, envOpts{})
	a := e.recordAttempts()
	v1 := testmount.NewV1Writer(t, e.backing)
	data := markerData(5*crypto.BlockSize + 300)
	v1.Write(t, e.b("s.bin"), data)
	v1.Write(t, e.b("g.bin"), data)

	if err := os.Truncate(e.m("s.bin"), 3000); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(e.m("g.bin"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(int64(len(data)) + 5000); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	want := map[string][]byte{
		"s.bin": data[:3000],
		"g.bin": append(append([]byte(nil), data...), make([]byte, 5000)...),
	}
	for name, w := range want {
		if out := a.waitWithin(t, 30*time.Second, name, func(o Outcome) bool { return !o.Retry() }); !out.Done() {
			t.Fatalf("%s: upgrade after the truncation: %+v", name, out)
		}
		if v := e.version(name); v != crypto.Version {
			t.Errorf("%s: version %d, want %d", name, v, crypto.Version)
		}
		if got := mustRead(t, e.m(name)); !bytes.Equal(got, w) {
			t.Errorf("%s: %d bytes through the mount, want %d as truncated", name, len(got), len(w))
		}
	}
}

package migrate

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/mountd/mountd/crypto"
	"github.com/mountd/mountd/internal/testmount"
	"github.com/mountd/mountd/logkey"
	"github.com/mountd/mountd/task"
)

func (e *testEnv) version(rel string) uint8 { e.t.Helper(); return testmount.Version(e.t, e.b(rel)) }
func (e *testEnv) ino(rel string) uint64    { e.t.Helper(); return testmount.Ino(e.t, e.b(rel)) }

// TestMigrateUpgradesV1: the task rewrites the files an older mountd left
// in content format version 1 in the current version (files_upgraded),
// with plaintext files in the same run; content, mode and times are kept.
// Files already in the current version keep their inode; a damaged
// version 1 file and one under another key are skipped (damaged,
// other_key), logged by path and left byte for byte; logged out the task
// does not start.
func TestMigrateUpgradesV1(t *testing.T) {
	e := newEnv(t, envOpts{warnOK: []string{
		"encrypt_existing_files: encrypted file is damaged", "encrypt_existing_files: file is encrypted in content format 1 under another master key",
	}})
	m := mountedMigrator(t, e, Options{})
	v1 := testmount.NewV1Writer(t, e.backing)
	a, big, plain := pattern(1, 70001), pattern(2, 3*convertChunk+17), pattern(3, 9000)
	if err := os.MkdirAll(e.b("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	v1.Write(t, e.b("d/a.bin"), a)
	v1.Write(t, e.b("big.bin"), big)
	mtime := time.Unix(1600000000, 5)
	if err := os.Chmod(e.b("d/a.bin"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(e.b("d/a.bin"), mtime, mtime); err != nil {
		t.Fatal(err)
	}
	migWriteBacking(t, e, "plain.bin", plain, 0o644)
	mustWrite(t, e.m("v2.bin"), a) // through the mount: the current version
	v1.Write(t, e.b("bad.bin"), a)
	f, err := os.OpenFile(e.b("bad.bin"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0x5a}, crypto.HeaderSize+2*crypto.CipherBlockSize+40); err != nil { // block 2
		t.Fatal(err)
	}
	f.Close()
	testmount.ForeignV1Writer(t).Write(t, e.b("foreign.bin"), a)
	v1.Write(t, e.b("linked.bin"), a) // other names would keep version 1: not upgraded, not plaintext
	if err := os.Link(e.b("linked.bin"), e.b("linked2.bin")); err != nil {
		t.Fatal(err)
	}
	untouched := map[string][]byte{}
	inos := map[string]uint64{}
	for _, rel := range []string{"v2.bin", "bad.bin", "foreign.bin", "linked.bin", "linked2.bin"} {
		untouched[rel], inos[rel] = e.backingBytes(rel), e.ino(rel)
	}

	// Logged out: the task refuses, nothing changes.
	e.logout()
	if _, _, err := m.Start(context.Background()); !errors.Is(err, crypto.ErrLocked) {
		t.Fatalf("start logged out: %v, want ErrLocked", err)
	}
	if e.version("d/a.bin") != 1 || e.version("big.bin") != 1 {
		t.Fatal("logged out: a version 1 file changed")
	}
	e.login()

	s := migRun(t, m)
	migCheckFinal(t, s)
	if s.State != task.Succeeded || s.FilesTotal != 8 || s.FilesDone != 3 || s.FilesUpgraded != 2 ||
		s.SkippedReasons[task.SkipAlreadyEncrypted] != 3 || s.SkippedReasons[task.SkipDamaged] != 1 ||
		s.SkippedReasons[task.SkipOtherKey] != 1 || s.FilesLeftPlaintext != 0 {
		t.Errorf("task: %+v", s)
	}
	if want := int64(len(a) + len(big) + len(plain) + 2*len(a)); s.BytesTotal != want {
		t.Errorf("bytes_total %d, want %d (the plaintext sizes)", s.BytesTotal, want)
	}
	for rel, want := range map[string][]byte{"d/a.bin": a, "big.bin": big, "plain.bin": plain, "v2.bin": a} {
		if v := e.version(rel); v != crypto.Version {
			t.Errorf("%s: version %d, want %d", rel, v, crypto.Version)
		}
		if got := mustRead(t, e.m(rel)); !bytes.Equal(got, want) {
			t.Errorf("%s: content through the mount differs", rel)
		}
	}
	fi, err := os.Stat(e.m("d/a.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || !fi.ModTime().Equal(mtime) {
		t.Errorf("d/a.bin: metadata not kept: %v %v", fi.Mode(), fi.ModTime())
	}
	for rel, raw := range untouched {
		if !bytes.Equal(e.backingBytes(rel), raw) || e.ino(rel) != inos[rel] {
			t.Errorf("%s: changed by the task", rel)
		}
	}
	warned := map[string]bool{}
	for _, en := range e.hook.AllEntries() {
		if en.Level == logrus.WarnLevel {
			if p, ok := en.Data[logkey.Path].(string); ok {
				warned[p] = true
			}
			for k, v := range en.Data {
				if s, ok := v.(string); ok && bytes.Contains(a, []byte(s)) && len(s) > 8 {
					t.Errorf("log field %s holds file content", k)
				}
			}
		}
	}
	if !warned["bad.bin"] || !warned["foreign.bin"] {
		t.Errorf("skipped files not logged by path: %v", warned)
	}
	migCheckNoTemps(t, e)

	// Again: everything is in the current version.
	s = migRun(t, m)
	if s.State != task.Succeeded || s.FilesDone != 0 || s.FilesUpgraded != 0 || s.SkippedReasons[task.SkipAlreadyEncrypted] != 6 || s.SkippedReasons[task.SkipDamaged] != 1 {
		t.Errorf("second run: %+v", s)
	}
}

// TestMigrateUpgradeBusy: a version 1 file open through the mount is busy
// (not upgraded, and not counted as plaintext left behind); once closed
// the next run upgrades it.
func TestMigrateUpgradeBusy(t *testing.T) {
	e := newEnv(t, envOpts{})
	m := mountedMigrator(t, e, Options{RetryRounds: -1})
	data := pattern(4, 10000)
	testmount.NewV1Writer(t, e.backing).Write(t, e.b("open.bin"), data)
	f, err := os.Open(e.m("open.bin"))
	if err != nil {
		t.Fatal(err)
	}
	s := migRun(t, m)
	if s.FilesDone+s.FilesSkipped+s.FilesFailed+s.FilesBusy != s.FilesTotal || s.State != task.Succeeded {
		t.Errorf("open: counts do not add up: %+v", s)
	}
	if s.FilesBusy != 1 || s.FilesLeftPlaintext != 0 || len(s.LeftPlaintext) != 0 || s.FilesUpgraded != 0 || e.version("open.bin") != 1 {
		t.Errorf("open: %+v, version %d", s, e.version("open.bin"))
	}
	f.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		s = migRun(t, m)
		if s.FilesBusy == 0 || time.Now().After(deadline) {
			break // the kernel releases the handle after close returns
		}
	}
	if s.FilesUpgraded != 1 || e.version("open.bin") != crypto.Version {
		t.Errorf("closed: %+v, version %d", s, e.version("open.bin"))
	}
	if got := mustRead(t, e.m("open.bin")); !bytes.Equal(got, data) {
		t.Error("content differs after the upgrade")
	}
}

package migrate

import (
	"bytes"
	"fmt"
	iofs "io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/fs"
	"github.com/mountd/mountd/task"
)

// TestMigrateBatches: many small files are made durable in batches (one
// syncfs each, not one fsync per file), every batch within its bounds,
// and every file ends encrypted, readable, with no temp file or old
// plaintext left.
func TestMigrateBatches(t *testing.T) {
	e := newEnv(t, envOpts{})
	const n = 300
	want := map[string][]byte{}
	for i := range n {
		rel := fmt.Sprintf("d%d/f%03d.bin", i%7, i)
		want[rel] = pattern(byte(i), 1+i*37%9000)
		migWriteBacking(t, e, rel, want[rel], 0o640)
	}
	m := mountedMigrator(t, e, Options{})
	var mu sync.Mutex
	var sizes []int
	seen := map[string]bool{}
	m.hooks.commit = func(rels []string) {
		mu.Lock()
		defer mu.Unlock()
		sizes = append(sizes, len(rels))
		for _, rel := range rels {
			if seen[rel] {
				t.Errorf("%s in two batches", rel)
			}
			seen[rel] = true
		}
	}
	var syncs atomic.Int32
	m.hooks.syncfs = func(p prepared) error { syncs.Add(1); return p.SyncFS() }
	s := migRun(t, m)
	migCheckFinal(t, s)
	if s.State != task.Succeeded || s.FilesDone != n {
		t.Fatalf("%+v", s)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != n {
		t.Errorf("%d files went through batches, want %d", len(seen), n)
	}
	if len(sizes) >= n/4 || len(sizes) < (n+batchFiles-1)/batchFiles {
		t.Errorf("%d batches for %d files: %v", len(sizes), n, sizes)
	}
	for _, k := range sizes {
		if k > batchFiles {
			t.Errorf("batch of %d files, limit %d", k, batchFiles)
		}
	}
	if int(syncs.Load()) != len(sizes) {
		t.Errorf("%d syncfs for %d batches", syncs.Load(), len(sizes))
	}
	t.Logf("%d files in %d batches: %v", n, len(sizes), sizes)
	migCheckConverted(t, e, want)
	for rel := range want {
		if fi, err := os.Stat(e.b(rel)); err != nil || fi.Mode().Perm() != 0o640 {
			t.Fatalf("%s: mode %v, %v", rel, fi.Mode(), err)
		}
	}
	migCheckNoTemps(t, e)
}

// TestMigrateSyncfsFails: when the syncfs of a batch fails, each copy is
// fsynced on its own, and the task still finishes.
func TestMigrateSyncfsFails(t *testing.T) {
	e := newEnv(t, envOpts{})
	want := map[string][]byte{}
	for i := range 20 {
		rel := fmt.Sprintf("f%02d.bin", i)
		want[rel] = pattern(byte(i), 5000+i)
		migWriteBacking(t, e, rel, want[rel], 0o644)
	}
	m := mountedMigrator(t, e, Options{})
	var calls atomic.Int32
	m.hooks.syncfs = func(prepared) error { calls.Add(1); return unix.EIO }
	s := migRun(t, m)
	migCheckFinal(t, s)
	if s.State != task.Succeeded || s.FilesDone != 20 || calls.Load() == 0 {
		t.Fatalf("%+v, %d syncfs", s, calls.Load())
	}
	migCheckConverted(t, e, want)
	migCheckNoTemps(t, e)
}

// TestMigrateWriteWhileInBatch: a program that opens a file through the
// mount while its encrypted copy waits in a batch, and appends to it,
// loses nothing: the open waits for the batch, then writes to the
// encrypted file (or, had the append reached the plaintext, the change
// would be noticed and the file converted again).
func TestMigrateWriteWhileInBatch(t *testing.T) {
	e := newEnv(t, envOpts{timeout: time.Minute})
	orig := pattern(1, 10000)
	migWriteBacking(t, e, "a.bin", orig, 0o644)
	migWriteBacking(t, e, "b.bin", pattern(2, 3000), 0o644)
	m := mountedMigrator(t, e, Options{Workers: 1})
	var once sync.Once
	wrote := make(chan error, 1)
	m.hooks.commit = func(rels []string) {
		for _, rel := range rels {
			if rel != "a.bin" {
				continue
			}
			once.Do(func() {
				go func() {
					f, err := os.OpenFile(e.m("a.bin"), os.O_WRONLY|os.O_APPEND, 0)
					if err == nil {
						_, err = f.Write([]byte("appended"))
						if cerr := f.Close(); err == nil {
							err = cerr
						}
					}
					wrote <- err
				}()
				// The open reaches the daemon and waits for the claim:
				// the kernel counts it as waiting for a reply, and the
				// append cannot complete while the batch holds the claim.
				e.waitRequestInFlight()
				if len(wrote) != 0 {
					t.Error("the append completed while its file's copy was claimed in a batch")
				}
			})
		}
	}
	s := migRun(t, m)
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if s.State != task.Succeeded || s.FilesDone != 2 {
		t.Fatalf("%+v", s)
	}
	if !e.isEncrypted("a.bin") {
		t.Fatal("a.bin not encrypted")
	}
	want := append(append([]byte{}, orig...), "appended"...)
	if got := mustRead(t, e.m("a.bin")); !bytes.Equal(got, want) {
		t.Fatalf("a.bin: %d bytes, want %d (original + append)", len(got), len(want))
	}
	migCheckNoTemps(t, e)
}

// TestMigrateCrashInBatch: a crash while copies wait in a batch (taken
// here as a snapshot of the backing tree, which is what kill -9 leaves:
// the page cache survives it) leaves every original whole and only temp
// files besides, which RemoveStaleTemps removes.
func TestMigrateCrashInBatch(t *testing.T) {
	e := newEnv(t, envOpts{})
	want := map[string][]byte{}
	for i := range 12 {
		rel := fmt.Sprintf("d%d/f%02d.bin", i%3, i)
		want[rel] = pattern(byte(i+40), 2000+i*3000)
		migWriteBacking(t, e, rel, want[rel], 0o644)
	}
	m := mountedMigrator(t, e, Options{})
	snap := filepath.Join(tempDir(t, "crash"), "b")
	var once sync.Once
	m.hooks.commit = func([]string) {
		once.Do(func() {
			if out, err := exec.Command("cp", "-a", e.backing, snap).CombinedOutput(); err != nil {
				t.Errorf("snapshot: %v %s", err, out)
			}
		})
	}
	if s := migRun(t, m); s.State != task.Succeeded || s.FilesDone != 12 {
		t.Fatalf("%+v", s)
	}
	migCheckConverted(t, e, want)
	n, err := fs.RemoveStaleTemps(snap, nil)
	if err != nil || n == 0 {
		t.Fatalf("the snapshot held %d temp files (%v); want the batch's copies", n, err)
	}
	for rel, data := range want {
		if got, err := os.ReadFile(filepath.Join(snap, rel)); err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s in the snapshot: not the original (%v)", rel, err)
		}
	}
	filepath.WalkDir(snap, func(p string, d iofs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasPrefix(d.Name(), tempPrefix) {
			t.Errorf("temp file left after RemoveStaleTemps: %s", p)
		}
		return nil
	})
}

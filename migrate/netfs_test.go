package migrate

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mountd/mountd/internal/sshfsbed"
	"github.com/mountd/mountd/task"
)

// TestMigrateOnSSHFS runs the migration with the backing directory on
// sshfs over loopback (internal/sshfsbed): no RENAME_EXCHANGE there, and a
// syncfs that does not reach the server, so every conversion must commit
// by rename after an fsync of its own copy. Without sshd and sshfs it is
// skipped loudly (and fails under CI=true).
func TestMigrateOnSSHFS(t *testing.T) {
	if netBacking != "" {
		t.Skip("the package already runs on MOUNTD_MIGRATE_TEST_BACKING")
	}
	bed := sshfsbed.Start(t)
	export, mnt := tempDir(t, "export"), tempDir(t, "sshfs")
	bed.Mount(t, export, mnt)
	netBacking = mnt
	t.Cleanup(func() { netBacking = "" })

	t.Run("Tree", testNetMigrateTree)
	t.Run("LogoutMidFile", TestMigrateLogoutMidFile)
	t.Run("Cancel", TestMigrateCancel)
	t.Run("BusyFd", TestMigrateBusyFd)
	t.Run("ConcurrentAppend", TestMigrateConcurrentAppend)
}

// testNetMigrateTree: encrypt_existing_files converts a tree of files of
// every size class (empty, below, at and above a block and a copy chunk),
// in nested directories, keeps their mode and content, skips what is not
// a candidate, and leaves no temp file. (Before the rename commit every
// candidate failed with EINVAL and the task ended failed.)
func testNetMigrateTree(t *testing.T) {
	e := newEnv(t, envOpts{timeout: 5 * time.Minute})
	sizes := []int{1, 15, 4095, 4096, 4097, 65536, 300_000, convertChunk, convertChunk + 1, 3*convertChunk + 17}
	want := map[string][]byte{}
	modes := map[string]os.FileMode{}
	n := 0
	for round := range 8 {
		for i, size := range sizes {
			dir := []string{"", "a", "a/b", "a/b/c", "deep/er/still"}[(i+round)%5]
			rel := filepath.Join(dir, fmt.Sprintf("f%d-%d.bin", round, size))
			if round > 0 && size > 65536 {
				continue // a few large files are enough
			}
			want[rel] = pattern(byte(n), size)
			modes[rel] = []os.FileMode{0o644, 0o600, 0o640, 0o755}[n%4]
			migWriteBacking(t, e, rel, want[rel], modes[rel])
			n++
		}
	}
	migWriteBacking(t, e, "a/notes.txt", pattern(50, 5000), 0o644)
	migWriteBacking(t, e, "a/empty.bin", nil, 0o644)

	m := mountedMigrator(t, e, Options{})
	s := migRun(t, m)
	migCheckFinal(t, s)
	if s.State != task.Succeeded || s.FilesDone != int64(len(want)) || s.FilesFailed != 0 {
		t.Fatalf("task: %+v (error %q)", s, s.Error)
	}
	migCheckConverted(t, e, want)
	for rel, mode := range modes {
		fi, err := os.Stat(e.b(rel))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want %v", rel, fi.Mode().Perm(), mode)
		}
	}
	if e.isEncrypted("a/notes.txt") || e.isEncrypted("a/empty.bin") {
		t.Error("a file that is not a candidate was converted")
	}
	migCheckNoTemps(t, e)
	// Resumable: a second run converts nothing.
	s2 := migRun(t, m)
	if s2.State != task.Succeeded || s2.FilesDone != 0 || s2.SkippedReasons[task.SkipAlreadyEncrypted] != int64(len(want)) {
		t.Fatalf("second run: %+v", s2)
	}
	for _, en := range e.hook.AllEntries() {
		if strings.Contains(en.Message, "cannot") {
			t.Errorf("log: %s %v", en.Message, en.Data)
		}
	}
}

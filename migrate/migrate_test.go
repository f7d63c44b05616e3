package migrate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/crypto"
	"github.com/mountd/mountd/logkey"
	"github.com/mountd/mountd/task"
)

// mountedMigrator returns a Migrator on e's root, closed in t.Cleanup
// before the mount goes away.
func mountedMigrator(t *testing.T, e *testEnv, o Options) *Migrator {
	t.Helper()
	if o.Log == nil {
		o.Log = e.log
	}
	m := New(e.root, e.kr, o)
	t.Cleanup(m.Close)
	return m
}

// migRun starts a task and waits for it to end.
func migRun(t *testing.T, m *Migrator) task.Record {
	t.Helper()
	s, started, err := m.Start(context.Background())
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	if !started {
		t.Fatalf("start: a task was already running: %+v", s)
	}
	return m.wait(s.ID)
}

// migWriteBacking writes a file straight into the backing directory, as
// if it were there before mountd.
func migWriteBacking(t *testing.T, e *testEnv, rel string, data []byte, mode os.FileMode) {
	t.Helper()
	p := e.b(rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

// migTemps lists the temp files anywhere under the backing directory.
func migTemps(t *testing.T, e *testEnv) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(e.backing, func(p string, d iofs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), tempPrefix) {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// migCheckConverted checks that every file of want is ciphertext on disk
// and reads back as its data through the mount.
func migCheckConverted(t *testing.T, e *testEnv, want map[string][]byte) {
	t.Helper()
	for rel, data := range want {
		if !e.isEncrypted(rel) {
			t.Errorf("%s not encrypted", rel)
		}
		if got := mustRead(t, e.m(rel)); !bytes.Equal(got, data) {
			t.Errorf("%s differs", rel)
		}
	}
}

func migCheckNoTemps(t *testing.T, e *testEnv) {
	t.Helper()
	if temps := migTemps(t, e); len(temps) > 0 {
		t.Errorf("temp files left behind: %v", temps)
	}
}

// migCheckFinal checks the invariants of a task that ran to the end.
func migCheckFinal(t *testing.T, s task.Record) {
	t.Helper()
	if s.FinishedAt.IsZero() || s.FinishedAt.Before(s.StartedAt) {
		t.Errorf("finished_at %v, started_at %v", s.FinishedAt, s.StartedAt)
	}
	if sum := s.FilesDone + s.FilesSkipped + s.FilesFailed + s.FilesBusy; sum != s.FilesTotal {
		t.Errorf("done+skipped+failed+busy = %d, total %d: %+v", sum, s.FilesTotal, s)
	}
	var reasons int64
	for _, n := range s.SkippedReasons {
		reasons += n
	}
	if reasons != s.FilesSkipped {
		t.Errorf("skipped reasons %v add up to %d, skipped %d", s.SkippedReasons, reasons, s.FilesSkipped)
	}
	if s.BytesDone != s.BytesTotal {
		t.Errorf("bytes_done %d, bytes_total %d", s.BytesDone, s.BytesTotal)
	}
	if want := s.FilesBusy + s.FilesFailed + s.SkippedReasons[task.SkipEmpty] + s.SkippedReasons[task.SkipHardLinks] +
		s.SkippedReasons[task.SkipOther]; s.FilesLeftPlaintext != want || int64(len(s.LeftPlaintext)) != min(want, task.MaxListed) {
		t.Errorf("files_left_plaintext %d, listed %d; want %d", s.FilesLeftPlaintext, len(s.LeftPlaintext), want)
	}
}

// monotonic records snapshots and checks that no counter ever goes down.
type monotonic struct {
	mu   sync.Mutex
	last task.Record
	errs []string
	n    int
}

// see takes a snapshot with get and checks it against the previous one.
// The snapshot is taken under mo.mu, so snapshots are compared in the
// order they were taken.
func (mo *monotonic) see(get func() task.Record) {
	mo.mu.Lock()
	defer mo.mu.Unlock()
	s := get()
	mo.n++
	p := mo.last
	pairs := []struct {
		name      string
		prev, cur int64
	}{
		{"files_total", p.FilesTotal, s.FilesTotal},
		{"files_done", p.FilesDone, s.FilesDone},
		{"files_skipped", p.FilesSkipped, s.FilesSkipped},
		{"files_failed", p.FilesFailed, s.FilesFailed},
		{"files_busy", p.FilesBusy, s.FilesBusy},
		{"files_left_plaintext", p.FilesLeftPlaintext, s.FilesLeftPlaintext},
		{"bytes_total", p.BytesTotal, s.BytesTotal},
		{"bytes_done", p.BytesDone, s.BytesDone},
	}
	for _, c := range pairs {
		if c.cur < c.prev {
			mo.errs = append(mo.errs, fmt.Sprintf("%s went from %d to %d", c.name, c.prev, c.cur))
		}
	}
	if s.BytesDone > s.BytesTotal && s.State == task.Running && s.BytesTotal > 0 {
		mo.errs = append(mo.errs, fmt.Sprintf("bytes_done %d > bytes_total %d", s.BytesDone, s.BytesTotal))
	}
	mo.last = s
}

func (mo *monotonic) check(t *testing.T) {
	t.Helper()
	mo.mu.Lock()
	defer mo.mu.Unlock()
	for _, e := range mo.errs {
		t.Error(e)
	}
}

type migFile struct {
	rel  string
	data []byte
	mode os.FileMode
}

// TestMigrateTree migrates a tree of awkward sizes with every kind of file
// that must be skipped, checks the result on disk and through the mount,
// then runs again: a no-op.
func TestMigrateTree(t *testing.T) {
	e := newEnv(t, envOpts{})
	sizes := []int{1, 15, 16, 4095, 4096, 4097, 65536, 300_000, convertChunk, convertChunk + 1, 3*convertChunk + 17}
	var conv []migFile
	for i, n := range sizes {
		dir := []string{"", "a", "a/b", "a/b/c", "deep/er/still"}[i%5]
		conv = append(conv, migFile{filepath.Join(dir, fmt.Sprintf("f%d.bin", n)), pattern(byte(i), n), []os.FileMode{0o644, 0o600, 0o640, 0o755}[i%4]})
	}
	for _, f := range conv {
		migWriteBacking(t, e, f.rel, f.data, f.mode)
	}
	// Times and an xattr must survive.
	old := time.Date(2019, 3, 4, 5, 6, 7, 8, time.UTC)
	if err := os.Chtimes(e.b(conv[3].rel), old, old); err != nil {
		t.Fatal(err)
	}
	xattrOK := unix.Setxattr(e.b(conv[4].rel), "user.mountd-test", []byte("kept"), 0) == nil

	// Not to convert.
	plainTxt := pattern(50, 5000)
	migWriteBacking(t, e, "a/notes.txt", plainTxt, 0o644)
	migWriteBacking(t, e, "a/empty.bin", nil, 0o644)
	migWriteBacking(t, e, "links/one.bin", pattern(51, 100), 0o644)
	if err := os.Link(e.b("links/one.bin"), e.b("links/two.bin")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../a/notes.txt", e.b("links/sym.bin")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(e.b("links/fifo.bin"), 0o644); err != nil {
		t.Fatal(err)
	}
	migWriteBacking(t, e, "auth/extra.bin", pattern(52, 100), 0o600)
	encData := pattern(53, 10000)
	mustWrite(t, e.m("already.bin"), encData)
	if !e.isEncrypted("already.bin") {
		t.Fatal("already.bin not encrypted")
	}
	// One converted file is looked up and read through the mount before:
	// the kernel must not keep serving the old inode afterwards.
	if got := mustRead(t, e.m(conv[5].rel)); !bytes.Equal(got, conv[5].data) {
		t.Fatal("read before migration differs")
	}

	m := mountedMigrator(t, e, Options{})
	var mono monotonic
	var getter atomic.Pointer[string]
	m.hooks.progress = func(_ context.Context, rel string, _ int64) {
		if id := getter.Load(); id != nil {
			mono.see(func() task.Record { s, _ := m.Get(*id); return s })
		}
	}
	s0, started, err := m.Start(context.Background())
	if err != nil || !started {
		t.Fatalf("start: %v %v", started, err)
	}
	getter.Store(&s0.ID)
	stopPoll := make(chan struct{})
	pollDone := make(chan struct{})
	go func() { // poll as a client would
		defer close(pollDone)
		for {
			var s task.Record
			mono.see(func() task.Record { s, _ = m.Get(s0.ID); return s })
			if s.State != task.Running {
				return
			}
			select {
			case <-stopPoll:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	s := m.wait(s0.ID)
	close(stopPoll)
	<-pollDone
	mono.see(func() task.Record { return s })
	mono.check(t)

	if s.State != task.Succeeded || s.Error != "" {
		t.Fatalf("state %s error %q", s.State, s.Error)
	}
	migCheckFinal(t, s)
	var wantBytes int64
	for _, f := range conv {
		wantBytes += int64(len(f.data))
	}
	wantSkip := map[string]int64{task.SkipEmpty: 1, task.SkipHardLinks: 2, task.SkipNotRegular: 2, task.SkipAlreadyEncrypted: 1}
	if s.FilesDone != int64(len(conv)) || s.FilesTotal != int64(len(conv))+6 || s.BytesTotal != wantBytes ||
		s.FilesBusy != 0 || s.FilesFailed != 0 || fmt.Sprint(s.SkippedReasons) != fmt.Sprint(wantSkip) {
		t.Fatalf("status %+v; want done %d, total %d, bytes %d, skipped %v", s, len(conv), len(conv)+6, wantBytes, wantSkip)
	}
	// The files left plaintext are named with their reason: the empty one
	// and both names of the hard link (not the symlink or the FIFO, which
	// have no content of their own, nor the encrypted one).
	left := map[string]string{}
	for _, f := range s.LeftPlaintext {
		left[f.Path] = f.Reason
	}
	wantLeft := map[string]string{"a/empty.bin": task.SkipEmpty, "links/one.bin": task.SkipHardLinks, "links/two.bin": task.SkipHardLinks}
	if s.FilesLeftPlaintext != 3 || fmt.Sprint(left) != fmt.Sprint(wantLeft) {
		t.Fatalf("left plaintext: %d %v, want %v", s.FilesLeftPlaintext, s.LeftPlaintext, wantLeft)
	}

	for _, f := range conv {
		raw := e.backingBytes(f.rel)
		if !crypto.HasMagic(raw) {
			t.Errorf("%s: not encrypted on disk", f.rel)
			continue
		}
		if got := mustRead(t, e.m(f.rel)); !bytes.Equal(got, f.data) {
			t.Errorf("%s: content differs through the mount (len %d, want %d)", f.rel, len(got), len(f.data))
		}
		fi, err := os.Stat(e.b(f.rel))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != f.mode {
			t.Errorf("%s: mode %v, want %v", f.rel, fi.Mode().Perm(), f.mode)
		}
		mfi, err := os.Stat(e.m(f.rel))
		if err != nil {
			t.Fatal(err)
		}
		if mfi.Size() != int64(len(f.data)) {
			t.Errorf("%s: size through the mount %d, want %d", f.rel, mfi.Size(), len(f.data))
		}
	}
	if fi, err := os.Stat(e.b(conv[3].rel)); err != nil || !fi.ModTime().Equal(old) {
		t.Errorf("mtime not kept: %v %v", fi.ModTime(), err)
	}
	if xattrOK {
		b := make([]byte, 16)
		n, err := unix.Getxattr(e.b(conv[4].rel), "user.mountd-test", b)
		if err != nil || string(b[:n]) != "kept" {
			t.Errorf("xattr not kept: %q %v", b[:n], err)
		}
	}
	if !bytes.Equal(e.backingBytes("a/notes.txt"), plainTxt) {
		t.Error("a non-protected file changed")
	}
	if b := e.backingBytes("links/one.bin"); crypto.HasMagic(b) {
		t.Error("a hard-linked file was converted")
	}
	if b := e.backingBytes("auth/extra.bin"); crypto.HasMagic(b) {
		t.Error("a file under auth/ was converted")
	}
	if b := e.backingBytes("a/empty.bin"); len(b) != 0 {
		t.Error("an empty file changed")
	}
	if got := mustRead(t, e.m("already.bin")); !bytes.Equal(got, encData) {
		t.Error("already.bin changed")
	}
	migCheckNoTemps(t, e)

	// Log lines at start and end, the end one with counts and rate.
	var started2, finished bool
	for _, en := range e.hook.AllEntries() {
		if en.Data[logkey.TaskID] != s.ID || en.Level != logrus.InfoLevel {
			continue
		}
		switch en.Message {
		case "encrypt_existing_files: started":
			started2 = true
		case "encrypt_existing_files: finished":
			finished = true
			for _, k := range []string{"files_done", "files_skipped", "bytes_done", "rate_mib_s", "dur_ms"} {
				if _, ok := en.Data[k]; !ok {
					t.Errorf("end log line lacks %s: %v", k, en.Data)
				}
			}
		}
	}
	if !started2 || !finished {
		t.Errorf("missing Info lines: started %v finished %v", started2, finished)
	}
	if l, ok := m.Last(); !ok || l.ID != s.ID {
		t.Errorf("Last: %v %v", l.ID, ok)
	}

	// Again: nothing to do.
	s2 := migRun(t, m)
	migCheckFinal(t, s2)
	if s2.State != task.Succeeded || s2.FilesDone != 0 || s2.FilesTotal != s.FilesTotal ||
		s2.FilesSkipped != s.FilesTotal || s2.SkippedReasons[task.SkipAlreadyEncrypted] != int64(len(conv))+1 || s2.BytesTotal != 0 {
		t.Fatalf("re-run: %+v", s2)
	}
	if s2.ID == s.ID {
		t.Error("same id for two tasks")
	}
	if old, ok := m.Get(s.ID); !ok || old.State != task.Succeeded || old.FilesDone != s.FilesDone {
		t.Errorf("first task no longer queryable: %+v %v", old, ok)
	}
	if l, _ := m.Last(); l.ID != s2.ID {
		t.Errorf("Last is %s, want %s", l.ID, s2.ID)
	}
}

// TestMigrateLogoutMidFile: a logout while a large file is being copied
// abandons it (no temp, original untouched), fails the task with a clear
// error, and leaves the files already done encrypted and readable after
// the next login. Running again finishes the job.
func TestMigrateLogoutMidFile(t *testing.T) {
	e := newEnv(t, envOpts{})
	files := map[string][]byte{
		"a1.bin":    pattern(1, 5000),
		"a2.bin":    pattern(2, 70000),
		"m-big.bin": pattern(3, 8*convertChunk+5),
		"z1.bin":    pattern(4, 100),
		"z2.bin":    pattern(5, 4096),
	}
	for rel, data := range files {
		migWriteBacking(t, e, rel, data, 0o644)
	}
	m := mountedMigrator(t, e, Options{Workers: 1})
	var once sync.Once
	m.hooks.progress = func(_ context.Context, rel string, work int64) {
		if rel == "m-big.bin" && work >= 2*convertChunk {
			once.Do(e.logout)
		}
	}
	s := migRun(t, m)
	if s.State != task.Failed || !strings.Contains(s.Error, "file encryption key was cleared") {
		t.Fatalf("state %s error %q", s.State, s.Error)
	}
	if s.FilesDone != 2 || s.FilesTotal != 5 || s.FilesFailed != 0 {
		t.Fatalf("status %+v", s)
	}
	if s.BytesDone < 5000+70000 || s.BytesDone >= s.BytesTotal {
		t.Errorf("bytes_done %d of %d", s.BytesDone, s.BytesTotal)
	}
	migCheckNoTemps(t, e)
	if !bytes.Equal(e.backingBytes("m-big.bin"), files["m-big.bin"]) {
		t.Fatal("the file in progress changed")
	}
	for _, rel := range []string{"a1.bin", "a2.bin"} {
		if !e.isEncrypted(rel) {
			t.Errorf("%s not encrypted", rel)
		}
	}
	for _, rel := range []string{"z1.bin", "z2.bin"} {
		if !bytes.Equal(e.backingBytes(rel), files[rel]) {
			t.Errorf("%s touched after the logout", rel)
		}
	}
	if _, _, err := m.Start(context.Background()); !errors.Is(err, crypto.ErrLocked) {
		t.Fatalf("start while logged out: %v, want ErrLocked", err)
	}

	e.login()
	for _, rel := range []string{"a1.bin", "a2.bin"} {
		if got := mustRead(t, e.m(rel)); !bytes.Equal(got, files[rel]) {
			t.Errorf("%s differs after re-login", rel)
		}
	}
	m.hooks.progress = nil
	s2 := migRun(t, m)
	migCheckFinal(t, s2)
	if s2.State != task.Succeeded || s2.FilesDone != 3 || s2.SkippedReasons[task.SkipAlreadyEncrypted] != 2 {
		t.Fatalf("resume: %+v", s2)
	}
	migCheckConverted(t, e, files)
	migCheckNoTemps(t, e)
}

// TestMigrateLogoutBetweenFiles: a logout and a quick login between two
// files still stops the task.
func TestMigrateLogoutBetweenFiles(t *testing.T) {
	e := newEnv(t, envOpts{})
	for i := range 4 {
		migWriteBacking(t, e, fmt.Sprintf("f%d.bin", i), pattern(byte(i), 3000), 0o644)
	}
	m := mountedMigrator(t, e, Options{Workers: 1})
	var once sync.Once
	m.hooks.progress = func(_ context.Context, rel string, work int64) {
		if rel == "f1.bin" && work >= 6000 { // verified: the file will be done
			once.Do(func() { e.logout(); e.login() })
		}
	}
	s := migRun(t, m)
	if s.State != task.Failed || !strings.Contains(s.Error, "key was cleared") || s.FilesDone != 2 {
		t.Fatalf("%+v", s)
	}
	migCheckNoTemps(t, e)
}

// TestMigrateCancel: cancelling in the middle of a large file ends the
// task cancelled, with the file untouched and no temp file.
func TestMigrateCancel(t *testing.T) {
	e := newEnv(t, envOpts{})
	big := pattern(7, 6*convertChunk)
	migWriteBacking(t, e, "a.bin", pattern(6, 1000), 0o644)
	migWriteBacking(t, e, "big.bin", big, 0o644)
	migWriteBacking(t, e, "c.bin", pattern(8, 1000), 0o644)
	m := mountedMigrator(t, e, Options{Workers: 1})
	reached := make(chan struct{})
	var once sync.Once
	m.hooks.progress = func(ctx context.Context, rel string, work int64) {
		if rel == "big.bin" && work >= convertChunk {
			once.Do(func() {
				close(reached)
				<-ctx.Done() // hold the file until the cancel arrives
			})
		}
	}
	s0, _, err := m.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	<-reached
	// A second Start returns the running task.
	if again, started, err := m.Start(context.Background()); err != nil || started || again.ID != s0.ID || again.State != task.Running {
		t.Fatalf("second start: %+v %v %v", again, started, err)
	}
	if _, err := m.Cancel(s0.ID); err != nil {
		t.Fatal(err)
	}
	s := m.wait(s0.ID)
	if s.State != task.Cancelled || s.Error != "" || s.FilesDone != 1 {
		t.Fatalf("after cancel: %+v", s)
	}
	if !bytes.Equal(e.backingBytes("big.bin"), big) {
		t.Fatal("big.bin changed")
	}
	if e.isEncrypted("c.bin") {
		t.Error("c.bin converted after the cancel")
	}
	migCheckNoTemps(t, e)
	// Cancelling a finished task returns it unchanged.
	if s2, err := m.Cancel(s0.ID); err != nil || s2.State != task.Cancelled || s2.FinishedAt != s.FinishedAt {
		t.Fatalf("cancel again: %+v %v", s2, err)
	}
	if _, err := m.Cancel("nope"); !errors.Is(err, task.ErrNotFound) {
		t.Fatalf("cancel unknown: %v", err)
	}
	if _, ok := m.Get("nope"); ok {
		t.Fatal("get unknown")
	}
	m.hooks.progress = nil
	if s := migRun(t, m); s.State != task.Succeeded || s.FilesDone != 2 {
		t.Fatalf("resume: %+v", s)
	}
	if got := mustRead(t, e.m("big.bin")); !bytes.Equal(got, big) {
		t.Fatal("big.bin differs")
	}
}

// TestMigrateBusyFd: a file open through the mount is not converted while
// it is open; reads through that descriptor, before, during and after the
// task, see its content; once closed, the next run converts it. (A write
// through the mount would encrypt it in place first: fs's TestDowngrade.)
func TestMigrateBusyFd(t *testing.T) {
	e := newEnv(t, envOpts{})
	want := pattern(9, 10000)
	migWriteBacking(t, e, "busy.bin", want, 0o644)
	migWriteBacking(t, e, "other.bin", pattern(10, 3000), 0o644)
	f, err := os.Open(e.m("busy.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	write := func(tag string) {
		got := make([]byte, len(want)+1)
		if n, err := f.ReadAt(got, 0); n != len(want) || !bytes.Equal(got[:n], want) {
			t.Errorf("read %s: %d bytes (%v)", tag, n, err)
		}
	}
	write("before")

	m := mountedMigrator(t, e, Options{RetryRounds: 2, RetryDelay: 5 * time.Millisecond})
	var rounds []int
	m.hooks.busy = func(rel string, round int) {
		if rel != "busy.bin" {
			t.Errorf("busy: %s", rel)
		}
		rounds = append(rounds, round)
		write(fmt.Sprint("during ", round))
	}
	s := migRun(t, m)
	migCheckFinal(t, s)
	if s.State != task.Succeeded || s.FilesBusy != 1 || s.FilesDone != 1 || fmt.Sprint(rounds) != "[0 1 2]" {
		t.Fatalf("status %+v, busy rounds %v", s, rounds)
	}
	if s.FilesLeftPlaintext != 1 || fmt.Sprint(s.LeftPlaintext) != fmt.Sprint([]task.File{{Path: "busy.bin", Reason: task.ReasonBusy}}) {
		t.Fatalf("left plaintext: %d %+v", s.FilesLeftPlaintext, s.LeftPlaintext)
	}
	write("after")
	if got := mustRead(t, e.m("busy.bin")); !bytes.Equal(got, want) {
		t.Fatalf("through the mount: %d bytes, want %d", len(got), len(want))
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(e.backingBytes("busy.bin"), want) {
		t.Fatal("backing plaintext differs")
	}
	m.hooks.busy = nil
	s2 := migRun(t, m)
	if s2.State != task.Succeeded || s2.FilesDone != 1 || s2.FilesBusy != 0 {
		t.Fatalf("second run: %+v", s2)
	}
	if !e.isEncrypted("busy.bin") {
		t.Fatal("busy.bin not encrypted after it was closed")
	}
	if got := mustRead(t, e.m("busy.bin")); !bytes.Equal(got, want) {
		t.Fatal("content differs after conversion")
	}
	migCheckNoTemps(t, e)
}

// TestMigrateBusyThenClosed: a file closed while the task waits to retry
// it is converted in the retry round.
func TestMigrateBusyThenClosed(t *testing.T) {
	e := newEnv(t, envOpts{})
	want := pattern(11, 5000)
	migWriteBacking(t, e, "x.bin", want, 0o644)
	f, err := os.Open(e.m("x.bin"))
	if err != nil {
		t.Fatal(err)
	}
	m := mountedMigrator(t, e, Options{RetryRounds: 3, RetryDelay: 5 * time.Millisecond})
	m.hooks.busy = func(rel string, round int) {
		if round == 0 {
			f.Close()
		}
	}
	s := migRun(t, m)
	if s.State != task.Succeeded || s.FilesDone != 1 || s.FilesBusy != 0 {
		t.Fatalf("%+v", s)
	}
	if !e.isEncrypted("x.bin") {
		t.Fatal("not encrypted")
	}
	if got := mustRead(t, e.m("x.bin")); !bytes.Equal(got, want) {
		t.Fatal("content differs")
	}
}

// TestMigrateConcurrentAppend: a writer that opens, appends and closes
// over and over while the task runs loses nothing.
func TestMigrateConcurrentAppend(t *testing.T) {
	e := newEnv(t, envOpts{})
	for i := range 40 {
		migWriteBacking(t, e, fmt.Sprintf("d%d/f%d.bin", i%4, i), pattern(byte(i), 20000+i*977), 0o644)
	}
	migWriteBacking(t, e, "log.bin", []byte("start\n"), 0o644)
	m := mountedMigrator(t, e, Options{RetryRounds: 5, RetryDelay: 2 * time.Millisecond})

	want := []byte("start\n")
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			rec := fmt.Appendf(nil, "line %d\n", i)
			f, err := os.OpenFile(e.m("log.bin"), os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Errorf("open: %v", err)
				return
			}
			if _, err := f.Write(rec); err != nil {
				t.Errorf("write: %v", err)
			}
			f.Close()
			want = append(want, rec...)
		}
	}()
	s := migRun(t, m)
	close(stop)
	<-done
	t.Logf("first run: done %d busy %d", s.FilesDone, s.FilesBusy)
	if s.State != task.Succeeded {
		t.Fatalf("%+v", s)
	}
	if got := mustRead(t, e.m("log.bin")); !bytes.Equal(got, want) {
		t.Fatalf("log.bin: %d bytes, want %d", len(got), len(want))
	}
	s2 := migRun(t, m)
	if s2.State != task.Succeeded || s2.FilesBusy != 0 {
		t.Fatalf("second run: %+v", s2)
	}
	if !e.isEncrypted("log.bin") {
		t.Fatal("log.bin not encrypted")
	}
	if got := mustRead(t, e.m("log.bin")); !bytes.Equal(got, want) {
		t.Fatal("log.bin differs after conversion")
	}
	migCheckNoTemps(t, e)
}

// TestMigrateCloseStopsTask: Close cancels a running task and waits.
func TestMigrateCloseStopsTask(t *testing.T) {
	e := newEnv(t, envOpts{})
	big := pattern(3, 4*convertChunk)
	migWriteBacking(t, e, "big.bin", big, 0o644)
	m := mountedMigrator(t, e, Options{})
	reached := make(chan struct{})
	var once sync.Once
	m.hooks.progress = func(ctx context.Context, rel string, work int64) {
		once.Do(func() { close(reached); <-ctx.Done() })
	}
	s0, _, err := m.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	<-reached
	m.Close()
	s, _ := m.Get(s0.ID)
	if s.State != task.Cancelled || s.FinishedAt.IsZero() {
		t.Fatalf("%+v", s)
	}
	if !bytes.Equal(e.backingBytes("big.bin"), big) {
		t.Fatal("big.bin changed")
	}
	migCheckNoTemps(t, e)
}

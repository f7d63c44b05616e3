package migrate

import (
	"context"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mountd/mountd/crypto"
	"github.com/mountd/mountd/fs"
	"github.com/mountd/mountd/task"
)

// A fake filesystem for the migration: no FUSE, no root, no disk. Each
// test runs in microseconds and decides every outcome.

// fakeFile is a protected file of the fake tree and what converting it
// meets.
type fakeFile struct {
	size     int64
	walkSkip fs.SkipReason // what the walk reports
	prepSkip fs.SkipReason // what PrepareConversion reports
	busy     int           // PrepareConversion says ErrBusy this many times
	noSpace  int           // ... and then ENOSPC this many times
	err      error         // ... and then fails with err
}

type fakeConverter struct {
	mu        sync.Mutex
	files     map[string]*fakeFile
	unread    []string // directories the walk cannot read
	onPrepare func(rel string)
	syncErr   error // of SyncFS

	prepared, committed, aborted, removed, syncedDirs []string
	inPrep, maxInPrep                                 int
	held                                              int // copies prepared, not committed or aborted
	maxHeld                                           int
}

func newFake(files map[string]*fakeFile) *fakeConverter {
	return &fakeConverter{files: files}
}

func (c *fakeConverter) walk(ctx context.Context, found func(fs.Candidate) error, unreadable func(string, error) error) error {
	for _, d := range c.unread {
		if err := unreadable(d, syscall.EACCES); err != nil {
			return err
		}
	}
	rels := make([]string, 0, len(c.files))
	for rel := range c.files {
		rels = append(rels, rel)
	}
	slices.Sort(rels)
	for _, rel := range rels {
		f := c.files[rel]
		cand := fs.Candidate{Rel: rel, Skip: f.walkSkip}
		if f.walkSkip == fs.NotSkipped {
			cand.Size = f.size
		}
		if err := found(cand); err != nil {
			return err
		}
	}
	return ctx.Err()
}

func (c *fakeConverter) prepare(ctx context.Context, rel string, o fs.PrepareOptions) (prepared, fs.Outcome) {
	if c.onPrepare != nil {
		c.onPrepare(rel)
	}
	c.mu.Lock()
	c.inPrep++
	c.maxInPrep = max(c.maxInPrep, c.inPrep)
	f := c.files[rel]
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.inPrep--
		c.mu.Unlock()
	}()
	if err := ctx.Err(); err != nil {
		return nil, fs.Outcome{Err: err}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case f.prepSkip != fs.NotSkipped:
		return nil, fs.Outcome{Skip: f.prepSkip}
	case f.busy > 0:
		f.busy--
		return nil, fs.Outcome{Err: fs.ErrBusy}
	case f.noSpace > 0:
		f.noSpace--
		return nil, fs.Outcome{Err: fmt.Errorf("write: %w", syscall.ENOSPC)}
	case f.err != nil:
		return nil, fs.Outcome{Err: f.err}
	}
	if o.Progress != nil {
		o.Progress(2 * f.size)
	}
	c.prepared = append(c.prepared, rel)
	c.held++
	c.maxHeld = max(c.maxHeld, c.held)
	return &fakePrepared{c: c, rel: rel}, fs.Outcome{}
}

func (c *fakeConverter) syncDir(rel string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.syncedDirs = append(c.syncedDirs, rel)
	return nil
}

func (c *fakeConverter) removeTemp(rel string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.removed = append(c.removed, rel)
	return nil
}

type fakePrepared struct {
	c   *fakeConverter
	rel string
}

func (p *fakePrepared) Rel() string   { return p.rel }
func (p *fakePrepared) Upgrade() bool { return false }
func (p *fakePrepared) SyncFS() error {
	p.c.mu.Lock()
	defer p.c.mu.Unlock()
	return p.c.syncErr
}
func (p *fakePrepared) Sync() error { return nil }
func (p *fakePrepared) Commit(o fs.CommitOptions) fs.Outcome {
	p.c.mu.Lock()
	p.c.committed = append(p.c.committed, p.rel)
	p.c.held--
	p.c.mu.Unlock()
	if o.KeepOld != nil {
		o.KeepOld(path.Join(path.Dir(p.rel), tempPrefix+"0123456789abcdef"))
	}
	return fs.Outcome{}
}
func (p *fakePrepared) Abort() {
	p.c.mu.Lock()
	defer p.c.mu.Unlock()
	p.c.aborted = append(p.c.aborted, p.rel)
	p.c.held--
}

// fakeKey is a key that a test sets and clears.
type fakeKey struct {
	mu        sync.Mutex
	set       bool
	listeners map[int]func()
	next      int
}

func (k *fakeKey) IsSet() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.set
}

func (k *fakeKey) OnClear(fn func()) func() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.listeners == nil {
		k.listeners = map[int]func(){}
	}
	id := k.next
	k.next++
	k.listeners[id] = fn
	return func() {
		k.mu.Lock()
		delete(k.listeners, id)
		k.mu.Unlock()
	}
}

func (k *fakeKey) clear() {
	k.mu.Lock()
	k.set = false
	fns := make([]func(), 0, len(k.listeners))
	for _, fn := range k.listeners {
		fns = append(fns, fn)
	}
	k.mu.Unlock()
	for _, fn := range fns {
		fn()
	}
}

// fakeRun runs one task on c to its end.
func fakeRun(t *testing.T, c *fakeConverter, k *fakeKey, o Options) (*Migrator, task.Record) {
	t.Helper()
	if o.RetryDelay == 0 {
		o.RetryDelay = time.Nanosecond
	}
	m := newMigrator(c, k, o)
	t.Cleanup(m.Close)
	s, started, err := m.Start(context.Background())
	if err != nil || !started {
		t.Fatalf("start: %v %v", started, err)
	}
	return m, m.wait(s.ID)
}

// TestFakeOutcomes: every way a file can end is counted once, under the
// task record's names, with no stat to rediscover a skip reason; every
// prepared copy is committed, its old plaintext removed and its directory
// synced.
func TestFakeOutcomes(t *testing.T) {
	c := newFake(map[string]*fakeFile{
		"a/ok1.bin":   {size: 10},
		"a/ok2.bin":   {size: 20},
		"b/ok3.bin":   {size: 30},
		"enc.bin":     {walkSkip: fs.SkipEncrypted},
		"empty.bin":   {walkSkip: fs.SkipEmpty},
		"fifo.bin":    {walkSkip: fs.SkipNotRegular},
		"links.bin":   {walkSkip: fs.SkipHardLinks},
		"gone.bin":    {size: 5, prepSkip: fs.SkipGone},
		"linked.bin":  {size: 5, prepSkip: fs.SkipHardLinks},
		"changed.bin": {size: 5, prepSkip: fs.SkipOther},
		"bad.bin":     {size: 7, err: syscall.EIO},
	})
	c.unread = []string{"locked"}
	m, s := fakeRun(t, c, &fakeKey{set: true}, Options{})
	migCheckFinal(t, s)
	if s.State != task.Failed || s.FilesDone != 3 || s.FilesFailed != 2 || s.FilesTotal != 12 {
		t.Fatalf("%+v", s)
	}
	want := map[string]int64{
		task.SkipAlreadyEncrypted: 1, task.SkipEmpty: 1, task.SkipNotRegular: 1, task.SkipHardLinks: 2,
		task.SkipGone: 1, task.SkipOther: 1,
	}
	if fmt.Sprint(s.SkippedReasons) != fmt.Sprint(want) {
		t.Errorf("skipped %v, want %v", s.SkippedReasons, want)
	}
	if s.BytesTotal != 10+20+30+5+5+5+7 {
		t.Errorf("bytes_total %d", s.BytesTotal)
	}
	slices.Sort(c.committed)
	if fmt.Sprint(c.committed) != "[a/ok1.bin a/ok2.bin b/ok3.bin]" || len(c.aborted) != 0 || c.held != 0 {
		t.Errorf("committed %v, aborted %v, held %d", c.committed, c.aborted, c.held)
	}
	if len(c.removed) != 3 {
		t.Errorf("removed %v", c.removed)
	}
	slices.Sort(c.syncedDirs)
	if fmt.Sprint(slices.Compact(c.syncedDirs)) != "[a b]" {
		t.Errorf("synced dirs %v", c.syncedDirs)
	}
	if got := m.List(); len(got) != 1 || got[0].ID != s.ID {
		t.Errorf("list %+v", got)
	}
}

// TestFakeBusyRetried: a file busy for two rounds converts in the third;
// one busy in every round is counted busy and listed.
func TestFakeBusyRetried(t *testing.T) {
	c := newFake(map[string]*fakeFile{
		"twice.bin":  {size: 1, busy: 2},
		"always.bin": {size: 1, busy: 1 << 30},
	})
	var mu sync.Mutex
	rounds := map[string][]int{}
	m := newMigrator(c, &fakeKey{set: true}, Options{RetryRounds: 3, RetryDelay: time.Nanosecond})
	t.Cleanup(m.Close)
	m.hooks.busy = func(rel string, round int) {
		mu.Lock()
		rounds[rel] = append(rounds[rel], round)
		mu.Unlock()
	}
	s0, _, err := m.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	s := m.wait(s0.ID)
	migCheckFinal(t, s)
	if s.State != task.Succeeded || s.FilesDone != 1 || s.FilesBusy != 1 || len(s.LeftPlaintext) != 1 ||
		s.LeftPlaintext[0].Path != "always.bin" || s.LeftPlaintext[0].Reason != task.ReasonBusy {
		t.Fatalf("%+v", s)
	}
	if fmt.Sprint(rounds["twice.bin"]) != "[0 1]" || fmt.Sprint(rounds["always.bin"]) != "[0 1 2 3]" {
		t.Errorf("busy rounds %v", rounds)
	}
}

// TestFakeLogoutMidRun: a logout while files are being prepared stops the
// task with the key-cleared error; copies prepared before it still
// commit (they are whole and checked), the rest are never prepared.
func TestFakeLogoutMidRun(t *testing.T) {
	files := map[string]*fakeFile{}
	for i := range 20 {
		files[fmt.Sprintf("f%02d.bin", i)] = &fakeFile{size: 100}
	}
	c := newFake(files)
	k := &fakeKey{set: true}
	c.onPrepare = func(rel string) {
		if rel == "f05.bin" {
			k.clear() // the listener cancels the task before f05 is prepared
		}
	}
	_, s := fakeRun(t, c, k, Options{Workers: 1})
	if s.State != task.Failed || s.Error != keyClearedMsg {
		t.Fatalf("%+v", s)
	}
	if s.FilesDone != 5 || len(c.committed) != 5 || slices.Contains(c.prepared, "f05.bin") || c.held != 0 {
		t.Fatalf("done %d, committed %v, prepared %v", s.FilesDone, c.committed, c.prepared)
	}
}

// TestFakeNoSpace: a copy that does not fit is tried again alone once the
// batch is committed and the old plaintexts removed, and from then on
// files go one at a time; a file that still does not fit stops the task
// with its name and ENOSPC.
func TestFakeNoSpace(t *testing.T) {
	files := map[string]*fakeFile{"f00.bin": {size: 1, noSpace: 1}}
	for i := 1; i < 12; i++ {
		files[fmt.Sprintf("f%02d.bin", i)] = &fakeFile{size: 1}
	}
	c := newFake(files)
	_, s := fakeRun(t, c, &fakeKey{set: true}, Options{Workers: 4})
	migCheckFinal(t, s)
	if s.State != task.Succeeded || s.FilesDone != 12 {
		t.Fatalf("%+v", s)
	}

	c = newFake(map[string]*fakeFile{"a.bin": {size: 1}, "full.bin": {size: 1, noSpace: 2}})
	_, s = fakeRun(t, c, &fakeKey{set: true}, Options{Workers: 1})
	if s.State != task.Failed || !strings.Contains(s.Error, "full.bin") || !strings.Contains(s.Error, syscall.ENOSPC.Error()) {
		t.Fatalf("%+v", s)
	}
	if len(c.committed) != 1 || c.held != 0 {
		t.Errorf("committed %v, held %d", c.committed, c.held)
	}
}

// TestSpaceGate: workers prepare together until a copy does not fit;
// that one is prepared again alone after makeRoom, and every later file
// alone, made room for before and committed (makeRoom) after.
func TestSpaceGate(t *testing.T) {
	var mu sync.Mutex
	var in, maxIn, rooms int
	g := &spaceGate{makeRoom: func() { mu.Lock(); rooms++; mu.Unlock() }}
	prep := func(out fs.Outcome, barrier *sync.WaitGroup) func() (prepared, fs.Outcome) {
		return func() (prepared, fs.Outcome) {
			mu.Lock()
			in++
			maxIn = max(maxIn, in)
			mu.Unlock()
			if barrier != nil {
				barrier.Done()
				barrier.Wait() // both workers inside at once: shared
			}
			mu.Lock()
			in--
			mu.Unlock()
			if out.Err != nil {
				o := out
				out = fs.Outcome{} // the second try fits
				return nil, o
			}
			return &fakePrepared{c: newFake(nil)}, fs.Outcome{}
		}
	}
	var added int
	add := func(prepared) { mu.Lock(); added++; mu.Unlock() }
	var barrier, wg sync.WaitGroup
	barrier.Add(2)
	for range 2 {
		wg.Go(func() {
			if out, ok := g.run(prep(fs.Outcome{}, &barrier), add); !ok || !out.Done() {
				t.Errorf("shared: %+v %v", out, ok)
			}
		})
	}
	wg.Wait()
	if maxIn != 2 || rooms != 0 || g.low.Load() {
		t.Fatalf("shared phase: %d at once, %d makeRoom, low %v", maxIn, rooms, g.low.Load())
	}
	out, ok := g.run(prep(fs.Outcome{Err: syscall.ENOSPC}, nil), add)
	if !ok || !out.Done() || !g.low.Load() || rooms != 2 {
		t.Fatalf("no space: %+v %v, low %v, %d makeRoom (want before and after the retry)", out, ok, g.low.Load(), rooms)
	}
	out, ok = g.run(prep(fs.Outcome{Err: syscall.ENOSPC}, nil), add)
	if ok || !isNoSpace(out.Err) || rooms != 3 {
		t.Fatalf("still no space: %+v %v, %d makeRoom", out, ok, rooms)
	}
	if added != 3 {
		t.Errorf("%d added", added)
	}
}

// TestBatcherBounds: a batch is committed when it holds maxFiles files,
// or maxBytes, or when its age timer fires; flush commits the rest.
func TestBatcherBounds(t *testing.T) {
	var batches [][]string
	b := newBatcher(func(items []batchItem) {
		var rels []string
		for _, it := range items {
			rels = append(rels, it.p.Rel())
			it.finish(fs.Outcome{})
		}
		batches = append(batches, rels)
	})
	var fire []func()
	stopped := 0
	b.maxFiles, b.maxBytes = 3, 100
	b.afterFunc = func(d time.Duration, f func()) func() bool {
		fire = append(fire, f)
		return func() bool { stopped++; return true }
	}
	p := func(rel string) prepared { return &fakePrepared{c: newFake(nil), rel: rel} }
	finished := 0
	fin := func(fs.Outcome) { finished++ }
	for _, r := range []string{"a", "b", "c", "d"} {
		b.add(p(r), 1, fin) // a b c: full by count
	}
	b.add(p("big"), 200, fin) // d big: full by bytes
	b.add(p("e"), 1, fin)
	fire[len(fire)-1]() // e: its age
	fire[0]()           // a stale timer: nothing
	b.add(p("f"), 1, fin)
	b.flush()
	got := fmt.Sprint(batches)
	if got != "[[a b c] [d big] [e] [f]]" || finished != 7 || stopped != 4 {
		t.Fatalf("batches %s, %d finished, %d timers stopped", got, finished, stopped)
	}
}

// TestRemover: drain waits for every queued removal; finish for the
// goroutines.
func TestRemover(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	var done []string
	rm := startRemover(2, func(rel string) {
		<-release
		mu.Lock()
		done = append(done, rel)
		mu.Unlock()
	})
	for i := range 5 {
		rm.add(fmt.Sprint(i))
	}
	drained := make(chan struct{})
	go func() { rm.drain(); close(drained) }()
	select {
	case <-drained:
		t.Fatal("drain returned with removals pending")
	default:
	}
	close(release)
	<-drained
	mu.Lock()
	n := len(done)
	mu.Unlock()
	if n != 5 {
		t.Fatalf("%d removed after drain", n)
	}
	rm.finish()
}

// TestFakeStartNeedsKey: no key, no task; after Close, no task either.
func TestFakeStartNeedsKey(t *testing.T) {
	k := &fakeKey{}
	m := newMigrator(newFake(nil), k, Options{})
	if _, _, err := m.Start(context.Background()); !errors.Is(err, crypto.ErrLocked) {
		t.Fatalf("start: %v", err)
	}
	if _, ok := m.Last(); ok {
		t.Fatal("a task exists")
	}
	m.Close()
	k.set = true
	if _, _, err := m.Start(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("start after close: %v", err)
	}
}

// TestFakeForgetsOldTasks: the Migrator remembers maxMigrations tasks,
// forgetting the oldest finished ones.
func TestFakeForgetsOldTasks(t *testing.T) {
	m := newMigrator(newFake(nil), &fakeKey{set: true}, Options{})
	defer m.Close()
	var first string
	for i := range maxMigrations + 2 {
		s, _, err := m.Start(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = s.ID
		}
		m.wait(s.ID)
	}
	if n := len(m.List()); n != maxMigrations {
		t.Fatalf("%d tasks remembered", n)
	}
	if _, ok := m.Get(first); ok {
		t.Fatal("the oldest task is still there")
	}
}

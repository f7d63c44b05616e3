package migrate

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/mountd/mountd/crypto"
	"github.com/mountd/mountd/fs"
	"github.com/mountd/mountd/logkey"
	"github.com/mountd/mountd/task"
)

// A task runs in two phases. It first walks the tree and counts (files and
// bytes; fs.WalkProtected reads four bytes of each candidate to skip what
// is already encrypted), keeping only the paths still to convert; then a
// few workers prepare the encrypted copies (fs.Root.PrepareConversion)
// and a batcher makes them durable and puts them in place many at a time
// (batch.go). Memory is bounded by the number of paths, never by file
// sizes: each worker copies through one pooled 2 MiB buffer.

var (
	// ErrClosed: Start after Close.
	ErrClosed = errors.New("migrate: migrator closed")

	errKeyCleared = errors.New("file encryption key was cleared")
	errCancelled  = errors.New("cancelled")
	errShutdown   = errors.New("mountd is shutting down")
)

// keyClearedMsg is the error of a task stopped by a logout.
const keyClearedMsg = "file encryption key was cleared; the files encrypted so far stay encrypted: log in and start the task again to finish"

// Options tune a Migrator. The zero value is fine.
type Options struct {
	// Workers is how many files are converted at once (default 4): more
	// than one overlaps the encryption with the file system calls.
	Workers int
	// RetryRounds is how many times files that were busy (open through
	// the mount, or changed during their copy) are tried again after the
	// first pass (default 3; negative: none), waiting RetryDelay before
	// the first round (default 500ms) and twice as long before each next
	// one.
	RetryRounds int
	RetryDelay  time.Duration
	// Log receives the task's log lines; nil discards them.
	Log *logrus.Entry
}

// Migrator runs migration tasks on a filesystem, one at a time, and
// remembers the finished ones. Close it before the filesystem.
type Migrator struct {
	conv        converter
	kr          keyState
	backing     string // for the log
	log         *logrus.Entry
	workers     int
	retryRounds int
	retryDelay  time.Duration
	hooks       hooks

	mu     sync.Mutex
	tasks  map[string]*migration
	order  []string   // ids, oldest first
	cur    *migration // running, or nil
	last   *migration // the latest task
	closed bool
}

// hooks let tests act at precise moments. They run in the task's
// goroutines.
type hooks struct {
	// progress runs after each chunk of rel is copied or verified; work
	// is the bytes processed so far (twice the file size at the end).
	progress func(ctx context.Context, rel string, work int64)
	// busy runs when rel was found busy in round (0: the first pass).
	busy func(rel string, round int)
	// commit runs before a batch is made durable, with its files.
	commit func(rels []string)
	// syncfs, if set, replaces the SyncFS of a batch.
	syncfs func(p prepared) error
}

// maxMigrations bounds how many tasks a Migrator remembers; the oldest
// finished ones are forgotten first.
const maxMigrations = 256

// New returns a Migrator for the filesystem r, whose key is kr.
func New(r *fs.Root, kr *crypto.Keyring, o Options) *Migrator {
	m := newMigrator(fsConverter{r}, kr, o)
	m.backing = r.Backing()
	return m
}

func newMigrator(c converter, kr keyState, o Options) *Migrator {
	if o.Workers <= 0 {
		o.Workers = 4
	}
	if o.RetryRounds < 0 {
		o.RetryRounds = 0
	} else if o.RetryRounds == 0 {
		o.RetryRounds = 3
	}
	if o.RetryDelay <= 0 {
		o.RetryDelay = 500 * time.Millisecond
	}
	log := o.Log
	if log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		log = logrus.NewEntry(l)
	}
	return &Migrator{
		conv:        c,
		kr:          kr,
		log:         log.WithField(logkey.Component, "migrate"),
		workers:     o.Workers,
		retryRounds: o.RetryRounds,
		retryDelay:  o.RetryDelay,
		tasks:       map[string]*migration{},
	}
}

// Start starts a task and returns its first snapshot with started true,
// or the running task with started false. It needs the key: without it
// the error wraps crypto.ErrLocked. ctx bounds the call only.
func (m *Migrator) Start(ctx context.Context) (task.Record, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return task.Record{}, false, ErrClosed
	}
	if m.cur != nil {
		return m.cur.snapshotLocked(), false, nil
	}
	if !m.kr.IsSet() {
		return task.Record{}, false, fmt.Errorf("migrate: start: %w", crypto.ErrLocked)
	}
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return task.Record{}, false, err
	}
	tctx, cancel := context.WithCancelCause(context.Background())
	t := &migration{
		m:      m,
		id:     "encrypt-" + hex.EncodeToString(rnd[:]),
		cancel: cancel,
		done:   make(chan struct{}),
	}
	t.st = task.New(t.id, task.KindEncryptExisting, time.Now())
	// A logout stops the task: its listener runs once the key is marked
	// cleared and the crypto calls in flight have returned (fs/doc.go).
	removeListener := m.kr.OnClear(func() { cancel(errKeyCleared) })
	if !m.kr.IsSet() { // cleared before the listener was in place
		removeListener()
		cancel(errKeyCleared)
		return task.Record{}, false, fmt.Errorf("migrate: start: %w", crypto.ErrLocked)
	}
	m.tasks[t.id] = t
	m.order = append(m.order, t.id)
	m.forgetOldLocked()
	m.cur, m.last = t, t
	go t.run(tctx, removeListener)
	return t.snapshotLocked(), true, nil
}

// forgetOldLocked drops the oldest finished tasks beyond maxMigrations.
func (m *Migrator) forgetOldLocked() {
	for len(m.order) > maxMigrations {
		id := m.order[0]
		if t := m.tasks[id]; t == m.cur || t == m.last {
			return
		}
		delete(m.tasks, id)
		m.order = m.order[1:]
	}
}

// List returns the tasks remembered, newest first.
func (m *Migrator) List() []task.Record {
	m.mu.Lock()
	defer m.mu.Unlock()
	list := make([]task.Record, 0, len(m.order))
	for i := len(m.order) - 1; i >= 0; i-- {
		list = append(list, m.tasks[m.order[i]].snapshotLocked())
	}
	return list
}

// Get returns the task with this id, running or finished.
func (m *Migrator) Get(id string) (task.Record, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.tasks[id]
	if t == nil {
		return task.Record{}, false
	}
	return t.snapshotLocked(), true
}

// Last returns the running task, else the latest one.
func (m *Migrator) Last() (task.Record, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.last == nil {
		return task.Record{}, false
	}
	return m.last.snapshotLocked(), true
}

// Cancel asks the task to stop and returns at once, so the snapshot may
// still say running: the workers abandon the files in progress at their
// next chunk (temp files removed, originals untouched) and the task ends
// cancelled. A finished task is returned unchanged; an unknown id gives
// task.ErrNotFound.
func (m *Migrator) Cancel(id string) (task.Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.tasks[id]
	if t == nil {
		return task.Record{}, fmt.Errorf("migrate: %w: %q", task.ErrNotFound, id)
	}
	t.cancel(errCancelled)
	return t.snapshotLocked(), nil
}

// Close stops the running task, if any, and waits for it; later Starts
// fail. Call it before closing the filesystem.
func (m *Migrator) Close() {
	m.mu.Lock()
	m.closed = true
	t := m.cur
	m.mu.Unlock()
	if t != nil {
		t.cancel(errShutdown)
		<-t.done
	}
}

// wait blocks until the task ends (tests).
func (m *Migrator) wait(id string) task.Record {
	m.mu.Lock()
	t := m.tasks[id]
	m.mu.Unlock()
	if t == nil {
		return task.Record{}
	}
	<-t.done
	m.mu.Lock()
	defer m.mu.Unlock()
	return t.snapshotLocked()
}

// migration is one task.
type migration struct {
	m      *Migrator
	id     string
	cancel context.CancelCauseFunc
	done   chan struct{} // closed when the task has ended

	// Guarded by m.mu.
	st        task.Record
	finished  int64 // planned bytes of the files the task is done with
	inflight  int64 // progress inside the files being converted
	converted int64 // bytes of the files actually encrypted
	// dirs holds the directories with renames not yet fsynced: the
	// conversions skip the per-file directory fsync and the task fsyncs
	// each directory once per batch (syncDirs).
	dirs map[string]struct{}
}

// item is a file still to convert.
type item struct {
	rel     string
	size    int64 // at counting time
	upgrade bool  // encrypted in version 1, not plaintext (at counting time)
}

func (t *migration) snapshotLocked() task.Record {
	return t.st.Clone()
}

// update runs fn on the record under the lock.
func (t *migration) update(fn func(st *task.Record)) {
	t.m.mu.Lock()
	fn(&t.st)
	t.m.mu.Unlock()
}

func (t *migration) run(ctx context.Context, removeListener func()) {
	defer close(t.done)
	defer removeListener()
	m := t.m
	log := m.log.WithField(logkey.TaskID, t.id)
	log.WithField(logkey.Backing, m.backing).Info("encrypt_existing_files: started")

	items, err := t.count(ctx)
	var stop error
	if err != nil {
		stop = err
	} else {
		m.mu.Lock()
		st := t.snapshotLocked()
		m.mu.Unlock()
		f := logrus.Fields(st.Counters())
		f["to_encrypt"] = len(items)
		log.WithFields(f).Info("encrypt_existing_files: counted")
		stop = t.convert(ctx, items)
	}
	t.finish(ctx, stop, log)
}

// finish records the final state and logs it.
func (t *migration) finish(ctx context.Context, stop error, log *logrus.Entry) {
	m := t.m
	if stop != nil && ctx.Err() != nil {
		stop = context.Cause(ctx)
	}
	m.mu.Lock()
	st := &t.st
	switch {
	case stop == nil && st.FilesFailed == 0:
		st.Finish(task.Succeeded, "", time.Now())
	case stop == nil:
		st.Finish(task.Failed, fmt.Sprintf("%d of %d files could not be read or encrypted (see the daemon log); they stay as they were", st.FilesFailed, st.FilesTotal), time.Now())
	case errors.Is(stop, errCancelled):
		st.Finish(task.Cancelled, "", time.Now())
	case errors.Is(stop, errShutdown):
		st.Finish(task.Cancelled, stop.Error(), time.Now())
	case errors.Is(stop, errKeyCleared), errors.Is(stop, crypto.ErrLocked):
		st.Finish(task.Failed, keyClearedMsg, time.Now())
	default:
		st.Finish(task.Failed, stop.Error(), time.Now())
	}
	dur := st.FinishedAt.Sub(st.StartedAt)
	final := t.snapshotLocked()
	converted := t.converted
	if m.cur == t {
		m.cur = nil
	}
	m.mu.Unlock()

	rate := 0.0
	if s := dur.Seconds(); s > 0 {
		rate = math.Round(float64(converted)/(1<<20)/s*10) / 10
	}
	f := logrus.Fields(final.Counters())
	f["state"], f["bytes_encrypted"], f["rate_mib_s"] = final.State, converted, rate
	f[logkey.DurMS] = logkey.MS(dur)
	if len(final.SkippedReasons) > 0 {
		f["skipped_reasons"] = final.SkippedReasons
	}
	if final.Error != "" {
		f["error"] = final.Error
	}
	log.WithFields(f).Info("encrypt_existing_files: finished")
}

// skipReason is the task record's name for why fs skipped a file.
func skipReason(r fs.SkipReason) string {
	switch r {
	case fs.SkipGone:
		return task.SkipGone
	case fs.SkipNotRegular:
		return task.SkipNotRegular
	case fs.SkipHardLinks:
		return task.SkipHardLinks
	case fs.SkipEmpty:
		return task.SkipEmpty
	case fs.SkipEncrypted:
		return task.SkipAlreadyEncrypted
	case fs.SkipDamaged:
		return task.SkipDamaged
	case fs.SkipOtherKey:
		return task.SkipOtherKey
	}
	return task.SkipOther
}

// count walks the backing tree, counts the protected files and returns
// the ones to convert. Files not to convert are counted as skipped now.
func (t *migration) count(ctx context.Context) ([]item, error) {
	var items []item
	err := t.m.conv.walk(ctx, func(c fs.Candidate) error {
		t.update(func(st *task.Record) {
			st.FilesTotal++
			if c.Skip != fs.NotSkipped {
				st.Skip(c.Rel, skipReason(c.Skip))
			} else {
				st.BytesTotal += c.Size
			}
		})
		if c.Skip == fs.NotSkipped {
			items = append(items, item{rel: c.Rel, size: c.Size, upgrade: c.Upgrade})
		}
		return nil
	}, func(rel string, err error) error {
		t.m.log.WithField(logkey.TaskID, t.id).WithField(logkey.Path, rel).WithError(err).
			Warn("encrypt_existing_files: cannot read; its protected files stay as they are")
		t.update(func(st *task.Record) { st.FilesTotal++; st.Fail(rel, err) })
		return nil
	})
	return items, err
}

// convert converts items with the workers, retrying busy ones, and
// counts busy what is still busy at the end. It returns why it stopped
// early, or nil.
func (t *migration) convert(ctx context.Context, items []item) error {
	m := t.m
	pending := items
	for round := 0; len(pending) > 0 && round <= m.retryRounds; round++ {
		if round > 0 {
			delay := m.retryDelay << (round - 1)
			m.log.WithFields(logrus.Fields{logkey.TaskID: t.id, logkey.Files: logkey.Count(len(pending)), "round": round, "delay_ms": delay.Milliseconds()}).
				Debug("encrypt_existing_files: retrying busy files")
			select {
			case <-ctx.Done():
				return context.Cause(ctx)
			case <-time.After(delay):
			}
		}
		var stop error
		pending, stop = t.pass(ctx, pending, round)
		if err := t.syncDirs(); err != nil && stop == nil {
			stop = err
		}
		if stop != nil {
			return stop
		}
	}
	for _, it := range pending {
		msg := "encrypt_existing_files: file still in use; it stays plaintext until the task runs again"
		if it.upgrade {
			msg = "encrypt_existing_files: file still in use; it stays in content format 1 until the task runs again"
		}
		m.log.WithFields(logrus.Fields{logkey.TaskID: t.id, logkey.Path: it.rel}).Info(msg)
		t.update(func(st *task.Record) {
			if it.upgrade {
				st.FilesBusy++ // encrypted all the same: not left plaintext
			} else {
				st.Busy(it.rel)
			}
			t.finishBytesLocked(it.size)
		})
	}
	return nil
}

// passState collects the outcomes of one pass. Outcomes arrive from the
// workers and from the batch commits.
type passState struct {
	t      *migration
	round  int
	cancel context.CancelCauseFunc
	mu     sync.Mutex
	busy   []item
	first  error
}

// result records that it must be retried, or that the task must stop.
func (ps *passState) result(it item, retry bool, stop error) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if retry {
		ps.busy = append(ps.busy, it)
		if h := ps.t.m.hooks.busy; h != nil {
			h(it.rel, ps.round)
		}
	}
	if stop != nil && ps.first == nil {
		ps.first = stop
		ps.cancel(stop)
	}
}

// pass tries each item once, on m.workers goroutines. It returns the
// items that were busy and, if the task must stop, why.
func (t *migration) pass(ctx context.Context, items []item, round int) (busy []item, stop error) {
	m := t.m
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	ps := &passState{t: t, round: round, cancel: cancel}
	rm := startRemover(removers, func(rel string) {
		if err := m.conv.removeTemp(rel); err != nil && !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ENOTDIR) {
			m.log.WithField(logkey.Path, rel).WithError(err).Warn("cannot remove the plaintext left by a conversion")
		}
	})
	b := newBatcher(func(items []batchItem) { t.commitBatch(ps, rm, items) })
	gate := &spaceGate{makeRoom: func() { b.takeCurrent(); rm.drain() }}
	var wg sync.WaitGroup
	work := make(chan item)
	for range min(m.workers, len(items)) {
		wg.Go(func() {
			for it := range work {
				t.one(ctx, ps, gate, b, it)
			}
		})
	}
feed:
	for _, it := range items {
		select {
		case work <- it:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	b.flush()
	rm.finish()
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.first == nil && ctx.Err() != nil {
		ps.first = context.Cause(ctx)
	}
	return ps.busy, ps.first
}

// one prepares one file through the gate, hands it to the batcher, and
// counts the outcome when it is known.
func (t *migration) one(ctx context.Context, ps *passState, gate *spaceGate, b *batcher, it item) {
	m := t.m
	if err := ctx.Err(); err != nil {
		ps.result(it, false, context.Cause(ctx))
		return
	}
	var work, reported int64 // work: bytes copied + verified
	progress := func(n int64) {
		work += n
		now := min(work/2, it.size)
		m.mu.Lock()
		t.inflight += now - reported
		reported = now
		t.st.BytesDone = max(t.st.BytesDone, t.finished+t.inflight)
		m.mu.Unlock()
		if m.hooks.progress != nil {
			m.hooks.progress(ctx, it.rel, work)
		}
	}
	upgrade := false
	finish := func(out fs.Outcome) {
		retry, stop := t.outcome(ctx, it, out, reported, upgrade)
		ps.result(it, retry, stop)
	}
	out, added := gate.run(func() (prepared, fs.Outcome) {
		work = 0
		return m.conv.prepare(ctx, it.rel, fs.PrepareOptions{Progress: progress})
	}, func(p prepared) { upgrade = p.Upgrade(); b.add(p, it.size, finish) })
	if !added {
		finish(out)
	}
}

// commitBatch makes the copies of a batch durable and puts them in place.
func (t *migration) commitBatch(ps *passState, rm *remover, items []batchItem) {
	m := t.m
	if h := m.hooks.commit; h != nil {
		rels := make([]string, len(items))
		for i, bi := range items {
			rels[i] = bi.p.Rel()
		}
		h(rels)
	}
	// One syncfs writes back every copy of the batch. If it fails (it
	// reports write-back errors of the whole filesystem), fsync each copy
	// to learn which ones are at fault; so too where it cannot make them
	// durable (fs.ErrNoSyncFS: sshfs, SMB).
	syncFS := prepared.SyncFS
	if h := m.hooks.syncfs; h != nil {
		syncFS = h
	}
	synced := syncFS(items[0].p) == nil
	// The kernel is told of the replaced names only once every claim of
	// the batch is dropped: a request waiting for one of them may hold a
	// directory lock that a notification needs (fs/doc.go).
	var notify []func()
	defer func() {
		for _, n := range notify {
			n()
		}
	}()
	co := fs.CommitOptions{Quiet: true, NoDirSync: true, KeepOld: rm.add, DeferNotify: func(n func()) { notify = append(notify, n) }}
	for _, bi := range items {
		if !synced {
			if err := bi.p.Sync(); err != nil {
				bi.finish(fs.Outcome{Err: err})
				continue
			}
		}
		bi.finish(bi.p.Commit(co))
	}
	if err := t.syncDirs(); err != nil {
		ps.result(item{}, false, err)
	}
}

// outcome counts how the conversion of it ended; reported is the
// progress counted for it so far; upgrade says that it re-encrypted a
// version 1 file. It returns retry for a file to try again later, and an
// error when the whole task must stop.
func (t *migration) outcome(ctx context.Context, it item, out fs.Outcome, reported int64, upgrade bool) (retry bool, stop error) {
	m := t.m
	m.mu.Lock()
	defer m.mu.Unlock()
	t.inflight -= reported
	st := &t.st
	err := out.Err
	switch {
	case out.Done():
		st.FilesDone++
		if upgrade {
			st.FilesUpgraded++
		}
		t.converted += it.size
		if t.dirs == nil {
			t.dirs = map[string]struct{}{}
		}
		t.dirs[filepath.Dir(it.rel)] = struct{}{}
	case err == nil:
		st.Skip(it.rel, skipReason(out.Skip))
		switch out.Skip {
		case fs.SkipDamaged:
			m.log.WithFields(logrus.Fields{logkey.TaskID: t.id, logkey.Path: it.rel}).
				Warn("encrypt_existing_files: encrypted file is damaged (a block fails authentication, or its end or header is cut); left as it is, not upgraded: check it with mountd fsck")
		case fs.SkipOtherKey:
			m.log.WithFields(logrus.Fields{logkey.TaskID: t.id, logkey.Path: it.rel}).
				Warn("encrypt_existing_files: file is encrypted in content format 1 under another master key; left as it is, not upgraded")
		}
	case out.Retry():
		return true, nil
	case ctx.Err() != nil:
		return false, context.Cause(ctx)
	case errors.Is(err, crypto.ErrLocked):
		return false, errKeyCleared
	case isNoSpace(err) || errors.Is(err, syscall.EROFS):
		return false, fmt.Errorf("%s: %w", it.rel, err)
	case it.upgrade:
		st.FilesFailed++ // encrypted all the same: not left plaintext
		m.log.WithFields(logrus.Fields{logkey.TaskID: t.id, logkey.Path: it.rel}).WithError(err).
			Warn("encrypt_existing_files: cannot upgrade file; it stays in content format 1")
	default:
		st.Fail(it.rel, err)
		m.log.WithFields(logrus.Fields{logkey.TaskID: t.id, logkey.Path: it.rel}).WithError(err).
			Warn("encrypt_existing_files: cannot encrypt file; it stays plaintext")
	}
	t.finishBytesLocked(it.size)
	return false, nil
}

// syncDirs fsyncs the directories with renames not yet durable.
func (t *migration) syncDirs() error {
	t.m.mu.Lock()
	dirs := t.dirs
	t.dirs = nil
	t.m.mu.Unlock()
	var first error
	for dir := range dirs {
		err := t.m.conv.syncDir(dir)
		if err != nil && !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ENOTDIR) && first == nil {
			first = fmt.Errorf("fsync directory %s: %w", dir, err)
		}
	}
	return first
}

// finishBytesLocked moves a file's planned bytes to finished. Caller
// holds m.mu.
func (t *migration) finishBytesLocked(size int64) {
	t.finished += size
	t.st.BytesDone = max(t.st.BytesDone, t.finished+t.inflight)
}

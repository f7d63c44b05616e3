package fs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/crypto"
	"github.com/mountd/mountd/task"
)

// The encrypt_existing_files migration: a task that walks the backing tree
// and encrypts in place every plaintext regular file with a protected name
// outside auth/. Each file goes through the two halves of encryptInPlace
// (convert.go), so a crash at any moment leaves it whole,
// old plaintext or new ciphertext, and at worst a temp file that
// RemoveStaleTemps deletes on the next start. Files open through the mount
// are not touched: they are retried a few times at the end, then counted as
// busy. Re-running the task resumes: what is encrypted is skipped.
//
// A task runs in two phases. It first walks the tree and counts (files and
// bytes, reading four bytes of each candidate to skip what is already
// encrypted), keeping only the paths still to convert; then a few workers
// prepare the encrypted copies (prepareConvert) and a batcher makes them
// durable and puts them in place many at a time (see Batches below).
// Memory is bounded by the number of paths, never by file sizes: each
// worker copies through one pooled 2 MiB buffer.

var (
	// ErrMigratorClosed: Start after Close.
	ErrMigratorClosed = errors.New("fs: migrator closed")

	errKeyCleared = errors.New("file encryption key was cleared")
	errCancelled  = errors.New("cancelled")
	errShutdown   = errors.New("mountd is shutting down")
)

// keyClearedMsg is the error of a task stopped by a logout.
const keyClearedMsg = "file encryption key was cleared; the files encrypted so far stay encrypted: log in and start the task again to finish"

// MigrationOptions tune a Migrator. The zero value is fine.
type MigrationOptions struct {
	// Workers is how many files are converted at once (default 4): more
	// than one overlaps the encryption with the file system calls.
	Workers int
	// RetryRounds is how many times files that were busy (open through
	// the mount, or changed during their copy) are tried again after the
	// first pass (default 3), waiting RetryDelay before the first round
	// (default 500ms) and twice as long before each next one.
	RetryRounds int
	RetryDelay  time.Duration
	// Log receives the task's log lines; nil means the Root's.
	Log *logrus.Entry
}

// Migrator runs migration tasks on a Root, one at a time, and remembers
// the finished ones. Close it before the Root.
type Migrator struct {
	r           *Root
	log         *logrus.Entry
	workers     int
	retryRounds int
	retryDelay  time.Duration
	hooks       migrateHooks

	mu     sync.Mutex
	tasks  map[string]*migration
	order  []string   // ids, oldest first
	cur    *migration // running, or nil
	last   *migration // the latest task
	closed bool
}

// migrateHooks let tests act at precise moments. They run in the task's
// goroutines.
type migrateHooks struct {
	// progress runs after each chunk of rel is copied or verified; work
	// is the bytes processed so far (twice the file size at the end).
	progress func(ctx context.Context, rel string, work int64)
	// busy runs when rel was found busy in round (0: the first pass).
	busy func(rel string, round int)
	// commit runs before a batch is made durable, with its files.
	commit func(rels []string)
	// syncfs, if set, replaces the syncfs of a batch.
	syncfs func(fd int) error
}

// maxMigrations bounds how many tasks a Migrator remembers; the oldest
// finished ones are forgotten first.
const maxMigrations = 256

const fieldTaskID = "task_id"

// NewMigrator returns a Migrator for r.
func NewMigrator(r *Root, o MigrationOptions) *Migrator {
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
		log = r.log
	}
	return &Migrator{
		r:           r,
		log:         log.WithField(fieldComponent, "migrate"),
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
		return task.Record{}, false, ErrMigratorClosed
	}
	if m.cur != nil {
		return m.cur.snapshotLocked(), false, nil
	}
	if !m.r.kr.IsSet() {
		return task.Record{}, false, fmt.Errorf("fs: start migration: %w", crypto.ErrLocked)
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
	// cleared and the crypto calls in flight have returned.
	removeListener := m.r.kr.OnClear(func() { cancel(errKeyCleared) })
	if !m.r.kr.IsSet() { // cleared before the listener was in place
		removeListener()
		cancel(errKeyCleared)
		return task.Record{}, false, fmt.Errorf("fs: start migration: %w", crypto.ErrLocked)
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
		return task.Record{}, fmt.Errorf("fs: %w: %q", task.ErrNotFound, id)
	}
	t.cancel(errCancelled)
	return t.snapshotLocked(), nil
}

// Close stops the running task, if any, and waits for it; later Starts
// fail. Call it before closing the Root.
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

// migItem is a file still to convert.
type migItem struct {
	rel  string
	size int64 // at counting time
}

func (t *migration) snapshotLocked() task.Record {
	return t.st.Clone()
}

// update runs fn on the status under the lock.
func (t *migration) update(fn func(st *task.Record)) {
	t.m.mu.Lock()
	fn(&t.st)
	t.m.mu.Unlock()
}

func (t *migration) run(ctx context.Context, removeListener func()) {
	defer close(t.done)
	defer removeListener()
	m := t.m
	log := m.log.WithField(fieldTaskID, t.id)
	log.WithField("backing", m.r.backing).Info("encrypt_existing_files: started")

	items, err := t.count(ctx)
	var stop error
	if err != nil {
		stop = err
	} else {
		m.mu.Lock()
		st := t.snapshotLocked()
		m.mu.Unlock()
		log.WithFields(logrus.Fields{
			"files_total": st.FilesTotal, "to_encrypt": len(items),
			"bytes_total": st.BytesTotal, "files_skipped": st.FilesSkipped,
		}).Info("encrypt_existing_files: counted")
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
	f := logrus.Fields{
		"state": final.State, "files_total": final.FilesTotal, "files_done": final.FilesDone,
		"files_skipped": final.FilesSkipped, "files_busy": final.FilesBusy, "files_failed": final.FilesFailed,
		"files_left_plaintext": final.FilesLeftPlaintext, "bytes_total": final.BytesTotal,
		"bytes_done": final.BytesDone, "bytes_encrypted": converted,
		"dur_ms": dur.Milliseconds(), "rate_mib_s": rate,
	}
	if len(final.SkippedReasons) > 0 {
		f["skipped_reasons"] = final.SkippedReasons
	}
	if final.Error != "" {
		f["error"] = final.Error
	}
	log.WithFields(f).Info("encrypt_existing_files: finished")
}

// count walks the backing tree, counts the protected files and returns
// the ones to convert. Files not to convert are counted as skipped now.
func (t *migration) count(ctx context.Context) ([]migItem, error) {
	r := t.m.r
	var items []migItem
	err := walkTree(ctx, r.rootFd, func(e walkEntry) error {
		if e.typ == unix.S_IFDIR || strings.HasPrefix(e.name, tempPrefix) || !r.protected(e.name) {
			return nil
		}
		reason := ""
		var size int64
		if e.typ != unix.S_IFREG {
			reason = task.SkipNotRegular
		} else {
			var x unix.Statx_t
			switch err := statAt(e.dir, e.name, &x); {
			case err == unix.ENOENT:
				return nil
			case err != nil:
				// Let the conversion report it.
			case !isReg(&x):
				reason = task.SkipNotRegular
			case x.Nlink > 1:
				reason = task.SkipHardLinks
			case x.Size == 0:
				reason = task.SkipEmpty
			default:
				size = int64(x.Size)
				if enc, err := hasMagicAt(e.dir, e.name); err == nil && enc {
					reason = task.SkipAlreadyEncrypted
				}
			}
		}
		t.update(func(st *task.Record) {
			st.FilesTotal++
			if reason != "" {
				st.Skip(e.rel, reason)
			} else {
				st.BytesTotal += size
			}
		})
		if reason == "" {
			items = append(items, migItem{rel: e.rel, size: size})
		}
		return nil
	}, func(rel string, err error) error {
		if rel == "" {
			return err // the backing directory itself
		}
		if err == unix.ENOENT {
			return nil // removed while we walked
		}
		t.m.log.WithField(fieldTaskID, t.id).WithField(fieldPath, rel).WithError(err).
			Warn("encrypt_existing_files: cannot read; its protected files stay as they are")
		t.update(func(st *task.Record) { st.FilesTotal++; st.Fail(rel, err) })
		return nil
	})
	return items, err
}

// convert converts items with the workers, retrying busy ones, and
// counts busy what is still busy at the end. It returns why it stopped
// early, or nil.
func (t *migration) convert(ctx context.Context, items []migItem) error {
	m := t.m
	pending := items
	for round := 0; len(pending) > 0 && round <= m.retryRounds; round++ {
		if round > 0 {
			delay := m.retryDelay << (round - 1)
			m.log.WithFields(logrus.Fields{fieldTaskID: t.id, "files": len(pending), "round": round, "delay_ms": delay.Milliseconds()}).
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
		m.log.WithFields(logrus.Fields{fieldTaskID: t.id, fieldPath: it.rel}).
			Info("encrypt_existing_files: file still in use; it stays plaintext until the task runs again")
		t.update(func(st *task.Record) {
			st.Busy(it.rel)
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
	busy   []migItem
	first  error

	// low is set once a copy did not fit on the disk; prep is then held
	// exclusively around each file, and shared before.
	low  atomic.Bool
	prep sync.RWMutex
}

// result records that it must be retried, or that the task must stop.
func (ps *passState) result(it migItem, retry bool, stop error) {
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
func (t *migration) pass(ctx context.Context, items []migItem, round int) (busy []migItem, stop error) {
	m := t.m
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	ps := &passState{t: t, round: round, cancel: cancel}
	rm := t.startRemover()
	b := &batcher{t: t, ps: ps, rm: rm}
	var wg sync.WaitGroup
	work := make(chan migItem)
	for range min(m.workers, len(items)) {
		wg.Go(func() {
			for it := range work {
				t.one(ctx, it, b)
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

// one prepares one file, hands it to the batcher, and counts the outcome
// when it is known.
func (t *migration) one(ctx context.Context, it migItem, b *batcher) {
	m, r := t.m, t.m.r
	if err := ctx.Err(); err != nil {
		b.ps.result(it, false, context.Cause(ctx))
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
	finish := func(res convertResult, err error) {
		retry, stop := t.outcome(ctx, it, res, err, reported)
		b.ps.result(it, retry, stop)
	}
	ps := b.ps
	// Out of space: the copies of the other workers, those waiting in the
	// batch and the old plaintexts not yet removed may be what fills the
	// disk. From then on the pass converts one file at a time and commits
	// each at once (low), and the file is tried again alone; only if it
	// still does not fit does the task stop.
	low := ps.low.Load()
	if low {
		ps.prep.Lock()
		b.makeRoom()
	} else {
		ps.prep.RLock()
	}
	p, res, err := r.prepareConvert(ctx, it.rel, convertOpts{progress: progress})
	if !low && isNoSpace(err) {
		ps.low.Store(true)
		ps.prep.RUnlock()
		ps.prep.Lock() // waits for the other workers' copies
		low = true
		b.makeRoom()
		work = 0
		p, res, err = r.prepareConvert(ctx, it.rel, convertOpts{progress: progress})
	}
	if p != nil {
		b.add(p, it.size, finish)
	}
	if low {
		if p != nil {
			b.makeRoom()
		}
		ps.prep.Unlock()
	} else {
		ps.prep.RUnlock()
	}
	if p == nil {
		finish(res, err)
	}
}

// outcome counts how the conversion of it ended; reported is the
// progress counted for it so far. It returns retry for a file to try
// again later, and an error when the whole task must stop.
func (t *migration) outcome(ctx context.Context, it migItem, res convertResult, err error, reported int64) (retry bool, stop error) {
	m := t.m
	reason := ""
	if err == nil && res != convDone {
		reason = t.skipReason(it.rel)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	t.inflight -= reported
	st := &t.st
	switch {
	case err == nil && res == convDone:
		st.FilesDone++
		t.converted += it.size
		if t.dirs == nil {
			t.dirs = map[string]struct{}{}
		}
		t.dirs[filepath.Dir(it.rel)] = struct{}{}
	case err == nil:
		st.Skip(it.rel, reason)
	case errors.Is(err, errBusy) || errors.Is(err, errChanged):
		return true, nil
	case ctx.Err() != nil:
		return false, context.Cause(ctx)
	case errors.Is(err, crypto.ErrLocked):
		return false, errKeyCleared
	case isNoSpace(err) || errors.Is(err, syscall.EROFS):
		return false, fmt.Errorf("%s: %w", it.rel, err)
	default:
		st.Fail(it.rel, err)
		m.log.WithFields(logrus.Fields{fieldTaskID: t.id, fieldPath: it.rel}).WithError(err).
			Warn("encrypt_existing_files: cannot encrypt file; it stays plaintext")
	}
	t.finishBytesLocked(it.size)
	return false, nil
}

func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// Batches. Rather than fsync each encrypted copy and each directory per
// file, which costs a journal commit per file, the workers hand the
// prepared copies to a batcher; a batch is made durable with one syncfs,
// then each copy is exchanged with its original, then the directories
// that got renames are fsynced. A batch is committed when it holds
// batchFiles files or batchBytes bytes, or batchAge after its first file,
// so a file waits little for its turn (while it waits, opens of it
// through the mount wait too). A batch prepared before a logout, cancel
// or error is still committed: its copies are complete and checked.
const (
	batchFiles = 128
	batchBytes = 64 << 20
	batchAge   = 50 * time.Millisecond
)

type batcher struct {
	t  *migration
	ps *passState
	rm *remover

	mu     sync.Mutex
	cur    *convBatch
	active sync.WaitGroup // batches being committed
}

type convBatch struct {
	items []batchItem
	bytes int64
	timer *time.Timer
}

type batchItem struct {
	p      *pendingConv
	finish func(convertResult, error)
}

// add puts p in the current batch, and commits the batch if it is full.
func (b *batcher) add(p *pendingConv, size int64, finish func(convertResult, error)) {
	b.mu.Lock()
	cb := b.cur
	if cb == nil {
		cb = &convBatch{}
		b.cur = cb
		cb.timer = time.AfterFunc(batchAge, func() { b.take(cb) })
	}
	cb.items = append(cb.items, batchItem{p: p, finish: finish})
	cb.bytes += size
	full := len(cb.items) >= batchFiles || cb.bytes >= batchBytes
	b.mu.Unlock()
	if full {
		b.take(cb)
	}
}

// takeCurrent commits the current batch, if any.
func (b *batcher) takeCurrent() {
	b.mu.Lock()
	cb := b.cur
	b.mu.Unlock()
	b.take(cb)
}

// take commits cb if it is still the current batch (the timer and a
// worker may race for it).
func (b *batcher) take(cb *convBatch) {
	b.mu.Lock()
	if cb == nil || b.cur != cb {
		b.mu.Unlock()
		return
	}
	b.cur = nil
	cb.timer.Stop()
	b.active.Add(1)
	b.mu.Unlock()
	b.commit(cb)
}

// makeRoom frees disk space: it commits the current batch and waits for
// the old plaintexts to be removed.
func (b *batcher) makeRoom() {
	b.takeCurrent()
	b.rm.drain()
}

// flush commits the current batch and waits for every commit.
func (b *batcher) flush() {
	b.takeCurrent()
	b.active.Wait()
}

// commit makes the copies of cb durable and puts them in place.
func (b *batcher) commit(cb *convBatch) {
	defer b.active.Done()
	t := b.t
	if h := t.m.hooks.commit; h != nil {
		rels := make([]string, len(cb.items))
		for i, bi := range cb.items {
			rels[i] = bi.p.rel
		}
		h(rels)
	}
	// One syncfs writes back every copy of the batch. If it fails (it
	// reports write-back errors of the whole filesystem), fsync each copy
	// to learn which ones are at fault.
	syncFS := unix.Syncfs
	if h := t.m.hooks.syncfs; h != nil {
		syncFS = h
	}
	synced := syncFS(cb.items[0].p.dirfd) == nil
	for _, bi := range cb.items {
		p := bi.p
		if !synced {
			if err := p.tmp.Sync(); err != nil {
				p.abort()
				bi.finish(convSkipped, err)
				continue
			}
		}
		res, err := p.commit(convertOpts{quiet: true, noDirSync: true, keepOld: b.rm.remove})
		bi.finish(res, err)
	}
	if err := t.syncDirs(); err != nil {
		b.ps.result(migItem{}, false, err)
	}
}

// Old plaintexts. After an exchange, the temp name holds the old
// plaintext inode. Removing it frees its blocks, which may wait for the
// disk (the CI machines discard synchronously; it was most of the cost of
// a small file), so the batch commit hands the name to a few remover
// goroutines that work in parallel with the conversions. A crash in
// between leaves a temp file that RemoveStaleTemps deletes at the next
// start, as for any other crash.

// removers is how many goroutines remove old plaintexts.
const removers = 4

// remover removes old plaintexts in the background.
type remover struct {
	in   chan string
	done chan struct{}

	mu      sync.Mutex
	cond    sync.Cond
	pending int // queued or being removed
}

func (t *migration) startRemover() *remover {
	rm := &remover{in: make(chan string, 256), done: make(chan struct{})}
	rm.cond.L = &rm.mu
	var wg sync.WaitGroup
	for range removers {
		wg.Go(func() {
			for rel := range rm.in {
				if err := t.m.r.removeTemp(rel); err != nil && err != unix.ENOENT && err != unix.ENOTDIR {
					t.m.log.WithField(fieldPath, rel).WithError(err).Warn("cannot remove the plaintext left by a conversion")
				}
				rm.mu.Lock()
				rm.pending--
				rm.cond.Broadcast()
				rm.mu.Unlock()
			}
		})
	}
	go func() { wg.Wait(); close(rm.done) }()
	return rm
}

// remove queues the old plaintext rel (see convertOpts.keepOld).
func (rm *remover) remove(rel string) {
	rm.mu.Lock()
	rm.pending++
	rm.mu.Unlock()
	rm.in <- rel
}

// drain waits until nothing is queued.
func (rm *remover) drain() {
	rm.mu.Lock()
	defer rm.mu.Unlock()
	for rm.pending > 0 {
		rm.cond.Wait()
	}
}

// finish waits until every queued file is removed.
func (rm *remover) finish() {
	close(rm.in)
	<-rm.done
}

// syncDirs fsyncs the directories with renames not yet durable.
func (t *migration) syncDirs() error {
	t.m.mu.Lock()
	dirs := t.dirs
	t.dirs = nil
	t.m.mu.Unlock()
	var first error
	for dir := range dirs {
		err := t.m.r.fsyncDir(dir)
		if err != nil && err != unix.ENOENT && err != unix.ENOTDIR && first == nil {
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

// skipReason says why encryptInPlace skipped rel.
func (t *migration) skipReason(rel string) string {
	var x unix.Statx_t
	if err := t.m.r.statRel(rel, &x); err != nil {
		if err == unix.ENOENT || err == unix.ENOTDIR {
			return task.SkipGone
		}
		return task.SkipOther
	}
	switch {
	case !isReg(&x):
		return task.SkipNotRegular
	case x.Nlink > 1:
		return task.SkipHardLinks
	case x.Size == 0:
		return task.SkipEmpty
	}
	if enc, err := t.m.r.hasMagicRel(rel); err == nil && enc {
		return task.SkipAlreadyEncrypted
	}
	return task.SkipOther
}

// isStaleTemp reports whether name is one of encryptInPlace's temp files:
// the prefix and 16 lowercase hex digits.
func isStaleTemp(name string) bool {
	h, ok := strings.CutPrefix(name, tempPrefix)
	if !ok || len(h) != 16 {
		return false
	}
	for _, c := range h {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// RemoveStaleTemps deletes the temp files that in-place encryption leaves
// behind when mountd is killed in the middle of a file: a regular file
// named .mountd-tmp-<16 hex digits> anywhere under backing except auth/.
// Such a file holds either the encrypted copy not yet renamed into place
// (the original is still whole) or the old plaintext just replaced by its
// encrypted copy; neither is needed. Call it before mounting, while no
// conversion can run. It logs each file it removes and returns how many.
func RemoveStaleTemps(backing string, log *logrus.Entry) (int, error) {
	if log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		log = logrus.NewEntry(l)
	}
	log = log.WithField(fieldComponent, "fs")
	removed := 0
	err := removeTempsBelow(context.Background(), backing, func(rel string) {
		removed++
		log.WithField(fieldPath, rel).Info("removed stale temp file of an interrupted encryption")
	}, func(rel string, err error) {
		log.WithField(fieldPath, rel).WithError(err).Warn("cannot look for or remove stale temp files here")
	})
	if removed > 0 {
		log.WithField("files", removed).Info("removed stale temp files")
	}
	return removed, err
}

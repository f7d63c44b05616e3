package migrate

import (
	"sync"
	"time"

	"github.com/mountd/mountd/fs"
)

// Batches. Rather than fsync each encrypted copy and each directory per
// file, which costs a journal commit per file, the workers hand the
// prepared copies to a batcher; a batch is made durable with one syncfs
// (or, where syncfs does not reach the storage, sshfs and SMB: fs's
// ErrNoSyncFS, one fsync per copy), then each copy is put in its
// original's place (exchanged, or renamed over it where the filesystem
// cannot exchange), then the directories that got renames are fsynced
// (migration.commitBatch). A batch is
// committed when it holds maxFiles files or maxBytes bytes, or age after
// its first file, so a file waits little for its turn (while it waits,
// opens of it through the mount wait too). A batch prepared before a
// logout, cancel or error is still committed: its copies are complete
// and checked.
const (
	batchFiles = 128
	batchBytes = 64 << 20
	batchAge   = 50 * time.Millisecond
)

// batcher collects prepared conversions into batches and commits each
// with commit, in the goroutine that fills it or, for a batch that
// reached its age, in a timer's.
type batcher struct {
	maxFiles int
	maxBytes int64
	age      time.Duration
	// afterFunc starts the age timer (time.AfterFunc; tests replace it).
	afterFunc func(d time.Duration, f func()) (stop func() bool)
	commit    func(items []batchItem)

	mu     sync.Mutex
	cur    *convBatch
	active sync.WaitGroup // batches being committed
}

type convBatch struct {
	items []batchItem
	bytes int64
	stop  func() bool // the age timer
}

// batchItem is one prepared copy and what to do with its outcome.
type batchItem struct {
	p      prepared
	finish func(fs.Outcome)
}

func newBatcher(commit func([]batchItem)) *batcher {
	return &batcher{
		maxFiles: batchFiles, maxBytes: batchBytes, age: batchAge, commit: commit,
		afterFunc: func(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop },
	}
}

// add puts p in the current batch, and commits the batch if it is full.
func (b *batcher) add(p prepared, size int64, finish func(fs.Outcome)) {
	b.mu.Lock()
	cb := b.cur
	if cb == nil {
		cb = &convBatch{}
		b.cur = cb
		cb.stop = b.afterFunc(b.age, func() { b.take(cb) })
	}
	cb.items = append(cb.items, batchItem{p: p, finish: finish})
	cb.bytes += size
	full := len(cb.items) >= b.maxFiles || cb.bytes >= b.maxBytes
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
	cb.stop()
	b.active.Add(1)
	b.mu.Unlock()
	defer b.active.Done()
	b.commit(cb.items)
}

// flush commits the current batch and waits for every commit.
func (b *batcher) flush() {
	b.takeCurrent()
	b.active.Wait()
}

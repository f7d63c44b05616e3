package migrate

import (
	"errors"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/mountd/mountd/fs"
)

// spaceGate lets the workers prepare their copies at once until one does
// not fit on the disk. The copies of the other workers, those waiting in
// the batch and the old plaintexts not yet removed may be what fills it:
// from then on the files go one at a time, each after makeRoom (commit
// the batch, wait for the removals) and committed at once, and the file
// that did not fit is tried again so, alone. Only if it still does not
// fit does the task stop.
type spaceGate struct {
	low      atomic.Bool // a copy did not fit: one file at a time
	mu       sync.RWMutex
	makeRoom func()
}

// run prepares one file with prep and hands what it prepared to add, as
// described above. prep may be called twice; it must start afresh. It
// returns the outcome of the last prep, and whether add took a copy.
func (g *spaceGate) run(prep func() (prepared, fs.Outcome), add func(prepared)) (fs.Outcome, bool) {
	alone := g.low.Load()
	if alone {
		g.mu.Lock()
		g.makeRoom()
	} else {
		g.mu.RLock()
	}
	p, out := prep()
	if !alone && isNoSpace(out.Err) {
		g.low.Store(true)
		g.mu.RUnlock()
		g.mu.Lock() // waits for the other workers' copies
		alone = true
		g.makeRoom()
		p, out = prep()
	}
	if p != nil {
		add(p)
	}
	if alone {
		if p != nil {
			g.makeRoom() // commit it at once
		}
		g.mu.Unlock()
	} else {
		g.mu.RUnlock()
	}
	return out, p != nil
}

func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

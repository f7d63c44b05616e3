package autolock

import (
	"sync/atomic"
	"time"
)

// idle is the idle policy: it locks when no encrypted content was read or
// written for opts.IdleAfter while a key is set.
//
// The hot path (activity, once per read or write through the mount) reads
// the cheap clock, and stores the boot clock's time (a system call) at
// most once per grain of it: the last activity is known to within a grain
// (a second at most), never later than it happened. One goroutine (run) owns the timer: armed at a
// login, it fires at last activity + IdleAfter; when it finds newer
// activity it re-arms for that, so it wakes at most once per IdleAfter
// while files are in use. It is armed only between a login and the next
// logout of that same key (the Keyring's generation), so it never locks a
// key set later, and never runs while no key is set.
type idle struct {
	p     *Policies
	after time.Duration
	timer Timer

	grain time.Duration // of the cheap clock: Now is read once per grain

	last      atomic.Int64  // boot clock time of the last recorded activity or login
	lastCheap atomic.Int64  // cheap clock time of that recording
	login     chan struct{} // a login happened (coalesced)
}

// maxGrain bounds how stale the recorded last activity may be.
const maxGrain = time.Second

func newIdle(p *Policies, t Timer) *idle {
	return &idle{p: p, after: p.opts.IdleAfter, timer: t, grain: min(p.opts.IdleAfter/64, maxGrain),
		login: make(chan struct{}, 1)}
}

func (i *idle) activity() {
	c := i.p.clock.Cheap()
	if c-time.Duration(i.lastCheap.Load()) < i.grain {
		return
	}
	i.lastCheap.Store(int64(c))
	i.record()
}

// record stores the boot clock's time as the last activity.
func (i *idle) record() { i.last.Store(int64(i.p.clock.Now())) }

func (i *idle) loggedIn() {
	select {
	case i.login <- struct{}{}:
	default:
	}
}

func (i *idle) run() {
	keys, busy := i.p.opts.Keys, i.p.opts.Busy
	armed, gen := false, uint64(0)
	for {
		if armed {
			i.set(time.Duration(i.last.Load()) + i.after)
		} else {
			i.stop()
		}
		if i.p.opts.idleHook != nil {
			i.p.opts.idleHook()
		}
		select {
		case <-i.p.done:
			return
		case <-i.login:
			// A login is activity; arm for the key it set (if a logout
			// already followed it, the timer finds another generation).
			gen = keys.Generation()
			armed = keys.IsSet()
			i.lastCheap.Store(int64(i.p.clock.Cheap()))
			i.record()
		case <-i.timer.C():
			if !armed {
				continue // a stale firing
			}
			if !keys.IsSet() || keys.Generation() != gen {
				// Logged out since (by hand or by another policy):
				// nothing to lock until the next login.
				armed = false
				continue
			}
			now := i.p.clock.Now()
			if busy != nil && busy() {
				i.record()
				continue
			}
			if now < time.Duration(i.last.Load())+i.after {
				continue // used since: wait for the new deadline
			}
			i.p.lock(ReasonIdle)
			armed = false
		}
	}
}

func (i *idle) set(deadline time.Duration) {
	if err := i.timer.Set(deadline); err != nil {
		i.p.log.WithError(err).Error("auto-lock: cannot arm the idle timer")
	}
}

func (i *idle) stop() {
	if err := i.timer.Stop(); err != nil {
		i.p.log.WithError(err).Error("auto-lock: cannot stop the idle timer")
	}
}

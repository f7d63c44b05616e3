package autolock

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/mountd/mountd/logkey"
	"github.com/sirupsen/logrus"
)

// Log field keys.
const (
	fieldReason   = "reason"   // a Reason
	fieldPolicy   = "policy"   // a Policy
	fieldSession  = "session"  // a logind session id or object path
	fieldWatching = "watching" // what a policy follows, for people
	fieldSuspend  = "suspend_error"
	fieldSessErr  = "session_lock_error"
)

// Mode says whether a policy is wanted and how much.
type Mode int

const (
	// Off: the policy is not used.
	Off Mode = iota
	// On: the policy is required; New fails when it cannot work, and
	// losing what it watches at run time locks (fail closed).
	On
	// Auto: the policy is used when the system allows it (a system bus
	// with logind); otherwise it is off, and Status says why.
	Auto
)

// Policy names a lock policy.
type Policy string

// The policies.
const (
	PolicyIdle        Policy = "idle"
	PolicySuspend     Policy = "suspend"
	PolicySessionLock Policy = "session_lock"
)

// Reason is why a policy logged out. The Locker records it; Status of the
// control plane reports the last one.
type Reason string

// The reasons.
const (
	// ReasonIdle: no encrypted content was read or written for IdleAfter.
	ReasonIdle Reason = "idle"
	// ReasonSuspend: the system is about to suspend or hibernate.
	ReasonSuspend Reason = "suspend"
	// ReasonSessionLock: the watched session locked (logind's Lock
	// signal, or its LockedHint turned true).
	ReasonSessionLock Reason = "session_lock"
	// ReasonSessionEnd: the one session the policy watched ended.
	ReasonSessionEnd Reason = "session_end"
	// ReasonBusLost: the connection to the system bus broke while a
	// required (On) D-Bus policy depended on it.
	ReasonBusLost Reason = "bus_lost"
)

// Locker logs out. The daemon's is the control plane's Logout, the very
// logout that GET /api/system/logout runs (flush, cache invalidation,
// zeroing), which records reason. It returns when the key is cleared.
type Locker interface {
	Lock(ctx context.Context, reason Reason) error
}

// Keys is the key holder's state; *crypto.Keyring satisfies it.
type Keys interface {
	// IsSet reports whether a key is set.
	IsSet() bool
	// Generation changes whenever a key is set or cleared.
	Generation() uint64
}

// Session selects the logind sessions whose locking locks.
type Session struct {
	// ID is a logind session id (as in $XDG_SESSION_ID or
	// 'loginctl list-sessions'): that session only. When it ends, the
	// policy locks (ReasonSessionEnd) and has nothing more to watch.
	ID string
	// UID, when ID is empty: every session of this user, present and
	// future.
	UID uint32
}

func (s Session) String() string {
	if s.ID != "" {
		return "session " + s.ID
	}
	return fmt.Sprintf("sessions of uid %d", s.UID)
}

// Options configures the policies.
type Options struct {
	// Keys tells whether a key is set. Required.
	Keys Keys
	// Log receives the policies' log lines. Nil discards them.
	Log *logrus.Entry

	// IdleAfter locks after this long without Activity while a key is
	// set. Zero turns the idle policy off.
	IdleAfter time.Duration
	// Busy, if set, holds the idle lock off while it returns true (the
	// daemon's migration task, which writes encrypted content itself).
	Busy func() bool
	// Clock is the idle policy's clock. Nil means BootClock.
	Clock Clock

	// Suspend locks before the system suspends or hibernates.
	Suspend Mode
	// SessionLock locks when a session selected by Session locks.
	SessionLock Mode
	Session     Session
	// BusAddress is the D-Bus address of the system bus. Empty means
	// $DBUS_SYSTEM_BUS_ADDRESS, else the standard socket.
	BusAddress string

	// Tests only: the first reconnection delay after the bus is lost,
	// and a hook the idle loop calls each time it is about to wait.
	retry    time.Duration
	idleHook func()
}

// PolicyError is a required policy that cannot work.
type PolicyError struct {
	Policy Policy
	Err    error
}

func (e *PolicyError) Error() string { return fmt.Sprintf("autolock: %s policy: %v", e.Policy, e.Err) }
func (e *PolicyError) Unwrap() error { return e.Err }

// Errors a PolicyError may wrap.
var (
	ErrNoBus    = errors.New("no system D-Bus")
	ErrNoLogind = errors.New("logind (org.freedesktop.login1) is not on the system bus")
)

// State is a policy's state.
type State string

// The states.
const (
	StateOff         State = "off"
	StateOn          State = "on"
	StateUnavailable State = "unavailable"
)

// PolicyStatus is one policy's state and, for people, what it watches or
// why it is unavailable.
type PolicyStatus struct {
	State  State
	Detail string
}

// Status reports every policy.
type Status struct {
	Idle        PolicyStatus
	IdleAfter   time.Duration
	Suspend     PolicyStatus
	SessionLock PolicyStatus
}

// Policies runs the lock policies. Create it with New, hand Activity to
// the filesystem and LoggedIn to the control plane, then Start it with the
// Locker.
type Policies struct {
	opts  Options
	log   *logrus.Entry
	clock Clock

	mu     sync.Mutex // guards status and locker
	status Status
	locker Locker

	idle *idle    // nil when the idle policy is off
	bus  *watcher // nil when no D-Bus policy is in use

	startOnce sync.Once
	closeOnce sync.Once
	done      chan struct{}
	wg        sync.WaitGroup
}

// New checks opts and prepares the policies: it connects to the system bus
// and takes logind's sleep inhibitor when a D-Bus policy is wanted. A
// required (On) policy that cannot work is a *PolicyError; an Auto one is
// reported unavailable in Status and logged. Nothing is locked before
// Start.
func New(opts Options) (*Policies, error) {
	if opts.Keys == nil {
		return nil, errors.New("autolock: Options.Keys is nil")
	}
	if opts.IdleAfter < 0 {
		return nil, fmt.Errorf("autolock: negative idle time %v", opts.IdleAfter)
	}
	log := opts.Log
	if log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		log = logrus.NewEntry(l)
	}
	p := &Policies{
		opts:  opts,
		log:   log.WithField(logkey.Component, "autolock"),
		clock: opts.Clock,
		done:  make(chan struct{}),
		status: Status{
			Idle:        PolicyStatus{State: StateOff},
			Suspend:     PolicyStatus{State: StateOff},
			SessionLock: PolicyStatus{State: StateOff},
		},
	}
	if p.clock == nil {
		p.clock = BootClock{}
	}
	if opts.IdleAfter > 0 {
		t, err := p.clock.NewTimer()
		if err != nil {
			return nil, &PolicyError{PolicyIdle, err}
		}
		p.idle = newIdle(p, t)
		p.status.Idle = PolicyStatus{State: StateOn}
		p.status.IdleAfter = opts.IdleAfter
	}
	if opts.Suspend != Off || opts.SessionLock != Off {
		w, err := newWatcher(p)
		if err != nil {
			p.Close()
			return nil, err
		}
		p.bus = w
	}
	return p, nil
}

// Start begins watching; every lock from now on goes through l.
func (p *Policies) Start(l Locker) {
	p.startOnce.Do(func() {
		p.mu.Lock()
		p.locker = l
		p.mu.Unlock()
		if p.idle != nil {
			p.wg.Go(p.idle.run)
		}
		if p.bus != nil {
			p.wg.Go(p.bus.run)
		}
	})
}

// Activity records a read or write of encrypted content: the idle time
// starts again. It is cheap (one clock read and one atomic store) and safe
// on a nil *Policies.
func (p *Policies) Activity() {
	if p != nil && p.idle != nil {
		p.idle.activity()
	}
}

// LoggedIn tells the idle policy that a login succeeded: its timer starts
// (again) from now. Safe on a nil *Policies.
func (p *Policies) LoggedIn() {
	if p != nil && p.idle != nil {
		p.idle.loggedIn()
	}
}

// Status reports the policies.
func (p *Policies) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.status
}

func (p *Policies) setStatus(pol Policy, st PolicyStatus) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch pol {
	case PolicyIdle:
		p.status.Idle = st
	case PolicySuspend:
		p.status.Suspend = st
	case PolicySessionLock:
		p.status.SessionLock = st
	}
}

// Close stops the policies and releases the bus and the inhibitor. It
// does not lock.
func (p *Policies) Close() {
	p.closeOnce.Do(func() {
		close(p.done)
		if p.bus != nil {
			p.bus.close()
		}
		p.wg.Wait()
		if p.bus != nil {
			p.bus.close() // one a reconnection made meanwhile
		}
		if p.idle != nil {
			p.idle.timer.Close()
		}
		if p.bus != nil {
			p.bus.releaseInhibitor()
		}
	})
}

// lock logs out for reason through the Locker and logs the outcome. It
// returns once the logout is complete.
func (p *Policies) lock(reason Reason) {
	p.mu.Lock()
	l := p.locker
	p.mu.Unlock()
	lg := p.log.WithField(fieldReason, reason)
	wasSet := p.opts.Keys.IsSet()
	if err := l.Lock(context.Background(), reason); err != nil {
		lg.WithError(err).Error("auto-lock: logout failed")
		return
	}
	if wasSet {
		lg.Info("logout: file encryption key cleared")
	} else {
		lg.Debug("auto-lock: no key was set")
	}
}

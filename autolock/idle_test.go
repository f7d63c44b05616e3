package autolock

import (
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const after = 15 * time.Minute

// idleEnv runs the idle policy on a fake clock. Every event the loop
// handles ends with it waiting again, which it reports on waits: settle
// waits for that, so each step of a test is deterministic, with no sleep.
type idleEnv struct {
	clk   *fakeClock
	keys  *fakeKeys
	lk    *recLocker
	p     *Policies
	waits chan struct{}
	busy  atomic.Bool
}

func newIdleEnv(t *testing.T) *idleEnv {
	t.Helper()
	e := &idleEnv{clk: &fakeClock{now: 1000 * time.Hour}, keys: &fakeKeys{}, waits: make(chan struct{}, 100)}
	e.lk = newLocker(e.keys)
	log, _ := testLog(t)
	p, err := New(Options{Keys: e.keys, Log: log, IdleAfter: after, Clock: e.clk, Busy: e.busy.Load,
		idleHook: func() { e.waits <- struct{}{} }})
	if err != nil {
		t.Fatal(err)
	}
	e.p = p
	p.Start(e.lk)
	t.Cleanup(p.Close)
	e.settle(t)
	return e
}

// settle waits until the loop has handled what happened and waits again.
func (e *idleEnv) settle(t *testing.T) {
	t.Helper()
	select {
	case <-e.waits:
	case <-time.After(30 * time.Second):
		t.Fatal("idle loop did not come back to waiting within 30s")
	}
}

// quiet checks that the loop had nothing to handle.
func (e *idleEnv) quiet(t *testing.T) {
	t.Helper()
	select {
	case <-e.waits:
		t.Fatal("the idle loop woke up")
	default:
	}
}

func (e *idleEnv) login(t *testing.T) {
	t.Helper()
	e.keys.Login()
	e.p.LoggedIn()
	e.settle(t)
}

func (e *idleEnv) wantDeadline(t *testing.T, d time.Duration) {
	t.Helper()
	if got := e.clk.deadline(); got != d {
		t.Fatalf("timer deadline %v, want %v (now %v)", got, d, e.clk.Now())
	}
}

// TestIdleActivity: the timer starts at login, activity pushes it back,
// and it locks, as an ordinary logout with reason idle, after IdleAfter
// without activity.
func TestIdleActivity(t *testing.T) {
	e := newIdleEnv(t)
	e.wantDeadline(t, -1) // logged out: not armed
	t0 := e.clk.Now()
	e.login(t)
	e.wantDeadline(t, t0+after)

	e.clk.Advance(10 * time.Minute)
	e.p.Activity() // at t0+10m
	e.clk.Advance(6 * time.Minute)
	e.settle(t) // the first deadline passed: the loop sees the activity
	e.lk.none(t)
	e.wantDeadline(t, t0+10*time.Minute+after)

	e.clk.Advance(9*time.Minute - time.Nanosecond)
	e.quiet(t)
	e.clk.Advance(time.Nanosecond)
	e.settle(t)
	if r := e.lk.next(t); r != ReasonIdle {
		t.Fatalf("lock reason %q", r)
	}
	if e.keys.IsSet() {
		t.Fatal("key still set")
	}
	e.wantDeadline(t, -1)
	if st := e.p.Status(); st.Idle.State != StateOn || st.IdleAfter != after {
		t.Fatalf("status %+v", st)
	}
}

// TestIdleSuspendCounts: time asleep is idle time. A laptop that slept two
// hours is locked as it wakes up, not IdleAfter later.
func TestIdleSuspendCounts(t *testing.T) {
	e := newIdleEnv(t)
	e.login(t)
	e.clk.Advance(5 * time.Minute)
	e.p.Activity()
	e.clk.Advance(2 * time.Hour) // asleep; the clock is CLOCK_BOOTTIME
	e.settle(t)
	if r := e.lk.next(t); r != ReasonIdle {
		t.Fatalf("lock reason %q", r)
	}
}

// TestIdleNotWhileLoggedOut: no timer runs and nothing locks while no key
// is set, whatever happens; a logout by other means disarms the timer; and
// a timer armed for one login never locks a later one.
func TestIdleNotWhileLoggedOut(t *testing.T) {
	e := newIdleEnv(t)
	e.clk.Advance(24 * time.Hour)
	e.p.Activity()
	e.clk.Advance(24 * time.Hour)
	e.quiet(t)
	e.lk.none(t)

	// Logged out by hand (or by another policy) while armed.
	e.login(t)
	e.keys.Logout()
	e.clk.Advance(after)
	e.settle(t)
	e.lk.none(t)
	e.wantDeadline(t, -1)
	e.clk.Advance(24 * time.Hour)
	e.quiet(t)

	// Logged out and in again before the loop heard of the login: the
	// old timer finds another key and leaves it alone.
	e.login(t)
	e.keys.Logout()
	e.keys.Login()
	e.clk.Advance(after)
	e.settle(t)
	e.lk.none(t)
	e.wantDeadline(t, -1)
	// The login arrives: the new key gets its own full period.
	t1 := e.clk.Now()
	e.p.LoggedIn()
	e.settle(t)
	e.wantDeadline(t, t1+after)
	e.clk.Advance(after)
	e.settle(t)
	if r := e.lk.next(t); r != ReasonIdle {
		t.Fatalf("lock reason %q", r)
	}
}

// TestIdleRestartsAtLogin: every login (also one while the key is set)
// starts the period again; after an idle lock the next login re-arms.
func TestIdleRestartsAtLogin(t *testing.T) {
	e := newIdleEnv(t)
	e.login(t)
	e.clk.Advance(10 * time.Minute)
	t1 := e.clk.Now()
	e.p.LoggedIn() // the same password again: already set
	e.settle(t)
	e.wantDeadline(t, t1+after)

	e.clk.Advance(after)
	e.settle(t)
	e.lk.next(t)
	e.clk.Advance(time.Hour)
	t2 := e.clk.Now()
	e.login(t)
	e.wantDeadline(t, t2+after)
	e.clk.Advance(after)
	e.settle(t)
	if r := e.lk.next(t); r != ReasonIdle {
		t.Fatalf("lock reason %q", r)
	}
}

// TestIdleBusy: a running migration (Busy) holds the idle lock off; the
// period starts again when it ends.
func TestIdleBusy(t *testing.T) {
	e := newIdleEnv(t)
	e.login(t)
	e.busy.Store(true)
	e.clk.Advance(after)
	e.settle(t)
	e.lk.none(t)
	t1 := e.clk.Now()
	e.wantDeadline(t, t1+after)
	e.busy.Store(false)
	e.clk.Advance(after)
	e.settle(t)
	if r := e.lk.next(t); r != ReasonIdle {
		t.Fatalf("lock reason %q", r)
	}
}

// TestIdleOffIsFree: without IdleAfter there is no timer, and Activity and
// LoggedIn do nothing (also on a nil *Policies).
func TestIdleOffIsFree(t *testing.T) {
	clk := &fakeClock{}
	p, err := New(Options{Keys: &fakeKeys{}, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.Start(newLocker(&fakeKeys{}))
	p.Activity()
	p.LoggedIn()
	if len(clk.timers) != 0 || p.Status().Idle.State != StateOff {
		t.Fatalf("idle off: %d timers, %+v", len(clk.timers), p.Status())
	}
	var nilp *Policies
	nilp.Activity()
	nilp.LoggedIn()
	if _, err := New(Options{Keys: &fakeKeys{}, IdleAfter: -time.Second}); err == nil {
		t.Fatal("negative idle time accepted")
	}
	if _, err := New(Options{}); err == nil {
		t.Fatal("no Keys accepted")
	}
}

// TestBootClock: the real clock reads CLOCK_BOOTTIME and its timers are
// CLOCK_BOOTTIME timerfds with absolute deadlines (the kernel shows the
// clock in fdinfo), so time asleep counts and a deadline that passed
// during a suspend fires at the resume. Go's own timers would not.
func TestBootClock(t *testing.T) {
	var c BootClock
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	before := time.Duration(ts.Nano())
	now := c.Now()
	unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	if now < before || now > time.Duration(ts.Nano()) {
		t.Fatalf("Now %v is not CLOCK_BOOTTIME (%v..%v)", now, before, time.Duration(ts.Nano()))
	}

	tm, err := c.NewTimer()
	if err != nil {
		t.Fatal(err)
	}
	defer tm.Close()
	bt := tm.(*bootTimer)
	info, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", bt.fd))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(info), fmt.Sprintf("clockid: %d\n", unix.CLOCK_BOOTTIME)) {
		t.Fatalf("timerfd is not on CLOCK_BOOTTIME:\n%s", info)
	}

	// A deadline a day away, then one in the past: Set replaces, and
	// the past one fires at once.
	if err := tm.Set(c.Now() + 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	info, _ = os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", bt.fd))
	if !strings.Contains(string(info), fmt.Sprintf("settime flags: 0%o\n", unix.TFD_TIMER_ABSTIME)) {
		t.Fatalf("timerfd deadline is not absolute:\n%s", info)
	}
	if err := tm.Set(c.Now() - time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case <-tm.C():
	case <-time.After(30 * time.Second):
		t.Fatal("a passed deadline did not fire")
	}
	if err := tm.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := tm.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tm.Set(c.Now()); err == nil {
		t.Fatal("Set after Close succeeded")
	}
}

// TestIdleGrain: activities less than a grain (a second here) after the
// recorded one do not read the boot clock again; the deadline is then at
// most a grain early, never late.
func TestIdleGrain(t *testing.T) {
	e := newIdleEnv(t)
	e.login(t)
	t0 := e.clk.Now()
	e.clk.Advance(time.Minute)
	e.p.Activity() // recorded: t0+1m
	e.clk.Advance(500 * time.Millisecond)
	e.p.Activity() // within the grain
	e.clk.Advance(after - time.Minute - 500*time.Millisecond)
	e.settle(t) // the login's deadline
	e.wantDeadline(t, t0+time.Minute+after)
	e.clk.Advance(30 * time.Second)
	e.p.Activity() // more than a grain later: recorded
	e.clk.Advance(30 * time.Second)
	e.settle(t)
	e.wantDeadline(t, t0+after+30*time.Second+after)
}

package autolock

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
)

// fakeKeys is a key holder: Login and Logout change the generation as the
// Keyring does.
type fakeKeys struct {
	mu  sync.Mutex
	set bool
	gen uint64
}

func (k *fakeKeys) IsSet() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.set
}

func (k *fakeKeys) Generation() uint64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.gen
}

func (k *fakeKeys) Login() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.set = true
	k.gen++
}

func (k *fakeKeys) Logout() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.set {
		k.set = false
		k.gen++
	}
}

// recLocker is a Locker that logs out of its fakeKeys and reports each
// call's reason on locks. after, if set, runs inside Lock once the key is
// cleared.
type recLocker struct {
	keys  *fakeKeys
	locks chan Reason

	mu    sync.Mutex
	after func()
}

func (l *recLocker) setAfter(f func()) {
	l.mu.Lock()
	l.after = f
	l.mu.Unlock()
}

func newLocker(keys *fakeKeys) *recLocker {
	return &recLocker{keys: keys, locks: make(chan Reason, 100)}
}

func (l *recLocker) Lock(_ context.Context, r Reason) error {
	l.keys.Logout()
	l.mu.Lock()
	after := l.after
	l.mu.Unlock()
	if after != nil {
		after()
	}
	l.locks <- r
	return nil
}

// next waits for the next lock.
func (l *recLocker) next(t *testing.T) Reason {
	t.Helper()
	select {
	case r := <-l.locks:
		return r
	case <-time.After(30 * time.Second):
		t.Fatal("no lock within 30s")
		return ""
	}
}

// none checks that no lock is pending.
func (l *recLocker) none(t *testing.T) {
	t.Helper()
	select {
	case r := <-l.locks:
		t.Fatalf("unexpected lock (%s)", r)
	default:
	}
}

// testLog returns a logger whose lines go to the test's log and a hook
// holding them.
func testLog(t *testing.T) (*logrus.Entry, *test.Hook) {
	l := logrus.New()
	l.SetLevel(logrus.DebugLevel)
	l.SetOutput(tWriter{t})
	return logrus.NewEntry(l), test.NewLocal(l)
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// fakeClock is a Clock whose time moves only by Advance. Like
// CLOCK_BOOTTIME with timerfds, a jump (a suspend) fires every timer whose
// deadline it passes.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Duration
	timers []*fakeTimer
}

type fakeTimer struct {
	clk      *fakeClock
	c        chan struct{}
	armed    bool
	deadline time.Duration
}

func (c *fakeClock) Now() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Cheap moves with Now: the tests' activities are whole steps apart.
func (c *fakeClock) Cheap() time.Duration { return c.Now() }

func (c *fakeClock) NewTimer() (Timer, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{clk: c, c: make(chan struct{}, 1)}
	c.timers = append(c.timers, t)
	return t, nil
}

// Advance moves the time on by d and fires the timers that are due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now += d
	for _, t := range c.timers {
		if t.armed && t.deadline <= c.now {
			t.armed = false
			select {
			case t.c <- struct{}{}:
			default:
			}
		}
	}
}

// deadline returns the one timer's deadline, or -1 when it is disarmed.
func (c *fakeClock) deadline() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.timers) != 1 {
		panic("fakeClock: want exactly one timer")
	}
	if t := c.timers[0]; t.armed {
		return t.deadline
	}
	return -1
}

func (t *fakeTimer) C() <-chan struct{} { return t.c }

func (t *fakeTimer) Set(d time.Duration) error {
	t.clk.mu.Lock()
	defer t.clk.mu.Unlock()
	t.armed, t.deadline = true, d
	if d <= t.clk.now {
		t.armed = false
		select {
		case t.c <- struct{}{}:
		default:
		}
	}
	return nil
}

func (t *fakeTimer) Stop() error {
	t.clk.mu.Lock()
	defer t.clk.mu.Unlock()
	t.armed = false
	return nil
}

func (t *fakeTimer) Close() error { return t.Stop() }

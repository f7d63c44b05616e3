package autolock

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/sirupsen/logrus"

	"github.com/mountd/mountd/autolock/logindtest"
)

func ctx30(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// busEnv is a private bus with the fake logind, and policies on it.
type busEnv struct {
	bus  *logindtest.Bus
	li   *logindtest.Logind
	keys *fakeKeys
	lk   *recLocker
	p    *Policies
}

func newBusEnv(t *testing.T, o Options) *busEnv {
	t.Helper()
	e := &busEnv{bus: logindtest.StartBus(t)}
	e.li = logindtest.Start(t, e.bus)
	e.li.AddSession("3", 1000)
	e.li.AddSession("c1", 1001)
	e.keys = &fakeKeys{}
	e.lk = newLocker(e.keys)
	o.Keys, o.BusAddress, o.retry = e.keys, e.bus.Addr, 10*time.Millisecond
	if o.Log == nil {
		o.Log, _ = testLog(t)
	}
	p, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	e.p = p
	t.Cleanup(p.Close)
	return e
}

// TestSuspend: the delay inhibitor is taken at start; PrepareForSleep(true)
// logs out, and the inhibitor is released only once the logout has
// returned; after the resume a new inhibitor is taken; a second suspend
// while logged out releases it too.
func TestSuspend(t *testing.T) {
	e := newBusEnv(t, Options{Suspend: On})
	ctx := ctx30(t)
	held := e.li.HeldNow()
	if len(held) != 1 || held[0].What != "sleep" || held[0].Mode != "delay" || held[0].Who != "mountd" || held[0].Why == "" {
		t.Fatalf("inhibitors after New: %+v", held)
	}
	if st := e.p.Status().Suspend; st.State != StateOn {
		t.Fatalf("status %+v", st)
	}
	e.keys.Login()
	// The pipe orders the logout before the release; the race detector
	// cannot see that, hence the atomic.
	var logoutDone atomic.Bool
	e.lk.setAfter(func() {
		if len(e.li.HeldNow()) != 1 {
			t.Error("the inhibitor was released before the logout returned")
		}
		logoutDone.Store(true)
	})
	e.p.Start(e.lk)

	released := 0
	err := e.li.Suspend(ctx, func(*logindtest.Inhibitor) {
		released++
		if e.keys.IsSet() || !logoutDone.Load() {
			t.Error("inhibitor released while the key was still set")
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if r := e.lk.next(t); r != ReasonSuspend || released != 1 {
		t.Fatalf("lock %q, %d releases", r, released)
	}

	if err := e.li.Resume(); err != nil {
		t.Fatal(err)
	}
	if err := e.li.WaitHeld(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if n := e.li.Inhibits(); n != 2 {
		t.Fatalf("%d Inhibit calls, want 2", n)
	}

	// Logged out already: the logout is a no-op, the release prompt.
	e.lk.setAfter(nil)
	if err := e.li.Suspend(ctx, nil); err != nil {
		t.Fatal(err)
	}
	e.lk.next(t)
	e.li.Resume()
	if err := e.li.WaitHeld(ctx, 1); err != nil {
		t.Fatal(err)
	}
}

// locksBefore emits a suspend and returns the reasons of the locks that
// came before its own: signals are handled in the order logind sent them,
// so when the suspend's lock arrives, everything the test did before has
// been handled. It resumes and waits for the new inhibitor.
func (e *busEnv) locksBefore(t *testing.T) []Reason {
	t.Helper()
	ctx := ctx30(t)
	must(t, e.li.Suspend(ctx, nil))
	var rs []Reason
	for r := e.lk.next(t); r != ReasonSuspend; r = e.lk.next(t) {
		rs = append(rs, r)
	}
	must(t, e.li.Resume())
	must(t, e.li.WaitHeld(ctx, 1))
	return rs
}

func wantLocks(t *testing.T, got []Reason, want ...Reason) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("locks %v, want %v", got, want)
	}
}

// TestSessionLock: with a uid, the Lock signal or LockedHint turning true
// on any session of that user locks, sessions created later included;
// other users' sessions do nothing, nor does LockedHint turning false.
func TestSessionLock(t *testing.T) {
	e := newBusEnv(t, Options{Suspend: On, SessionLock: On, Session: Session{UID: 1000}})
	e.p.Start(e.lk)
	if st := e.p.Status().SessionLock; st.State != StateOn || !strings.Contains(st.Detail, "uid 1000") {
		t.Fatalf("status %+v", st)
	}
	e.keys.Login()
	must(t, e.li.LockSession("c1")) // another user's
	wantLocks(t, e.locksBefore(t))
	must(t, e.li.LockSession("3"))
	wantLocks(t, e.locksBefore(t), ReasonSessionLock)

	e.keys.Login()
	must(t, e.li.SetLockedHint("c1", true))
	wantLocks(t, e.locksBefore(t))
	must(t, e.li.SetLockedHint("3", true))
	wantLocks(t, e.locksBefore(t), ReasonSessionLock)
	must(t, e.li.SetLockedHint("3", false)) // unlocked: nothing
	wantLocks(t, e.locksBefore(t))

	e.li.AddSession("7", 1000) // logged in again later
	must(t, e.li.LockSession("7"))
	wantLocks(t, e.locksBefore(t), ReasonSessionLock)
}

// TestSessionLockByID: with a session id only that session counts, and
// its end locks (there is nothing more to watch).
func TestSessionLockByID(t *testing.T) {
	e := newBusEnv(t, Options{Suspend: On, SessionLock: On, Session: Session{ID: "3"}})
	e.li.AddSession("4", 1000)
	e.p.Start(e.lk)
	must(t, e.li.LockSession("4"))
	must(t, e.li.RemoveSession("4"))
	wantLocks(t, e.locksBefore(t))
	must(t, e.li.LockSession("3"))
	wantLocks(t, e.locksBefore(t), ReasonSessionLock)
	must(t, e.li.RemoveSession("3"))
	wantLocks(t, e.locksBefore(t), ReasonSessionEnd)
	if st := e.p.Status().SessionLock; st.State != StateUnavailable || !strings.Contains(st.Detail, "ended") {
		t.Fatalf("status %+v", st)
	}

	// An unknown session is an error at start.
	_, err := New(Options{Keys: e.keys, SessionLock: On, Session: Session{ID: "99"}, BusAddress: e.bus.Addr})
	var pe *PolicyError
	if !errors.As(err, &pe) || pe.Policy != PolicySessionLock || !strings.Contains(err.Error(), "No session") {
		t.Fatalf("unknown session: %v", err)
	}
}

// TestSpoofedSignals: signals that look like logind's but come from
// another connection (any local process can send us one) do nothing.
func TestSpoofedSignals(t *testing.T) {
	e := newBusEnv(t, Options{Suspend: On, SessionLock: On, Session: Session{UID: 1000}})
	e.p.Start(e.lk)
	e.keys.Login()
	me := e.li.HeldNow()[0].Caller
	must(t, logindtest.Spoof(e.bus, me, "/org/freedesktop/login1", "org.freedesktop.login1.Manager.PrepareForSleep", true))
	// A real session lock, after it: handled after it.
	must(t, e.li.LockSession("3"))
	if r := e.lk.next(t); r != ReasonSessionLock {
		t.Fatalf("lock reason %q", r)
	}
	if h := e.li.HeldNow(); len(h) != 1 || e.li.Inhibits() != 1 {
		t.Fatalf("a spoofed PrepareForSleep released the inhibitor: %+v", h)
	}

	e.keys.Login()
	must(t, logindtest.Spoof(e.bus, me, "/org/freedesktop/login1/session/_33", "org.freedesktop.login1.Session.Lock"))
	must(t, logindtest.Spoof(e.bus, me, "/org/freedesktop/login1/session/_33", "org.freedesktop.DBus.Properties.PropertiesChanged",
		"org.freedesktop.login1.Session", map[string]dbus.Variant{"LockedHint": dbus.MakeVariant(true)}, []string{}))
	wantLocks(t, e.locksBefore(t))
}

// TestNoBus: without a system bus, or without logind on it, a required
// policy fails at start with a clear error; an Auto one is reported
// unavailable with the reason, logged at Info.
func TestNoBus(t *testing.T) {
	noBus := "unix:path=/nonexistent/mountd-test-bus"
	_, err := New(Options{Keys: &fakeKeys{}, Suspend: On, BusAddress: noBus})
	var pe *PolicyError
	if !errors.As(err, &pe) || pe.Policy != PolicySuspend || !errors.Is(err, ErrNoBus) {
		t.Fatalf("no bus, required: %v", err)
	}
	log, hook := testLog(t)
	p, err := New(Options{Keys: &fakeKeys{}, Log: log, Suspend: Auto, SessionLock: Auto, BusAddress: noBus})
	if err != nil {
		t.Fatalf("no bus, auto: %v", err)
	}
	p.Close()
	st := p.Status()
	if st.Suspend.State != StateUnavailable || st.SessionLock.State != StateUnavailable || !strings.Contains(st.Suspend.Detail, "no system D-Bus") {
		t.Fatalf("status %+v", st)
	}
	infos := 0
	for _, en := range hook.AllEntries() {
		if en.Level == logrus.InfoLevel && strings.Contains(en.Message, "policy off") {
			infos++
		}
	}
	if infos != 2 {
		t.Fatalf("%d Info lines saying a policy is off, want 2", infos)
	}

	bus := logindtest.StartBus(t) // no logind on it
	_, err = New(Options{Keys: &fakeKeys{}, SessionLock: On, BusAddress: bus.Addr})
	if !errors.As(err, &pe) || pe.Policy != PolicySessionLock || !errors.Is(err, ErrNoLogind) {
		t.Fatalf("no logind, required: %v", err)
	}
	p, err = New(Options{Keys: &fakeKeys{}, Suspend: Auto, BusAddress: bus.Addr})
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	if st := p.Status().Suspend; st.State != StateUnavailable || !strings.Contains(st.Detail, "logind") {
		t.Fatalf("status %+v", st)
	}
}

// TestBusLost: when the bus goes away, a required policy locks at once
// (it can no longer see a suspend coming); once the bus and logind are
// back, the policy reconnects and takes a new inhibitor. An Auto policy
// does not lock.
func TestBusLost(t *testing.T) {
	for _, mode := range []Mode{On, Auto} {
		e := newBusEnv(t, Options{Suspend: mode})
		ctx := ctx30(t)
		e.keys.Login()
		e.p.Start(e.lk)
		e.bus.Stop()
		if mode == On {
			if r := e.lk.next(t); r != ReasonBusLost {
				t.Fatalf("lock reason %q", r)
			}
		}
		e.bus.Restart()
		li := logindtest.Start(t, e.bus)
		if err := li.WaitHeld(ctx, 1); err != nil {
			t.Fatal(err)
		}
		if mode == Auto {
			e.lk.none(t)
			if !e.keys.IsSet() {
				t.Fatal("auto policy logged out")
			}
		}
		// And it works: a suspend on the new bus locks.
		e.keys.Login()
		if err := li.Suspend(ctx, nil); err != nil {
			t.Fatal(err)
		}
		if r := e.lk.next(t); r != ReasonSuspend {
			t.Fatalf("lock reason %q", r)
		}
		// The signal was handled after the reconnection set the status.
		if st := e.p.Status().Suspend; st.State != StateOn {
			t.Fatalf("status after reconnecting: %+v", st)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

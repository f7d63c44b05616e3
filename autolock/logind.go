package autolock

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/godbus/dbus/v5"
)

// logind's D-Bus names (org.freedesktop.login1(5)).
const (
	logindName        = "org.freedesktop.login1"
	logindPath        = dbus.ObjectPath("/org/freedesktop/login1")
	managerIface      = "org.freedesktop.login1.Manager"
	sessionIface      = "org.freedesktop.login1.Session"
	sessionPathPrefix = "/org/freedesktop/login1/session"

	busName  = "org.freedesktop.DBus"
	busIface = "org.freedesktop.DBus"
	propsIfc = "org.freedesktop.DBus.Properties"

	// What the inhibitor says in 'systemd-inhibit --list'.
	inhibitWho = "mountd"
	inhibitWhy = "lock encrypted files before sleep"
)

// callTimeout bounds every call to the bus or logind.
const callTimeout = 10 * time.Second

// maxRetry caps the delay between reconnection attempts.
const maxRetry = 30 * time.Second

// watcher runs the D-Bus policies: it follows logind's PrepareForSleep
// (suspend) and the sessions' Lock signals and LockedHint (session lock)
// on one connection to the system bus.
//
// Suspend: a delay inhibitor lock (Manager.Inhibit "sleep", "delay") is
// held from New on. logind emits PrepareForSleep(true), then waits until
// every delay inhibitor is released (or InhibitDelayMaxSec passes) before
// the system sleeps. The watcher logs out first (Locker.Lock returns after
// the flush, the cache invalidation and the zeroing) and only then closes
// the inhibitor's descriptor. After the resume (PrepareForSleep(false)) it
// takes a new one.
//
// Signals are trusted only from logind's own connection (the bus daemon
// stamps the sender; anyone may send us a unicast signal with any path and
// member), and a session's owner is asked from logind.
type watcher struct {
	p *Policies

	mu        sync.Mutex // guards conn, sigs, inhibitor
	conn      *dbus.Conn
	sigs      chan *dbus.Signal
	inhibitor *os.File // the delay inhibitor; nil when not held

	// Set by connect, used by the run goroutine only.
	logind      string          // logind's unique bus name
	sessionPath dbus.ObjectPath // the watched session, when Session.ID is set
	sessionDead bool            // that session ended
}

func newWatcher(p *Policies) (*watcher, error) {
	w := &watcher{p: p}
	suspendErr, sessionErr := w.connect()
	o := p.opts
	for _, c := range []struct {
		pol  Policy
		mode Mode
		err  error
	}{{PolicySuspend, o.Suspend, suspendErr}, {PolicySessionLock, o.SessionLock, sessionErr}} {
		if c.mode == Off {
			continue
		}
		if c.err == nil {
			p.log.WithField(fieldPolicy, c.pol).WithField(fieldWatching, w.detail(c.pol)).Info("auto-lock policy on")
			continue
		}
		if c.mode == On {
			w.close()
			w.releaseInhibitor()
			return nil, &PolicyError{c.pol, c.err}
		}
		p.log.WithField(fieldPolicy, c.pol).WithError(c.err).Info("auto-lock policy off: the system does not offer it")
	}
	return w, nil
}

// detail describes what a working policy watches.
func (w *watcher) detail(pol Policy) string {
	if pol == PolicySuspend {
		return "logind PrepareForSleep, delay inhibitor held"
	}
	return "logind Lock and LockedHint of " + w.p.opts.Session.String()
}

// connect dials the bus, checks that logind is there, subscribes to what
// the wanted policies need and takes the inhibitor. It returns one error
// per policy (nil for a policy that is off or works) and sets each
// policy's status.
func (w *watcher) connect() (suspendErr, sessionErr error) {
	o := w.p.opts
	fail := func(err error) (error, error) {
		for _, c := range []struct {
			pol  Policy
			mode Mode
		}{{PolicySuspend, o.Suspend}, {PolicySessionLock, o.SessionLock}} {
			if c.mode != Off {
				w.p.setStatus(c.pol, PolicyStatus{State: StateUnavailable, Detail: err.Error()})
			}
		}
		return err, err
	}
	conn, err := dial(o.BusAddress)
	if err != nil {
		return fail(fmt.Errorf("%w: %v", ErrNoBus, err))
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	var owner string
	if err := conn.BusObject().CallWithContext(ctx, busIface+".GetNameOwner", 0, logindName).Store(&owner); err != nil {
		// Not running: ask the bus to start it (systemd activates
		// logind on demand); a Ping does that.
		if perr := conn.Object(logindName, logindPath).CallWithContext(ctx, "org.freedesktop.DBus.Peer.Ping", 0).Err; perr != nil {
			conn.Close()
			return fail(fmt.Errorf("%w: %v", ErrNoLogind, perr))
		}
		if err := conn.BusObject().CallWithContext(ctx, busIface+".GetNameOwner", 0, logindName).Store(&owner); err != nil {
			conn.Close()
			return fail(fmt.Errorf("%w: %v", ErrNoLogind, err))
		}
	}
	w.logind = owner
	sigs := make(chan *dbus.Signal, 64)
	conn.Signal(sigs)
	// logind restarting changes its unique name.
	err = conn.AddMatchSignalContext(ctx, dbus.WithMatchSender(busName), dbus.WithMatchInterface(busIface),
		dbus.WithMatchMember("NameOwnerChanged"), dbus.WithMatchArg(0, logindName))
	if err != nil {
		conn.Close()
		return fail(fmt.Errorf("subscribing to logind's name: %w", err))
	}
	w.mu.Lock()
	w.conn, w.sigs = conn, sigs
	w.mu.Unlock()

	if o.Suspend != Off {
		suspendErr = w.watchSuspend(ctx, conn)
		w.setState(PolicySuspend, suspendErr)
	}
	if o.SessionLock != Off {
		sessionErr = w.watchSessions(ctx, conn)
		w.setState(PolicySessionLock, sessionErr)
	}
	return suspendErr, sessionErr
}

func (w *watcher) setState(pol Policy, err error) {
	if err != nil {
		w.p.setStatus(pol, PolicyStatus{State: StateUnavailable, Detail: err.Error()})
	} else {
		w.p.setStatus(pol, PolicyStatus{State: StateOn, Detail: w.detail(pol)})
	}
}

func dial(addr string) (*dbus.Conn, error) {
	if addr == "" {
		return dbus.ConnectSystemBus()
	}
	return dbus.Connect(addr)
}

func (w *watcher) watchSuspend(ctx context.Context, conn *dbus.Conn) error {
	err := conn.AddMatchSignalContext(ctx, dbus.WithMatchSender(logindName), dbus.WithMatchObjectPath(logindPath),
		dbus.WithMatchInterface(managerIface), dbus.WithMatchMember("PrepareForSleep"))
	if err != nil {
		return fmt.Errorf("subscribing to PrepareForSleep: %w", err)
	}
	return w.takeInhibitor(ctx)
}

// takeInhibitor takes logind's delay lock on sleep, unless one is held.
func (w *watcher) takeInhibitor(ctx context.Context) error {
	w.mu.Lock()
	conn, held := w.conn, w.inhibitor != nil
	w.mu.Unlock()
	if held {
		return nil
	}
	if conn == nil {
		return errors.New("not connected to the system bus")
	}
	var fd dbus.UnixFD
	err := conn.Object(logindName, logindPath).CallWithContext(ctx, managerIface+".Inhibit", 0,
		"sleep", inhibitWho, inhibitWhy, "delay").Store(&fd)
	if err != nil {
		return fmt.Errorf("taking logind's sleep delay lock: %w", err)
	}
	f := os.NewFile(uintptr(fd), "logind-inhibitor")
	w.mu.Lock()
	w.inhibitor = f
	w.mu.Unlock()
	return nil
}

// releaseInhibitor closes the inhibitor's descriptor: logind may now let
// the system sleep.
func (w *watcher) releaseInhibitor() {
	w.mu.Lock()
	f := w.inhibitor
	w.inhibitor = nil
	w.mu.Unlock()
	if f != nil {
		f.Close()
	}
}

func (w *watcher) watchSessions(ctx context.Context, conn *dbus.Conn) error {
	s := w.p.opts.Session
	path := []dbus.MatchOption{dbus.WithMatchPathNamespace(sessionPathPrefix)}
	if s.ID != "" {
		var p dbus.ObjectPath
		err := conn.Object(logindName, logindPath).CallWithContext(ctx, managerIface+".GetSession", 0, s.ID).Store(&p)
		if err != nil {
			return fmt.Errorf("logind session %q: %w", s.ID, err)
		}
		w.sessionPath = p
		path = []dbus.MatchOption{dbus.WithMatchObjectPath(p)}
		err = conn.AddMatchSignalContext(ctx, dbus.WithMatchSender(logindName), dbus.WithMatchObjectPath(logindPath),
			dbus.WithMatchInterface(managerIface), dbus.WithMatchMember("SessionRemoved"))
		if err != nil {
			return fmt.Errorf("subscribing to SessionRemoved: %w", err)
		}
	}
	rules := [][]dbus.MatchOption{
		append([]dbus.MatchOption{dbus.WithMatchSender(logindName), dbus.WithMatchInterface(sessionIface),
			dbus.WithMatchMember("Lock")}, path...),
		append([]dbus.MatchOption{dbus.WithMatchSender(logindName), dbus.WithMatchInterface(propsIfc),
			dbus.WithMatchMember("PropertiesChanged"), dbus.WithMatchArg(0, sessionIface)}, path...),
	}
	for _, r := range rules {
		if err := conn.AddMatchSignalContext(ctx, r...); err != nil {
			return fmt.Errorf("subscribing to session signals: %w", err)
		}
	}
	return nil
}

// run handles signals until Close; when the bus goes away it locks (for a
// required policy) and reconnects.
func (w *watcher) run() {
	retry := w.p.opts.retry
	if retry <= 0 {
		retry = time.Second
	}
	for {
		w.mu.Lock()
		sigs := w.sigs
		w.mu.Unlock()
		if sigs != nil {
			w.handleAll(sigs)
		}
		select {
		case <-w.p.done:
			return
		default:
		}
		if sigs != nil {
			w.lost()
		}
		if !w.reconnect(retry) {
			return
		}
	}
}

// handleAll handles signals until the connection closes.
func (w *watcher) handleAll(sigs <-chan *dbus.Signal) {
	for {
		select {
		case <-w.p.done:
			return
		case sig, ok := <-sigs:
			if !ok {
				return
			}
			w.handle(sig)
		}
	}
}

// lost runs when the connection broke: the policies are unavailable until
// it is back, and a required one fails closed.
func (w *watcher) lost() {
	w.mu.Lock()
	w.conn, w.sigs = nil, nil
	w.mu.Unlock()
	// The inhibitor lives on in logind, but nothing would tell us to
	// release it: let the system sleep.
	w.releaseInhibitor()
	o := w.p.opts
	required := false
	for _, c := range []struct {
		pol  Policy
		mode Mode
	}{{PolicySuspend, o.Suspend}, {PolicySessionLock, o.SessionLock}} {
		if c.mode != Off {
			w.p.setStatus(c.pol, PolicyStatus{State: StateUnavailable, Detail: "lost the system bus; reconnecting"})
			required = required || c.mode == On
		}
	}
	w.p.log.Warn("auto-lock: lost the system bus; suspend and session-lock policies are off until it is back")
	if required {
		w.p.lock(ReasonBusLost)
	}
}

// reconnect retries connect with a growing delay until it works (true) or
// the policies close (false).
func (w *watcher) reconnect(delay time.Duration) bool {
	for {
		t := time.NewTimer(delay)
		select {
		case <-w.p.done:
			t.Stop()
			return false
		case <-t.C:
		}
		suspendErr, sessionErr := w.connect()
		w.mu.Lock()
		ok := w.conn != nil
		w.mu.Unlock()
		if ok {
			lg := w.p.log
			if suspendErr != nil {
				lg = lg.WithField(fieldSuspend, suspendErr.Error())
			}
			if sessionErr != nil {
				lg = lg.WithField(fieldSessErr, sessionErr.Error())
			}
			lg.Info("auto-lock: the system bus is back")
			return true
		}
		delay = min(2*delay, maxRetry)
	}
}

// close closes the connection, which ends run's signal loop.
func (w *watcher) close() {
	w.mu.Lock()
	conn := w.conn
	w.mu.Unlock()
	if conn != nil {
		conn.Close()
	}
}

func (w *watcher) handle(sig *dbus.Signal) {
	if sig.Sender == busName && sig.Name == busIface+".NameOwnerChanged" {
		w.logindMoved(sig)
		return
	}
	if sig.Sender != w.logind || w.logind == "" {
		return // not from logind: anyone can send us a signal
	}
	o := w.p.opts
	switch {
	case sig.Name == managerIface+".PrepareForSleep" && sig.Path == logindPath && o.Suspend != Off:
		if len(sig.Body) != 1 {
			return
		}
		if start, ok := sig.Body[0].(bool); ok {
			w.prepareForSleep(start)
		}
	case sig.Name == sessionIface+".Lock" && o.SessionLock != Off:
		if w.watches(sig.Path) {
			w.p.lock(ReasonSessionLock)
		}
	case sig.Name == propsIfc+".PropertiesChanged" && o.SessionLock != Off:
		if w.lockedHintSet(sig) && w.watches(sig.Path) {
			w.p.lock(ReasonSessionLock)
		}
	case sig.Name == managerIface+".SessionRemoved" && sig.Path == logindPath && w.sessionPath != "":
		if len(sig.Body) == 2 && sig.Body[1] == w.sessionPath && !w.sessionDead {
			w.sessionDead = true
			w.p.log.WithField(fieldSession, o.Session.ID).Info("auto-lock: the watched session ended")
			w.p.setStatus(PolicySessionLock, PolicyStatus{State: StateUnavailable, Detail: "session " + o.Session.ID + " ended"})
			w.p.lock(ReasonSessionEnd)
		}
	}
}

// prepareForSleep: true, the system is going to sleep: log out, then let
// it; false, it woke up: take the inhibitor again.
func (w *watcher) prepareForSleep(start bool) {
	if start {
		w.p.lock(ReasonSuspend)
		w.releaseInhibitor()
		w.p.log.Debug("auto-lock: sleep inhibitor released")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	err := w.takeInhibitor(ctx)
	if err != nil {
		w.p.log.WithError(err).Warn("auto-lock: cannot take the sleep inhibitor again after the resume; the next suspend may happen before the logout completes")
	}
	w.setState(PolicySuspend, err)
}

// logindMoved follows logind's unique name; a new logind gets a new
// inhibitor.
func (w *watcher) logindMoved(sig *dbus.Signal) {
	if len(sig.Body) != 3 || sig.Body[0] != logindName {
		return
	}
	owner, _ := sig.Body[2].(string)
	w.logind = owner
	if owner == "" || w.p.opts.Suspend == Off {
		return
	}
	w.releaseInhibitor()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	err := w.takeInhibitor(ctx)
	if err != nil {
		w.p.log.WithError(err).Warn("auto-lock: logind restarted and the sleep inhibitor could not be taken again")
	}
	w.setState(PolicySuspend, err)
}

// lockedHintSet reports whether a PropertiesChanged signal on a session
// says LockedHint is now true.
func (w *watcher) lockedHintSet(sig *dbus.Signal) bool {
	if len(sig.Body) != 3 || sig.Body[0] != sessionIface {
		return false
	}
	if changed, ok := sig.Body[1].(map[string]dbus.Variant); ok {
		if v, ok := changed["LockedHint"]; ok {
			b, _ := v.Value().(bool)
			return b
		}
	}
	// Invalidated without a value: ask.
	if inv, ok := sig.Body[2].([]string); ok {
		for _, name := range inv {
			if name == "LockedHint" {
				v, err := w.property(sig.Path, "LockedHint")
				b, _ := v.(bool)
				return err == nil && b
			}
		}
	}
	return false
}

// watches reports whether the session at path is one the policy follows.
func (w *watcher) watches(path dbus.ObjectPath) bool {
	if w.sessionPath != "" {
		return path == w.sessionPath
	}
	if !strings.HasPrefix(string(path), sessionPathPrefix+"/") {
		return false
	}
	// Session.User is (uo): the uid and the user's object path.
	v, err := w.property(path, "User")
	if err != nil {
		w.p.log.WithField(fieldSession, path).WithError(err).Warn("auto-lock: cannot tell whose session this is; not locking")
		return false
	}
	user, _ := v.([]any)
	if len(user) != 2 {
		return false
	}
	uid, ok := user[0].(uint32)
	return ok && uid == w.p.opts.Session.UID
}

// property reads one property of the session at path.
func (w *watcher) property(path dbus.ObjectPath, name string) (any, error) {
	w.mu.Lock()
	conn := w.conn
	w.mu.Unlock()
	if conn == nil {
		return nil, errors.New("not connected")
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	var v dbus.Variant
	if err := conn.Object(logindName, path).CallWithContext(ctx, propsIfc+".Get", 0, sessionIface, name).Store(&v); err != nil {
		return nil, err
	}
	return v.Value(), nil
}

// Package logindtest runs a private D-Bus daemon with a small fake logind
// on it, for tests of mountd's suspend and session-lock policies (in
// process and against the real binary, which finds the bus through
// DBUS_SYSTEM_BUS_ADDRESS).
//
// The fake implements what mountd uses of org.freedesktop.login1(5):
// Manager.Inhibit (returning the write end of a pipe, whose read end it
// watches: the end of file is the release), Manager.GetSession, the
// Session properties Id, User and LockedHint, and the signals
// PrepareForSleep, SessionRemoved, Lock and PropertiesChanged. It answers
// method calls itself (not through godbus's Export), so that it can close
// its copy of an inhibitor's descriptor as soon as the reply carrying it
// is sent, as logind does.
//
// It is test code: it never runs in the daemon.
package logindtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"golang.org/x/sys/unix"
)

const (
	name         = "org.freedesktop.login1"
	managerPath  = dbus.ObjectPath("/org/freedesktop/login1")
	managerIface = "org.freedesktop.login1.Manager"
	sessionIface = "org.freedesktop.login1.Session"
	propsIface   = "org.freedesktop.DBus.Properties"
)

// busConfig is a bus that lets everybody do everything; {{path}} is the
// socket.
const busConfig = `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path={{path}}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
  </policy>
</busconfig>
`

// RequireDBusDaemon skips the test when dbus-daemon is not installed, or
// fails it under CI=true (CI installs the dbus package).
func RequireDBusDaemon(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("dbus-daemon"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("dbus-daemon unavailable under CI=true: %v", err)
		}
		t.Skipf("dbus-daemon unavailable (apt install dbus): %v", err)
	}
}

// Bus is a private dbus-daemon.
type Bus struct {
	// Addr is the bus's address, for DBUS_SYSTEM_BUS_ADDRESS.
	Addr string

	t    testing.TB
	dir  string
	cmd  *exec.Cmd
	done chan struct{}
}

// StartBus starts a dbus-daemon on a socket in a temp dir; t.Cleanup stops
// it.
func StartBus(t testing.TB) *Bus {
	t.Helper()
	RequireDBusDaemon(t)
	// Unix socket paths are short (108 bytes); t.TempDir can be long.
	dir, err := os.MkdirTemp("", "mountd-bus-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	b := &Bus{t: t, dir: dir}
	b.start()
	t.Cleanup(b.Stop)
	return b
}

func (b *Bus) start() {
	t := b.t
	t.Helper()
	sock := filepath.Join(b.dir, "bus")
	os.Remove(sock)
	cfg := filepath.Join(b.dir, "bus.conf")
	if err := os.WriteFile(cfg, []byte(strings.ReplaceAll(busConfig, "{{path}}", sock)), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("dbus-daemon", "--config-file="+cfg, "--nofork", "--nopidfile", "--print-address=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder // only read after it exited or failed to print
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("dbus-daemon: %v", err)
	}
	b.cmd, b.done = cmd, make(chan struct{})
	go func() { cmd.Wait(); close(b.done) }()
	line := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(out)
		if s.Scan() {
			line <- s.Text()
		}
		close(line)
		for s.Scan() {
		}
	}()
	select {
	case addr, ok := <-line:
		if !ok || addr == "" {
			cmd.Process.Kill()
			<-b.done
			t.Fatalf("dbus-daemon printed no address: %s", stderr.String())
		}
		b.Addr = addr
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatal("dbus-daemon did not start within 30s")
	}
}

// Stop kills the bus daemon and waits for it: every connection to it
// breaks.
func (b *Bus) Stop() {
	if b.cmd == nil {
		return
	}
	b.cmd.Process.Kill()
	<-b.done
	b.cmd = nil
}

// Restart starts a new bus daemon on the same socket (after Stop).
func (b *Bus) Restart() {
	b.t.Helper()
	b.Stop()
	b.start()
}

// Logind is the fake logind. Its methods may be called from any
// goroutine.
type Logind struct {
	t    testing.TB
	conn *dbus.Conn

	mu         sync.Mutex
	changed    chan struct{} // closed and replaced on every change
	inhibitors []*Inhibitor
	sessions   map[string]*session // by id
	onRelease  func(*Inhibitor)
	unique     string // our unique bus name
}

// Inhibitor is one Inhibit call and its pipe.
type Inhibitor struct {
	What, Who, Why, Mode string
	// Caller is the unique bus name of the connection that took it.
	Caller string
	// Released is set once the caller closed its descriptor.
	Released bool

	r *os.File
}

type session struct {
	id         string
	uid        uint32
	lockedHint bool
	path       dbus.ObjectPath
}

// Start connects a fake logind to b and owns org.freedesktop.login1;
// t.Cleanup disconnects it.
func Start(t testing.TB, b *Bus) *Logind {
	t.Helper()
	conn, err := dbus.Connect(b.Addr)
	if err != nil {
		t.Fatalf("fake logind: connecting to %s: %v", b.Addr, err)
	}
	reply, err := conn.RequestName(name, dbus.NameFlagDoNotQueue)
	if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		conn.Close()
		t.Fatalf("fake logind: owning %s: %v %v", name, reply, err)
	}
	l := &Logind{t: t, conn: conn, changed: make(chan struct{}), sessions: map[string]*session{}, unique: conn.Names()[0]}
	// From here on every incoming message comes to serve, which answers
	// the method calls itself.
	msgs := make(chan *dbus.Message, 1024)
	conn.Eavesdrop(msgs)
	go l.serve(msgs)
	t.Cleanup(l.Close)
	return l
}

// Close disconnects the fake from the bus.
func (l *Logind) Close() {
	l.conn.Close()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, in := range l.inhibitors {
		in.r.Close()
	}
}

// Name is the fake's unique bus name.
func (l *Logind) Name() string { return l.unique }

func (l *Logind) notify() {
	close(l.changed)
	l.changed = make(chan struct{})
}

// Wait waits until cond (called with the fake's state locked) holds.
func (l *Logind) Wait(ctx context.Context, what string, cond func() bool) error {
	for {
		l.mu.Lock()
		ok, ch := cond(), l.changed
		l.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("fake logind: waiting for %s: %w", what, ctx.Err())
		}
	}
}

// Held returns the delay inhibitors not yet released. Call it with the
// state locked (inside a Wait condition) or use HeldNow.
func (l *Logind) held() []*Inhibitor {
	var h []*Inhibitor
	for _, in := range l.inhibitors {
		if !in.Released && in.Mode == "delay" {
			h = append(h, in)
		}
	}
	return h
}

// HeldNow returns copies of the delay inhibitors whose descriptor is still
// open somewhere, as the kernel says at this instant (no POLLHUP on the
// read end): a release is seen here as soon as the close returns, before
// the fake's watcher notices it.
func (l *Logind) HeldNow() []Inhibitor {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Inhibitor
	for _, in := range l.inhibitors {
		if in.Mode == "delay" && !in.Released && !hungUp(in.r) {
			out = append(out, *in)
		}
	}
	return out
}

// hungUp reports whether every write end of the pipe is closed.
func hungUp(r *os.File) bool {
	rc, err := r.SyscallConn()
	if err != nil {
		return true
	}
	hup := true
	rc.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if n, err := unix.Poll(fds, 0); err == nil {
			hup = n > 0 && fds[0].Revents&unix.POLLHUP != 0
		}
	})
	return hup
}

// WaitHeld waits until exactly n delay inhibitors are held.
func (l *Logind) WaitHeld(ctx context.Context, n int) error {
	return l.Wait(ctx, fmt.Sprintf("%d held inhibitors", n), func() bool { return len(l.held()) == n })
}

// Inhibits returns how many Inhibit calls were made.
func (l *Logind) Inhibits() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.inhibitors)
}

// Suspend does what logind does before sleep: it emits
// PrepareForSleep(true) and waits until every delay inhibitor held at that
// moment is released. onRelease runs in the goroutine that saw each
// release, as soon as it saw it, before anything else can happen: the
// place to check that the key is already gone. The resume is a separate
// call (Resume), so a test can look at the locked state in between.
func (l *Logind) Suspend(ctx context.Context, onRelease func(*Inhibitor)) error {
	l.mu.Lock()
	pending := l.held()
	l.onRelease = onRelease
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.onRelease = nil
		l.mu.Unlock()
	}()
	if err := l.conn.Emit(managerPath, managerIface+".PrepareForSleep", true); err != nil {
		return err
	}
	return l.Wait(ctx, "the inhibitors to be released", func() bool {
		for _, in := range pending {
			if !in.Released {
				return false
			}
		}
		return true
	})
}

// Resume emits PrepareForSleep(false).
func (l *Logind) Resume() error {
	return l.conn.Emit(managerPath, managerIface+".PrepareForSleep", false)
}

// sessionPath is logind's object path for a session id (sd-bus label
// escaping: [A-Za-z0-9] as is, except a leading digit; others as _xx).
func sessionPath(id string) dbus.ObjectPath {
	var b strings.Builder
	for i := 0; i < len(id); i++ {
		c := id[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "_%02x", c)
		}
	}
	return dbus.ObjectPath("/org/freedesktop/login1/session/" + b.String())
}

// AddSession adds a session of uid and returns its object path.
func (l *Logind) AddSession(id string, uid uint32) dbus.ObjectPath {
	p := sessionPath(id)
	l.mu.Lock()
	l.sessions[id] = &session{id: id, uid: uid, path: p}
	l.notify()
	l.mu.Unlock()
	return p
}

// RemoveSession removes a session and emits SessionRemoved.
func (l *Logind) RemoveSession(id string) error {
	l.mu.Lock()
	s, ok := l.sessions[id]
	delete(l.sessions, id)
	l.mu.Unlock()
	if !ok {
		return fmt.Errorf("no session %q", id)
	}
	return l.conn.Emit(managerPath, managerIface+".SessionRemoved", id, s.path)
}

// LockSession emits the session's Lock signal ('loginctl lock-session').
func (l *Logind) LockSession(id string) error {
	return l.conn.Emit(sessionPath(id), sessionIface+".Lock")
}

// SetLockedHint sets the session's LockedHint and emits PropertiesChanged,
// as logind does when a screen locker calls SetLockedHint.
func (l *Logind) SetLockedHint(id string, locked bool) error {
	l.mu.Lock()
	s, ok := l.sessions[id]
	if ok {
		s.lockedHint = locked
	}
	l.mu.Unlock()
	if !ok {
		return fmt.Errorf("no session %q", id)
	}
	return l.conn.Emit(s.path, propsIface+".PropertiesChanged", sessionIface,
		map[string]dbus.Variant{"LockedHint": dbus.MakeVariant(locked)}, []string{})
}

// serve answers method calls.
func (l *Logind) serve(msgs <-chan *dbus.Message) {
	for m := range msgs {
		if m.Type != dbus.TypeMethodCall {
			continue
		}
		path, _ := m.Headers[dbus.FieldPath].Value().(dbus.ObjectPath)
		iface, _ := m.Headers[dbus.FieldInterface].Value().(string)
		member, _ := m.Headers[dbus.FieldMember].Value().(string)
		switch {
		case iface == "org.freedesktop.DBus.Peer" && member == "Ping":
			l.reply(m)
		case path == managerPath && iface == managerIface && member == "Inhibit":
			l.inhibit(m)
		case path == managerPath && iface == managerIface && member == "GetSession":
			id, _ := bodyString(m, 0)
			l.mu.Lock()
			s, ok := l.sessions[id]
			l.mu.Unlock()
			if !ok {
				l.fail(m, "org.freedesktop.login1.NoSuchSession", fmt.Sprintf("No session '%s' known", id))
				continue
			}
			l.reply(m, s.path)
		case iface == propsIface && member == "Get":
			l.get(m, path)
		default:
			l.fail(m, "org.freedesktop.DBus.Error.UnknownMethod", fmt.Sprintf("fake logind: no %s.%s on %s", iface, member, path))
		}
	}
}

func bodyString(m *dbus.Message, i int) (string, bool) {
	if i >= len(m.Body) {
		return "", false
	}
	s, ok := m.Body[i].(string)
	return s, ok
}

func (l *Logind) get(m *dbus.Message, path dbus.ObjectPath) {
	iface, _ := bodyString(m, 0)
	prop, _ := bodyString(m, 1)
	l.mu.Lock()
	var s *session
	for _, x := range l.sessions {
		if x.path == path {
			s = x
		}
	}
	var v any
	if s != nil && iface == sessionIface {
		switch prop {
		case "Id":
			v = s.id
		case "User":
			v = []any{s.uid, dbus.ObjectPath(fmt.Sprintf("/org/freedesktop/login1/user/_%d", s.uid))}
		case "LockedHint":
			v = s.lockedHint
		}
	}
	l.mu.Unlock()
	if v == nil {
		l.fail(m, "org.freedesktop.DBus.Error.UnknownProperty", fmt.Sprintf("fake logind: no %s.%s on %s", iface, prop, path))
		return
	}
	if u, ok := v.([]any); ok {
		// (uo) as a struct.
		v = struct {
			UID  uint32
			Path dbus.ObjectPath
		}{u[0].(uint32), u[1].(dbus.ObjectPath)}
	}
	l.reply(m, dbus.MakeVariant(v))
}

// inhibit answers Inhibit(what, who, why, mode) with the write end of a
// new pipe, closes its own copy once the reply is sent, and watches the
// read end for the release.
func (l *Logind) inhibit(m *dbus.Message) {
	var args [4]string
	for i := range args {
		s, ok := bodyString(m, i)
		if !ok {
			l.fail(m, "org.freedesktop.DBus.Error.InvalidArgs", "Inhibit takes four strings")
			return
		}
		args[i] = s
	}
	r, w, err := os.Pipe()
	if err != nil {
		l.fail(m, "org.freedesktop.DBus.Error.Failed", err.Error())
		return
	}
	caller, _ := m.Headers[dbus.FieldSender].Value().(string)
	in := &Inhibitor{What: args[0], Who: args[1], Why: args[2], Mode: args[3], Caller: caller, r: r}
	l.mu.Lock()
	l.inhibitors = append(l.inhibitors, in)
	l.mu.Unlock()
	go l.watch(in)
	// Send is synchronous for a reply: the descriptor is in the socket
	// once it returns, and our copy can go.
	l.reply(m, dbus.UnixFD(w.Fd()))
	w.Close()
	l.mu.Lock()
	l.notify()
	l.mu.Unlock()
}

// watch waits for the end of file on an inhibitor's pipe: every copy of
// the write end is closed.
func (l *Logind) watch(in *Inhibitor) {
	var buf [16]byte
	for {
		_, err := in.r.Read(buf[:])
		if err != nil {
			break
		}
	}
	l.mu.Lock()
	f := l.onRelease
	l.mu.Unlock()
	if f != nil {
		f(in)
	}
	l.mu.Lock()
	in.Released = true
	l.notify()
	l.mu.Unlock()
}

func (l *Logind) reply(call *dbus.Message, body ...any) {
	m := &dbus.Message{Type: dbus.TypeMethodReply, Headers: map[dbus.HeaderField]dbus.Variant{
		dbus.FieldReplySerial: dbus.MakeVariant(call.Serial()),
	}, Body: body}
	if s, ok := call.Headers[dbus.FieldSender]; ok {
		m.Headers[dbus.FieldDestination] = s
	}
	if len(body) > 0 {
		m.Headers[dbus.FieldSignature] = dbus.MakeVariant(dbus.SignatureOf(body...))
	}
	if c := l.conn.Send(m, nil); c.Err != nil {
		l.t.Logf("fake logind: reply: %v", c.Err)
	}
}

func (l *Logind) fail(call *dbus.Message, errName, text string) {
	m := &dbus.Message{Type: dbus.TypeError, Headers: map[dbus.HeaderField]dbus.Variant{
		dbus.FieldReplySerial: dbus.MakeVariant(call.Serial()),
		dbus.FieldErrorName:   dbus.MakeVariant(errName),
		dbus.FieldSignature:   dbus.MakeVariant(dbus.SignatureOf(text)),
	}, Body: []any{text}}
	if s, ok := call.Headers[dbus.FieldSender]; ok {
		m.Headers[dbus.FieldDestination] = s
	}
	l.conn.Send(m, nil)
}

// Spoof sends a signal that looks like logind's (same path, interface and
// member) from another connection, unicast to dest (a bus name), the way a
// hostile local process could.
func Spoof(b *Bus, dest string, path dbus.ObjectPath, member string, body ...any) error {
	conn, err := dbus.Connect(b.Addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	i := strings.LastIndex(member, ".")
	if i < 0 {
		return errors.New("member must be interface.member")
	}
	m := &dbus.Message{Type: dbus.TypeSignal, Headers: map[dbus.HeaderField]dbus.Variant{
		dbus.FieldPath:        dbus.MakeVariant(path),
		dbus.FieldInterface:   dbus.MakeVariant(member[:i]),
		dbus.FieldMember:      dbus.MakeVariant(member[i+1:]),
		dbus.FieldDestination: dbus.MakeVariant(dest),
	}, Body: body}
	if len(body) > 0 {
		m.Headers[dbus.FieldSignature] = dbus.MakeVariant(dbus.SignatureOf(body...))
	}
	if c := conn.Send(m, nil); c.Err != nil {
		return c.Err
	}
	// A round trip to the bus: our signal has been routed before this
	// returns (the bus handles one connection's messages in order).
	return conn.BusObject().Call("org.freedesktop.DBus.GetId", 0).Err
}

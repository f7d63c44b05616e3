package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/mountd/mountd/autolock"
	"github.com/mountd/mountd/control"
	"github.com/mountd/mountd/crypto"
)

// lockConfig is the automatic lock part of the daemon's command line.
type lockConfig struct {
	idle    time.Duration
	suspend modeFlag
	session sessionFlag
}

func (l *lockConfig) flags(f *flag.FlagSet) {
	f.DurationVar(&l.idle, "lock-after-idle", 0, "log out after this `duration` without a read or write of encrypted content (e.g. 15m; 0 = never)")
	f.Var(&l.suspend, "lock-on-suspend", "log out before the system suspends or hibernates (logind); =auto: only where logind is available")
	f.Var(&l.session, "lock-on-session-lock", "log out when the user's session locks (logind): alone, any session of the owner of --data; =ID one logind session; =user:NAME any session of NAME; =auto like alone, where logind is available")
}

func (l *lockConfig) validate() error {
	if l.idle != 0 && l.idle < time.Second {
		return usageError{fmt.Errorf("--lock-after-idle %v: at least 1s (or 0 for never)", l.idle)}
	}
	if u := l.session.user; u != "" {
		if _, err := lookupUID(u); err != nil {
			return usageError{fmt.Errorf("--lock-on-session-lock=user:%s: %w", u, err)}
		}
	}
	return nil
}

// options returns the autolock options; data exists by now (its owner is
// the default session user).
func (l *lockConfig) options(data string, kr *crypto.Keyring, log *logrus.Entry) (autolock.Options, error) {
	o := autolock.Options{
		Keys:        kr,
		Log:         log,
		IdleAfter:   l.idle,
		Suspend:     l.suspend.mode,
		SessionLock: l.session.mode,
		Session:     autolock.Session{ID: l.session.id},
	}
	switch {
	case l.session.mode == autolock.Off || l.session.id != "":
	case l.session.user != "":
		uid, err := lookupUID(l.session.user)
		if err != nil {
			return o, err
		}
		o.Session.UID = uid
	default:
		fi, err := os.Stat(data)
		if err != nil {
			return o, err
		}
		o.Session.UID = fi.Sys().(*syscall.Stat_t).Uid
	}
	return o, nil
}

// lockError says which flag a policy error belongs to and what to do.
func lockError(err error) error {
	var pe *autolock.PolicyError
	if !errors.As(err, &pe) {
		return err
	}
	name := map[autolock.Policy]string{
		autolock.PolicyIdle:        "--lock-after-idle",
		autolock.PolicySuspend:     "--lock-on-suspend",
		autolock.PolicySessionLock: "--lock-on-session-lock",
	}[pe.Policy]
	hint := ""
	if errors.Is(err, autolock.ErrNoBus) || errors.Is(err, autolock.ErrNoLogind) {
		hint = fmt.Sprintf(" (servers and containers often have neither a system bus nor logind; %s=auto starts without the policy where it cannot work)", name)
	}
	return fmt.Errorf("%s: %w%s", name, pe.Err, hint)
}

func lookupUID(name string) (uint32, error) {
	u, err := user.Lookup(name)
	if err != nil {
		if u, err = user.LookupId(name); err != nil {
			return 0, fmt.Errorf("no user %q", name)
		}
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	return uint32(uid), err
}

// modeFlag is a bool flag that also takes =auto.
type modeFlag struct{ mode autolock.Mode }

func (m *modeFlag) IsBoolFlag() bool { return true }

func (m *modeFlag) String() string {
	if m == nil {
		return ""
	}
	switch m.mode {
	case autolock.On:
		return "true"
	case autolock.Auto:
		return "auto"
	}
	return "false"
}

func (m *modeFlag) Set(s string) error {
	if s == "auto" {
		m.mode = autolock.Auto
		return nil
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		return errors.New("want true, false or auto")
	}
	m.mode = autolock.Off
	if b {
		m.mode = autolock.On
	}
	return nil
}

// sessionFlag is --lock-on-session-lock[=auto|ID|user:NAME].
type sessionFlag struct {
	modeFlag
	id   string // a logind session id
	user string // a user name or uid
}

func (s *sessionFlag) String() string {
	switch {
	case s == nil:
		return ""
	case s.id != "":
		return s.id
	case s.user != "":
		return "user:" + s.user
	}
	return s.modeFlag.String()
}

func (s *sessionFlag) Set(v string) error {
	s.id, s.user = "", ""
	if err := s.modeFlag.Set(v); err == nil {
		return nil
	}
	s.mode = autolock.On
	if u, ok := strings.CutPrefix(v, "user:"); ok {
		if u == "" {
			return errors.New("user: needs a name")
		}
		s.user = u
		return nil
	}
	// logind session ids are short words of letters and digits ("3",
	// "c2"); anything else is a typo.
	if v == "" || len(v) > 64 || strings.IndexFunc(v, func(r rune) bool {
		return !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '_' || r == '-')
	}) >= 0 {
		return errors.New("want auto, a logind session id or user:NAME")
	}
	s.id = v
	return nil
}

// policyLocker is the policies' Locker: the control plane's Logout, the
// one GET /api/system/logout runs, with the reason recorded.
type policyLocker struct{ svc *control.Service }

func (l policyLocker) Lock(ctx context.Context, reason autolock.Reason) error {
	return l.svc.Logout(control.WithLogoutReason(ctx, string(reason)))
}

// lockPolicies adapts the policies' status to control.LockPolicies.
type lockPolicies struct{ p *autolock.Policies }

func (a lockPolicies) LockPolicies() control.AutoLock {
	st := a.p.Status()
	conv := func(s autolock.PolicyStatus) control.LockPolicy {
		return control.LockPolicy{State: string(s.State), Detail: s.Detail}
	}
	return control.AutoLock{
		Idle:        control.IdlePolicy{LockPolicy: conv(st.Idle), AfterSeconds: st.IdleAfter.Seconds()},
		Suspend:     conv(st.Suspend),
		SessionLock: conv(st.SessionLock),
	}
}

// printLockStatus adds the policies and the last lock to 'mountd status'.
func printLockStatus(w io.Writer, st *control.Status) {
	a := st.AutoLock
	var parts []string
	add := func(name string, p control.LockPolicy, extra string) {
		switch p.State {
		case "", control.PolicyOff:
			return
		case control.PolicyOn:
			parts = append(parts, name+extra)
		default:
			parts = append(parts, fmt.Sprintf("%s %s (%s)", name, p.State, p.Detail))
		}
	}
	add("idle", a.Idle.LockPolicy, " "+(time.Duration(a.Idle.AfterSeconds*float64(time.Second))).String())
	add("suspend", a.Suspend, "")
	add("session lock", a.SessionLock, "")
	if len(parts) == 0 {
		parts = []string{"off"}
	}
	fmt.Fprintf(w, "auto-lock:    %s\n", strings.Join(parts, ", "))
	if l := st.LastLock; l != nil {
		fmt.Fprintf(w, "last lock:    %s at %s\n", l.Reason, l.At.Local().Format(time.RFC3339))
	}
}

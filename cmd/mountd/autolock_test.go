package main

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mountd/mountd/autolock"
	"github.com/mountd/mountd/control"
)

func parseLock(args ...string) (*lockConfig, error) {
	f := flag.NewFlagSet("serve", flag.ContinueOnError)
	f.SetOutput(io.Discard)
	var l lockConfig
	l.flags(f)
	if err := f.Parse(args); err != nil {
		return nil, err
	}
	return &l, l.validate()
}

func TestLockFlags(t *testing.T) {
	for _, c := range []struct {
		args          []string
		suspend, sess autolock.Mode
		id, user      string
		idle          time.Duration
	}{
		{nil, autolock.Off, autolock.Off, "", "", 0},
		{[]string{"--lock-on-suspend", "--lock-on-session-lock"}, autolock.On, autolock.On, "", "", 0},
		{[]string{"--lock-on-suspend=auto", "--lock-on-session-lock=auto"}, autolock.Auto, autolock.Auto, "", "", 0},
		{[]string{"--lock-on-suspend=false", "--lock-on-session-lock=false"}, autolock.Off, autolock.Off, "", "", 0},
		{[]string{"--lock-on-session-lock=c2"}, autolock.Off, autolock.On, "c2", "", 0},
		{[]string{"--lock-on-session-lock=user:root"}, autolock.Off, autolock.On, "", "root", 0},
		{[]string{"--lock-on-session-lock=user:0"}, autolock.Off, autolock.On, "", "0", 0},
		{[]string{"--lock-after-idle", "15m"}, autolock.Off, autolock.Off, "", "", 15 * time.Minute},
	} {
		l, err := parseLock(c.args...)
		if err != nil || l.suspend.mode != c.suspend || l.session.mode != c.sess || l.session.id != c.id ||
			l.session.user != c.user || l.idle != c.idle {
			t.Errorf("%q: %+v %v", c.args, l, err)
		}
	}
	for _, args := range [][]string{
		{"--lock-on-suspend=maybe"},
		{"--lock-on-session-lock=a b"},
		{"--lock-on-session-lock=user:"},
		{"--lock-on-session-lock=user:no-such-user-here"},
		{"--lock-after-idle", "10ms"},
		{"--lock-after-idle", "-1m"},
	} {
		if _, err := parseLock(args...); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
	// As the daemon's command line: a usage error, before anything.
	dir := t.TempDir()
	code, _, errs := runArgs(t, "--data", dir+"/d", "--mount", dir+"/m", "--lock-after-idle", "10ms")
	if code != exitUsage || !strings.Contains(errs, "--lock-after-idle") {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if _, err := os.Stat(dir + "/d"); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a bad --lock flag created the data directory")
	}
}

func TestLockOptionsDefaultUser(t *testing.T) {
	l, err := parseLock("--lock-on-session-lock")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Chown(dir, 4321, 4321); err != nil {
		t.Skipf("cannot chown (not root): %v", err)
	}
	o, err := l.options(dir, nil, nil)
	if err != nil || o.Session != (autolock.Session{UID: 4321}) || o.SessionLock != autolock.On {
		t.Fatalf("%+v %v", o.Session, err)
	}
}

func TestPrintLockStatus(t *testing.T) {
	var b bytes.Buffer
	printLockStatus(&b, &control.Status{})
	if b.String() != "auto-lock:    off\n" {
		t.Fatalf("%q", b.String())
	}
	b.Reset()
	at := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	printLockStatus(&b, &control.Status{
		AutoLock: control.AutoLock{
			Idle:        control.IdlePolicy{LockPolicy: control.LockPolicy{State: "on"}, AfterSeconds: 900},
			Suspend:     control.LockPolicy{State: "unavailable", Detail: "no system D-Bus"},
			SessionLock: control.LockPolicy{State: "on"},
		},
		LastLock: &control.LockEvent{Reason: "suspend", At: at},
	})
	want := "auto-lock:    idle 15m0s, suspend unavailable (no system D-Bus), session lock\n" +
		"last lock:    suspend at " + at.Local().Format(time.RFC3339) + "\n"
	if b.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", b.String(), want)
	}
}

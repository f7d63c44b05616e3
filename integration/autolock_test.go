package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mountd/mountd/autolock/logindtest"
)

// statusOf reads encryption-status without the testing.T helpers, so it
// can run on another goroutine.
func (d *daemon) statusOf() (map[string]any, error) {
	resp, err := d.client.Get("http://" + d.addr + "/api/system/encryption-status")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %d: %v", resp.StatusCode, m)
	}
	return m, nil
}

// lastLock returns the status's last_lock reason ("" when null).
func lastLock(st map[string]any) string {
	ll, _ := st["last_lock"].(map[string]any)
	r, _ := ll["reason"].(string)
	return r
}

// policy returns auto_lock.NAME's state and detail.
func policy(st map[string]any, name string) (state, detail string) {
	al, _ := st["auto_lock"].(map[string]any)
	p, _ := al[name].(map[string]any)
	state, _ = p["state"].(string)
	detail, _ = p["detail"].(string)
	return state, detail
}

// waitLocked waits for the daemon's n-th auto-lock for reason (its log
// line, written once the logout is complete), and returns the status
// then, in which the key must be gone.
func (d *daemon) waitLocked(reason string, n int) map[string]any {
	d.t.Helper()
	if !d.out.waitForCount(60*time.Second, n, "logout: file encryption key cleared", "reason="+reason) {
		d.t.Fatalf("no auto-lock number %d for %s within 60s: %v", n, reason, d.status(false))
	}
	st := d.status(false)
	if st["key_set"] != false {
		d.t.Fatalf("%s: the daemon logged its logout but the key is still set: %v", reason, st)
	}
	return st
}

// TestAutoLockSuspendAndSessionLock runs the real daemon against a private
// system bus with a fake logind: the sleep inhibitor is taken at start and
// released only after the logout is complete, reads through the mount
// (new ones, and on a descriptor opened before) then get EACCES, the next
// login works, the inhibitor is taken again after the resume; a session
// lock logs out too; the logout reply stays the seed's.
func TestAutoLockSuspendAndSessionLock(t *testing.T) {
	bus := logindtest.StartBus(t)
	li := logindtest.Start(t, bus)
	li.AddSession("3", uint32(os.Getuid())) // the data directory's owner
	li.AddSession("4", uint32(os.Getuid())+1)
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	d := newDaemon(t, "--lock-on-suspend", "--lock-on-session-lock")
	d.start()
	held := li.HeldNow()
	if len(held) != 1 || held[0].What != "sleep" || held[0].Mode != "delay" || held[0].Who != "mountd" {
		t.Fatalf("inhibitors once the daemon is up: %+v", held)
	}
	st := d.status(false)
	if s, _ := policy(st, "suspend"); s != "on" {
		t.Fatalf("suspend policy: %v", st["auto_lock"])
	}
	if s, det := policy(st, "session_lock"); s != "on" || !strings.Contains(det, fmt.Sprintf("uid %d", os.Getuid())) {
		t.Fatalf("session_lock policy: %v", st["auto_lock"])
	}
	if s, _ := policy(st, "idle"); s != "off" || st["last_lock"] != nil {
		t.Fatalf("status: %v", st)
	}

	d.mustLogin(password)
	secret := bytes.Repeat([]byte("SLEEPY-SECRET "), 1000)
	path := filepath.Join(d.mnt, "secret.bin")
	if err := os.WriteFile(path, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	early, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer early.Close()

	// The moment logind sees the inhibitor go, the key must be gone.
	var atRelease map[string]any
	var atReleaseErr error
	err = li.Suspend(ctx, func(*logindtest.Inhibitor) { atRelease, atReleaseErr = d.statusOf() })
	if err != nil {
		t.Fatal(err)
	}
	if atReleaseErr != nil || atRelease["key_set"] != false || lastLock(atRelease) != "suspend" {
		t.Fatalf("status when the inhibitor was released: %v %v", atRelease, atReleaseErr)
	}
	if _, err := os.ReadFile(path); !errors.Is(err, syscall.EACCES) {
		t.Fatalf("read after the suspend lock: %v, want EACCES", err)
	}
	buf := make([]byte, 64)
	if _, err := early.ReadAt(buf, 0); !errors.Is(err, syscall.EACCES) {
		t.Fatalf("read on an fd opened before: %v, want EACCES", err)
	}
	if !strings.Contains(d.out.String(), "reason=suspend") {
		t.Fatalf("no log line with the reason:\n%s", d.out.String())
	}

	if err := li.Resume(); err != nil {
		t.Fatal(err)
	}
	if err := li.WaitHeld(ctx, 1); err != nil {
		t.Fatal(err)
	}
	d.mustLogin(password)
	if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("read after the next login: %v", err)
	}
	if _, err := early.ReadAt(buf, 0); err != nil || !bytes.HasPrefix(buf, []byte("SLEEPY-SECRET")) {
		t.Fatalf("the old fd after the next login: %v %q", err, buf)
	}

	// Another user's session locking does nothing; ours does.
	must(t, li.LockSession("4"))
	must(t, li.SetLockedHint("3", true))
	st = d.waitLocked("session_lock", 1)
	if lastLock(st) != "session_lock" {
		t.Fatalf("last lock after the session lock: %v", st["last_lock"])
	}
	if _, err := os.ReadFile(path); !errors.Is(err, syscall.EACCES) {
		t.Fatalf("read after the session lock: %v, want EACCES", err)
	}
	d.mustLogin(password)
	if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("read after the next login: %v", err)
	}

	// The API's logout: the seed's reply, recorded as "request".
	if r := d.logout(); string(bytes.TrimSpace(r.Raw)) != seedLogoutBody {
		t.Fatalf("logout reply %q", r.Raw)
	}
	if st := d.status(false); lastLock(st) != "request" {
		t.Fatalf("last lock after the API logout: %v", st["last_lock"])
	}
	if err := d.stop(); err != nil {
		t.Fatal(err)
	}
	if len(li.HeldNow()) != 0 {
		t.Fatal("the inhibitor outlived the daemon")
	}
}

// TestAutoLockIdle: with --lock-after-idle the daemon logs itself out when
// no encrypted file is used, and again after the next login.
func TestAutoLockIdle(t *testing.T) {
	d := newDaemon(t, "--lock-after-idle", "1s")
	d.start()
	if s, _ := policy(d.status(false), "idle"); s != "on" {
		t.Fatalf("idle policy: %v", d.status(false)["auto_lock"])
	}
	if al := d.status(false)["auto_lock"].(map[string]any); al["idle"].(map[string]any)["after_s"] != 1.0 {
		t.Fatalf("after_s: %v", al)
	}
	for i := range 2 {
		d.mustLogin(password)
		path := filepath.Join(d.mnt, fmt.Sprintf("f%d.bin", i))
		if err := os.WriteFile(path, []byte("idle secret"), 0o600); err != nil {
			t.Fatal(err)
		}
		st := d.waitLocked("idle", i+1)
		if lastLock(st) != "idle" {
			t.Fatalf("last lock: %v", st["last_lock"])
		}
		if _, err := os.ReadFile(path); !errors.Is(err, syscall.EACCES) {
			t.Fatalf("read after the idle lock: %v, want EACCES", err)
		}
	}
}

// TestAutoLockWithoutBus: without a system bus the D-Bus flags stop the
// start with a clear message (and mount nothing); =auto starts with the
// policy reported unavailable.
func TestAutoLockWithoutBus(t *testing.T) {
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/mountd-test-bus")
	for _, flag := range []string{"--lock-on-suspend", "--lock-on-session-lock"} {
		d := newDaemon(t)
		runExpectingFailure(t, flag+": no system D-Bus", "--data", d.data, "--create", "--mount", d.mnt, "--listen", d.addr, flag)
		if isMounted(d.mnt) {
			t.Fatalf("%s: mounted although the start failed", flag)
		}
	}
	d := newDaemon(t, "--lock-on-suspend=auto", "--lock-on-session-lock=auto")
	d.start()
	st := d.status(false)
	for _, name := range []string{"suspend", "session_lock"} {
		if s, det := policy(st, name); s != "unavailable" || !strings.Contains(det, "no system D-Bus") {
			t.Fatalf("%s: %v", name, st["auto_lock"])
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

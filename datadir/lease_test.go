package datadir

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// clock is a test's clock.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

// leaseEnv is a data directory's auth/ opened as Acquire opens it.
type leaseEnv struct {
	t    *testing.T
	dir  string
	auth int
	clk  *clock
}

func newLeaseEnv(t *testing.T) *leaseEnv {
	dir := t.TempDir()
	auth, err := openAuth(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(auth) })
	return &leaseEnv{t: t, dir: dir, auth: auth, clk: &clock{time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}}
}

func (e *leaseEnv) opts() LeaseOptions {
	return LeaseOptions{TTL: time.Minute, NoRenew: true, Now: e.clk.now}
}

func (e *leaseEnv) take(h Holder) (*lease, error) {
	if h.PID == 0 {
		h.PID = os.Getpid()
	}
	return takeLease(e.auth, e.dir, h, e.opts())
}

func (e *leaseEnv) record() leaseRecord {
	e.t.Helper()
	b, err := os.ReadFile(filepath.Join(e.dir, "auth", LeaseName))
	if err != nil {
		e.t.Fatal(err)
	}
	var r leaseRecord
	if err := json.Unmarshal(b, &r); err != nil {
		e.t.Fatal(err)
	}
	return r
}

// noTemps checks that no lease temp file is left in auth/.
func (e *leaseEnv) noTemps() {
	e.t.Helper()
	ents, _ := os.ReadDir(filepath.Join(e.dir, "auth"))
	for _, d := range ents {
		if strings.HasPrefix(d.Name(), leaseTmpPrefix) {
			e.t.Errorf("temp file left: %s", d.Name())
		}
	}
}

var hostA = Holder{Command: "serve", Mount: "/a/mnt", Host: "alpha", BootID: "boot-a", PIDNS: "pid:[1]"}
var hostB = Holder{Command: "serve", Mount: "/b/mnt", Host: "beta", BootID: "boot-b", PIDNS: "pid:[1]"}

// TestLeaseOtherHost: a lease held by another host refuses us, naming the
// holder and its expiry, also once expired (only a human can tell the
// other host is down); BreakLease refuses a live lease without force and
// breaks an expired one; then we take it.
func TestLeaseOtherHost(t *testing.T) {
	e := newLeaseEnv(t)
	a, err := e.take(hostA)
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.take(hostB)
	var held *HeldError
	if !errors.As(err, &held) || held.Holder.Host != "alpha" || held.Holder.Mount != "/a/mnt" {
		t.Fatalf("host B while A holds: %v", err)
	}
	for _, want := range []string{"on host alpha", "/a/mnt", "lease runs until 2026-01-02T03:05:05Z"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q lacks %q", err, want)
		}
	}
	if _, _, err := BreakLease(e.dir, false, e.clk.now()); !errors.Is(err, ErrLeaseLive) {
		t.Fatalf("BreakLease of a live lease: %v", err)
	}
	e.clk.t = e.clk.t.Add(2 * time.Minute) // A stopped renewing
	_, err = e.take(hostB)
	if !errors.As(err, &held) || !strings.Contains(err.Error(), "expired at 2026-01-02T03:05:05Z") ||
		!strings.Contains(err.Error(), "mountd break-lease --data "+e.dir) {
		t.Fatalf("host B after A's lease expired: %v", err)
	}
	info, found, err := BreakLease(e.dir, false, e.clk.now())
	if err != nil || !found || info.Holder.Host != "alpha" {
		t.Fatalf("BreakLease of an expired lease: %+v %v %v", info, found, err)
	}
	b, err := e.take(hostB)
	if err != nil {
		t.Fatalf("host B after the break: %v", err)
	}
	if r := e.record(); r.Host != "beta" || r.Token != b.rec.Token {
		t.Errorf("lease now %+v", r)
	}
	// A, back from the dead, finds out at its next renewal and stops.
	if err := a.renew(); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("A's renewal after the break: %v", err)
	}
	select {
	case <-a.lost:
	default:
		t.Fatal("A's Lost not closed")
	}
	// Releasing A does not remove B's lease.
	if err := a.release(); err != nil {
		t.Fatal(err)
	}
	if r := e.record(); r.Token != b.rec.Token {
		t.Fatal("A's release removed B's lease")
	}
	if err := b.release(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "auth", LeaseName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lease after B's release: %v", err)
	}
	e.noTemps()
}

// TestLeaseRenew: renewal pushes the expiry on; a lease not renewed before
// its expiry is lost (the network went away), and so is one broken by
// force while live.
func TestLeaseRenew(t *testing.T) {
	e := newLeaseEnv(t)
	a, err := e.take(hostA)
	if err != nil {
		t.Fatal(err)
	}
	first := e.record().Expires
	e.clk.t = e.clk.t.Add(20 * time.Second)
	if err := a.renew(); err != nil {
		t.Fatal(err)
	}
	if got := e.record().Expires; !got.Equal(first.Add(20 * time.Second)) {
		t.Errorf("expiry after renewal %v, want %v", got, first.Add(20*time.Second))
	}
	e.clk.t = e.clk.t.Add(61 * time.Second)
	if err := a.renew(); !errors.Is(err, ErrLeaseLost) || !strings.Contains(err.Error(), "not renewed") {
		t.Fatalf("renewal after the expiry: %v", err)
	}

	e2 := newLeaseEnv(t)
	b, err := e2.take(hostB)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := BreakLease(e2.dir, true, e2.clk.now()); err != nil {
		t.Fatal(err)
	}
	if err := b.renew(); !errors.Is(err, ErrLeaseLost) || !strings.Contains(err.Error(), "removed") {
		t.Fatalf("renewal after a forced break: %v", err)
	}
	e.noTemps()
	e2.noTemps()
}

// TestLeaseSameMachine: on this machine a lease whose pid is gone, or
// left by an earlier boot, is taken over at once; one whose pid lives is
// not.
func TestLeaseSameMachine(t *testing.T) {
	me := Holder{Command: "serve"}
	me.Host, me.BootID, me.PIDNS = Identity()
	if me.BootID == "" || me.PIDNS == "" {
		t.Skip("no boot id or pid namespace here")
	}
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	live := exec.Command("sleep", "600")
	if err := live.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { live.Process.Kill(); live.Wait() })

	for _, tc := range []struct {
		name  string
		old   func(h Holder) Holder
		taken bool
	}{
		{"dead pid", func(h Holder) Holder { h.PID = dead.Process.Pid; return h }, true},
		{"earlier boot", func(h Holder) Holder { h.PID = live.Process.Pid; h.BootID = "another-boot"; return h }, true},
		{"live pid", func(h Holder) Holder { h.PID = live.Process.Pid; h.PIDStart = procStart(h.PID); return h }, false},
		{"live pid, no start time", func(h Holder) Holder { h.PID = live.Process.Pid; return h }, false},
		{"pid reused", func(h Holder) Holder { h.PID = live.Process.Pid; h.PIDStart = procStart(h.PID) + 1; return h }, true},
		{"other pid namespace", func(h Holder) Holder { h.PID = dead.Process.Pid; h.PIDNS = "pid:[9]"; return h }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newLeaseEnv(t)
			if _, err := takeLease(e.auth, e.dir, tc.old(me), e.opts()); err != nil {
				t.Fatal(err)
			}
			l, err := e.take(me)
			if tc.taken && err != nil {
				t.Fatalf("not taken over: %v", err)
			}
			if !tc.taken && !errors.Is(err, ErrHeld) {
				t.Fatalf("taken over a live holder: %v", err)
			}
			if tc.taken && e.record().Token != l.rec.Token {
				t.Fatal("the lease on disk is not ours")
			}
			e.noTemps()
		})
	}
}

// TestAuthSymlinkRefused: an auth/ that is a symlink (someone with write
// access to the data directory swapped it) is refused by Acquire, Probe,
// ReadHolder and BreakLease, and nothing is created or read through it.
func TestAuthSymlinkRefused(t *testing.T) {
	dir, elsewhere := t.TempDir(), t.TempDir()
	if err := os.Symlink(elsewhere, filepath.Join(dir, "auth")); err != nil {
		t.Fatal(err)
	}
	if _, err := Acquire(dir, Holder{Command: "serve"}); err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Fatalf("Acquire through a symlinked auth/: %v", err)
	}
	if ents, _ := os.ReadDir(elsewhere); len(ents) != 0 {
		t.Errorf("files made through the symlink: %v", ents)
	}
	if err := os.WriteFile(filepath.Join(elsewhere, LockName), []byte(`{"pid":1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadHolder(dir); err == nil {
		t.Error("ReadHolder read through the symlink")
	}
	if _, _, err := Probe(dir); err == nil {
		t.Error("Probe went through the symlink")
	}
	if _, _, err := BreakLease(dir, true, time.Now()); err == nil {
		t.Error("BreakLease went through the symlink")
	}
	// A symlinked lock file inside a real auth/ is refused too.
	dir2 := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir2, "auth"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(elsewhere, LockName), filepath.Join(dir2, "auth", LockName)); err != nil {
		t.Fatal(err)
	}
	if _, err := Acquire(dir2, Holder{Command: "serve"}); !errors.Is(err, unix.ELOOP) {
		t.Fatalf("Acquire with a symlinked lock file: %v", err)
	}
}

// TestAcquireTakesLease: Acquire takes the lease with the holder's
// identity and Release removes it; a lease of another live host makes
// Acquire refuse even though the flock is free (another mount of a
// network filesystem).
func TestAcquireTakesLease(t *testing.T) {
	dir := t.TempDir()
	l, err := Acquire(dir, Holder{Command: "serve", Mount: "/m"})
	if err != nil {
		t.Fatal(err)
	}
	host, boot, _ := Identity()
	b, err := os.ReadFile(filepath.Join(dir, "auth", LeaseName))
	if err != nil {
		t.Fatal(err)
	}
	var r leaseRecord
	if err := json.Unmarshal(b, &r); err != nil || r.Host != host || r.BootID != boot || r.PID != os.Getpid() ||
		!r.Expires.After(time.Now()) {
		t.Fatalf("lease %s (%v)", b, err)
	}
	select {
	case <-l.Lost():
		t.Fatal("lost at once")
	default:
	}
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "auth", LeaseName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("lease after Release: %v", err)
	}

	// Another host's live lease, no flock.
	e := &leaseEnv{t: t, dir: dir, clk: &clock{time.Now()}}
	if e.auth, err = openAuth(dir, false); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(e.auth)
	o := hostB
	o.PID = 4242
	if _, err := takeLease(e.auth, dir, o, LeaseOptions{NoRenew: true}); err != nil {
		t.Fatal(err)
	}
	_, err = Acquire(dir, Holder{Command: "fsck"})
	var held *HeldError
	if !errors.As(err, &held) || held.Holder.Host != "beta" || held.Holder.PID != 4242 {
		t.Fatalf("Acquire under another host's lease: %v", err)
	}
	// The refused Acquire dropped its flock.
	if _, isHeld, err := Probe(dir); err != nil || isHeld {
		t.Fatalf("flock left behind by a refused Acquire: %v %v", isHeld, err)
	}
}

// TestLeaseCheckOnly: a read-only process writes no lease and is refused
// under another host's live lease, not under a provably dead one.
func TestLeaseCheckOnly(t *testing.T) {
	e := newLeaseEnv(t)
	ro := e.opts()
	ro.CheckOnly = true
	l, err := takeLease(e.auth, e.dir, hostA, ro)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "auth", LeaseName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a check-only lease wrote auth/lease: %v", err)
	}
	if err := l.release(); err != nil {
		t.Fatal(err)
	}
	if _, err := e.take(hostB); err != nil {
		t.Fatal(err)
	}
	if _, err := takeLease(e.auth, e.dir, hostA, ro); !errors.Is(err, ErrHeld) {
		t.Fatalf("check-only under another host's lease: %v", err)
	}
	rebooted := hostB
	rebooted.BootID = "boot-b2"
	if _, err := takeLease(e.auth, e.dir, rebooted, ro); err != nil {
		t.Fatalf("check-only under a lease of an earlier boot: %v", err)
	}
	if r := e.record(); r.Host != "beta" || r.BootID != "boot-b" {
		t.Errorf("the check changed the lease: %+v", r)
	}
}

// TestLeaseRenewInPlace: a renewal rewrites the lease file in place: auth/
// itself does not change (its entries are left alone), and a break that
// read the lease before a renewal still breaks it (the same token), while
// one whose lease was replaced by another holder's puts that back.
func TestLeaseRenewInPlace(t *testing.T) {
	e := newLeaseEnv(t)
	a, err := e.take(hostA)
	if err != nil {
		t.Fatal(err)
	}
	authStat := func() string {
		var x unix.Statx_t
		if err := unix.Statx(unix.AT_FDCWD, filepath.Join(e.dir, "auth"), 0, unix.STATX_BASIC_STATS, &x); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("%d %d.%d %d.%d", x.Ino, x.Mtime.Sec, x.Mtime.Nsec, x.Ctime.Sec, x.Ctime.Nsec)
	}
	seen, err := os.ReadFile(filepath.Join(e.dir, "auth", LeaseName))
	if err != nil {
		t.Fatal(err)
	}
	before := authStat()
	e.clk.t = e.clk.t.Add(20 * time.Second)
	if err := a.renew(); err != nil {
		t.Fatal(err)
	}
	if after := authStat(); after != before {
		t.Errorf("auth/ changed by a renewal: %s -> %s", before, after)
	}
	if r := e.record(); !r.Expires.Equal(e.clk.t.Add(time.Minute)) || r.Token != a.rec.Token {
		t.Errorf("after renewal: %+v", r)
	}
	if err := breakLease(e.auth, seen); err != nil {
		t.Fatalf("break with a pre-renewal read: %v", err)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "auth", LeaseName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("lease after the break: %v", err)
	}
	if err := a.renew(); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("renewal after the break: %v", err)
	}
	// Another holder took it since we read: the break puts it back.
	b, err := e.take(hostB)
	if err != nil {
		t.Fatal(err)
	}
	if err := breakLease(e.auth, seen); !errors.Is(err, ErrLeaseChanged) {
		t.Fatalf("break of a lease that changed hands: %v", err)
	}
	if r := e.record(); r.Token != b.rec.Token {
		t.Fatalf("B's lease not put back: %+v", r)
	}
	if err := b.renew(); err != nil {
		t.Fatalf("B's renewal after the refused break: %v", err)
	}
	e.noTemps()
}

// TestLeaseRemovesStaleTemps: taking the lease removes lease temp files a
// killed process left more than a TTL ago, and leaves younger ones (another
// host's, in flight) and other files alone.
func TestLeaseRemovesStaleTemps(t *testing.T) {
	e := newLeaseEnv(t)
	auth := filepath.Join(e.dir, "auth")
	old, young, other := leaseTmpPrefix+"old", leaseTmpPrefix+"young", "verifier.bin"
	for _, n := range []string{old, young, other} {
		if err := os.WriteFile(filepath.Join(auth, n), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// The test clock is in 2026-01; "now" for the files is the real clock.
	e.clk.t = time.Now()
	long := e.clk.t.Add(-2 * time.Minute)
	for _, n := range []string{old, other} {
		if err := os.Chtimes(filepath.Join(auth, n), long, long); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.take(hostA); err != nil {
		t.Fatal(err)
	}
	for n, want := range map[string]bool{old: false, young: true, other: true} {
		_, err := os.Stat(filepath.Join(auth, n))
		if got := err == nil; got != want {
			t.Errorf("%s present %v, want %v", n, got, want)
		}
	}
}

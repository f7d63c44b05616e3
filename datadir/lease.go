package datadir

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The lease: one writer per data directory across hosts.
//
// flock(2) on auth/lock keeps a second process of this machine out, but
// it does not reach across a network filesystem (sshfs: each mount has
// its own locks; NFS and CephFS: it depends on the client and the
// server). So the holder also takes auth/lease, a small JSON record (its
// Holder, a random token, an expiry), and renews it while it runs:
//
//   - Taking: write the record to a new exclusive temp file
//     auth/.lease.tmp-<token>, fsync it, and link(2) it to auth/lease. link
//     never replaces a name, on NFS too (where O_EXCL was long unreliable);
//     an EEXIST after which the temp file has two links means an NFS
//     retransmission of a link that was done: ours.
//   - A lease already there is another holder's. It is taken over at once
//     only when it is provably dead: same machine (boot id) and pid
//     namespace, and its pid is gone; or same host name with another boot
//     id (the machine rebooted). Otherwise Acquire refuses, naming the
//     holder and its expiry; an expired lease of another machine is broken
//     by hand (BreakLease: mountd break-lease), since only a human can know
//     that the other host is down and not merely cut off.
//   - Renewing: every TTL/3, a new record with a later expiry goes to a temp
//     file and is renamed over auth/lease after checking that the lease
//     there is still ours (its token). A lease found gone or someone else's
//     (broken by hand), or not renewed in time (the network went away), is
//     lost: Lost() is closed, and the holder must stop writing at once (the
//     daemon clears the key, unmounts and exits).
//   - Releasing: remove auth/lease if it is still ours.

// LeaseName is the lease's name inside the auth/ directory.
const LeaseName = "lease"

// DefaultLeaseTTL is how long a lease lasts without renewal.
const DefaultLeaseTTL = 60 * time.Second

const leaseTmpPrefix = ".lease.tmp-"

// ErrLeaseLost: the lease of a held data directory was broken or could
// not be renewed in time; stop writing.
var ErrLeaseLost = errors.New("datadir: lease lost")

// LeaseOptions tune the lease (tests).
type LeaseOptions struct {
	TTL time.Duration // DefaultLeaseTTL if zero
	// NoRenew: do not renew in the background (tests call renew).
	NoRenew bool
	// Now is the clock (time.Now if nil).
	Now func() time.Time
	// CheckOnly: a process that only reads the data directory (fsck,
	// export, info) takes no lease and writes nothing in auth/; it only
	// refuses while another holder's lease is there and not provably dead.
	CheckOnly bool
}

// leaseRecord is the content of auth/lease.
type leaseRecord struct {
	Holder
	Token   string    `json:"token"`
	Expires time.Time `json:"expires"`
}

// procStart is when process pid started (clock ticks since boot, from
// /proc/PID/stat), 0 if unknown: with the boot id it tells a pid reused
// by another process from the holder.
func procStart(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0
	}
	n, _ := strconv.ParseUint(f[19], 10, 64) // field 22: starttime
	return n
}

// Identity is this machine as leases name it: the host name, the kernel's
// boot id and the pid namespace. MOUNTD_HOST_ID, if set (tests: two
// "hosts" on one machine), replaces all three.
func Identity() (host, bootID, pidNS string) {
	if id := os.Getenv("MOUNTD_HOST_ID"); id != "" {
		return id, id, id
	}
	host, _ = os.Hostname()
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		bootID = strings.TrimSpace(string(b))
	}
	pidNS, _ = os.Readlink("/proc/self/ns/pid")
	return host, bootID, pidNS
}

// lease is a held lease.
type lease struct {
	auth int      // auth/ (the Lock's descriptor)
	f    *os.File // our lease file, for renewals (nil: CheckOnly)
	dir  string
	o    LeaseOptions
	rec  leaseRecord

	mu      sync.Mutex
	lostErr error
	lost    chan struct{}
	stop    chan struct{}
	stopped chan struct{}
}

func (o *LeaseOptions) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

func (o *LeaseOptions) ttl() time.Duration {
	if o.TTL > 0 {
		return o.TTL
	}
	return DefaultLeaseTTL
}

func newToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// takeLease takes auth/lease for h, or refuses with a *HeldError.
func takeLease(auth int, dir string, h Holder, o LeaseOptions) (*lease, error) {
	l := &lease{auth: auth, dir: dir, o: o, lost: make(chan struct{})}
	l.rec = leaseRecord{Holder: h, Token: newToken()}
	if o.CheckOnly {
		return l, l.check()
	}
	for range 5 {
		l.rec.Expires = o.now().Add(o.ttl()).UTC()
		ok, err := l.link()
		if err != nil {
			return nil, err
		}
		if ok {
			l.removeStaleTemps()
			if !o.NoRenew {
				l.stop, l.stopped = make(chan struct{}), make(chan struct{})
				go l.renewLoop()
			}
			return l, nil
		}
		raw, err := readAt(auth, LeaseName)
		if err == unix.ENOENT {
			continue // released meanwhile: try again
		}
		if err != nil {
			return nil, fmt.Errorf("datadir: read lease: %w", err)
		}
		var other leaseRecord
		if json.Unmarshal(raw, &other) != nil || other.Token == "" {
			return nil, &HeldError{Dir: dir, Now: o.now()}
		}
		if !provablyDead(&other.Holder, &h) {
			return nil, &HeldError{Dir: dir, Holder: other.Holder, Expires: other.Expires, Now: o.now()}
		}
		if err := breakLease(auth, raw); err != nil && err != ErrLeaseChanged {
			return nil, err
		}
	}
	return nil, fmt.Errorf("datadir: cannot take the lease of %s: it keeps changing", dir)
}

// removeStaleTemps removes lease temp files older than a TTL: left by a
// process killed while taking or breaking a lease (younger ones may be
// another host's, in flight).
func (l *lease) removeStaleTemps() {
	fd, err := unix.Openat(l.auth, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	d := os.NewFile(uintptr(fd), "auth")
	defer d.Close()
	names, _ := d.Readdirnames(-1)
	cutoff := l.o.now().Add(-l.o.ttl())
	for _, n := range names {
		var st unix.Stat_t
		if !strings.HasPrefix(n, leaseTmpPrefix) || unix.Fstatat(l.auth, n, &st, unix.AT_SYMLINK_NOFOLLOW) != nil {
			continue
		}
		if st.Mode&unix.S_IFMT == unix.S_IFREG && time.Unix(st.Mtim.Unix()).Before(cutoff) {
			_ = unix.Unlinkat(l.auth, n, 0)
		}
	}
}

// check refuses while a lease not provably dead is there.
func (l *lease) check() error {
	raw, err := readAt(l.auth, LeaseName)
	if err == unix.ENOENT {
		return nil
	}
	if err != nil {
		return fmt.Errorf("datadir: read lease: %w", err)
	}
	var other leaseRecord
	if json.Unmarshal(raw, &other) != nil || other.Token == "" {
		return &HeldError{Dir: l.dir, Now: l.o.now()}
	}
	if provablyDead(&other.Holder, &l.rec.Holder) {
		return nil
	}
	return &HeldError{Dir: l.dir, Holder: other.Holder, Expires: other.Expires, Now: l.o.now()}
}

// provablyDead reports whether the holder other of a lease is certainly
// gone, judged by us (h).
func provablyDead(other, h *Holder) bool {
	if other.Host != h.Host || other.BootID == "" || h.BootID == "" {
		return false
	}
	if other.BootID != h.BootID {
		return true // the same host, rebooted
	}
	if other.PIDNS != h.PIDNS || other.PID <= 0 || other.PID == h.PID {
		return false
	}
	if unix.Kill(other.PID, 0) == unix.ESRCH {
		return true
	}
	// The pid lives: the holder, or another process that reused it.
	return other.PIDStart != 0 && procStart(other.PID) != other.PIDStart
}

// link writes the record to a temp file and links it to auth/lease.
// ok is false when a lease is there. On success l.f is the lease, open for
// its renewals.
func (l *lease) link() (ok bool, err error) {
	tmp, f, err := l.writeTmp()
	if err != nil {
		return false, err
	}
	defer func() { _ = unix.Unlinkat(l.auth, tmp, 0) }()
	err = unix.Linkat(l.auth, tmp, l.auth, LeaseName, 0)
	if err == unix.EEXIST {
		var st unix.Stat_t
		if unix.Fstatat(l.auth, tmp, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Nlink == 2 {
			err = nil // a retransmitted link that was done
		}
	}
	switch err {
	case nil:
		l.f = f
		return true, unix.Fsync(l.auth)
	case unix.EEXIST:
		f.Close()
		return false, nil
	}
	f.Close()
	return false, fmt.Errorf("datadir: take lease: %w", err)
}

// leasePad is the size the record is padded to (with spaces, which JSON
// ignores), so that a renewal rewrites it in place without leaving the
// tail of a longer one.
const leasePad = 4096

// marshal is the record as written: JSON padded with spaces.
func (l *lease) marshal() []byte {
	b, _ := json.Marshal(&l.rec)
	n := max(leasePad, (len(b)+1+leasePad-1)/leasePad*leasePad)
	out := bytes.Repeat([]byte{' '}, n)
	copy(out, b)
	out[n-1] = '\n'
	return out
}

// writeTmp writes the record to a new exclusive temp file in auth/, made
// durable, and returns its name and the file, open for writing.
func (l *lease) writeTmp() (string, *os.File, error) {
	name := leaseTmpPrefix + newToken()
	fd, err := unix.Openat(l.auth, name, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return "", nil, fmt.Errorf("datadir: lease: %w", err)
	}
	f := os.NewFile(uintptr(fd), name)
	_, err = f.Write(l.marshal())
	if err == nil {
		err = f.Sync()
	}
	if err != nil {
		f.Close()
		_ = unix.Unlinkat(l.auth, name, 0)
		return "", nil, fmt.Errorf("datadir: lease: %w", err)
	}
	return name, f, nil
}

// tokenOf is the token of a lease's content ("" if unreadable).
func tokenOf(raw []byte) string {
	var r leaseRecord
	if json.Unmarshal(raw, &r) != nil {
		return ""
	}
	return r.Token
}

// breakLease removes the lease whose content is seen, and only that one
// (renewed or not: the same token): it is renamed aside (only one of
// several breakers succeeds), compared, and put back if it was another
// (ErrLeaseChanged).
func breakLease(auth int, seen []byte) error {
	aside := leaseTmpPrefix + "broken-" + newToken()
	if err := unix.Renameat(auth, LeaseName, auth, aside); err != nil {
		if err == unix.ENOENT {
			return nil
		}
		return fmt.Errorf("datadir: break lease: %w", err)
	}
	got, err := readAt(auth, aside)
	if err == nil && tokenOf(got) != tokenOf(seen) {
		// A new lease, taken meanwhile: give it back.
		err := unix.Linkat(auth, aside, auth, LeaseName, 0)
		_ = unix.Unlinkat(auth, aside, 0)
		if err != nil && err != unix.EEXIST {
			return fmt.Errorf("datadir: break lease: cannot put back a lease taken meanwhile: %w", err)
		}
		return ErrLeaseChanged
	}
	_ = unix.Unlinkat(auth, aside, 0)
	return unix.Fsync(auth)
}

// ErrLeaseChanged: the lease to break was replaced by another meanwhile;
// look again.
var ErrLeaseChanged = errors.New("datadir: the lease changed hands meanwhile")

// renewLoop renews the lease every TTL/3 until released or lost.
func (l *lease) renewLoop() {
	defer close(l.stopped)
	tick := time.NewTicker(l.o.ttl() / 3)
	defer tick.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-tick.C:
			if err := l.renew(); errors.Is(err, ErrLeaseLost) {
				return
			}
		}
	}
}

// renew extends the lease if it is still ours. An error wrapping
// ErrLeaseLost means it was lost (and Lost is closed); another error is a
// failed attempt (the next one may succeed before the expiry).
func (l *lease) renew() error {
	if err := l.Err(); err != nil {
		return err
	}
	now := l.o.now()
	expired := !now.Before(l.rec.Expires)
	if expired {
		return l.setLost(fmt.Errorf("%w: not renewed before it expired at %s", ErrLeaseLost, l.rec.Expires.Format(time.RFC3339)))
	}
	raw, err := readAt(l.auth, LeaseName)
	if err == unix.ENOENT {
		return l.setLost(fmt.Errorf("%w: auth/lease was removed (broken by hand?)", ErrLeaseLost))
	}
	if err != nil {
		return fmt.Errorf("datadir: renew lease: %w", err)
	}
	var cur leaseRecord
	if json.Unmarshal(raw, &cur) != nil || cur.Token != l.rec.Token {
		return l.setLost(fmt.Errorf("%w: auth/lease now belongs to pid %d on host %s", ErrLeaseLost, cur.PID, cur.Host))
	}
	if l.f == nil {
		return fmt.Errorf("datadir: renew lease: not open")
	}
	// Still ours: rewrite it in place, through the descriptor of our
	// own lease file. Had it been broken just now, this would write to
	// the file renamed aside, not to a new holder's.
	next := l.rec
	next.Expires = now.Add(l.o.ttl()).UTC()
	old := l.rec
	l.rec = next
	_, err = l.f.WriteAt(l.marshal(), 0)
	if err == nil {
		err = l.f.Sync()
	}
	if err != nil {
		l.rec = old
		return fmt.Errorf("datadir: renew lease: %w", err)
	}
	return nil
}

func (l *lease) setLost(err error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lostErr == nil {
		l.lostErr = err
		close(l.lost)
	}
	return l.lostErr
}

// Err is why the lease was lost, or nil.
func (l *lease) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lostErr
}

// release stops the renewal and removes the lease if it is still ours.
func (l *lease) release() error {
	if l == nil || l.o.CheckOnly {
		return nil
	}
	if l.stop != nil {
		close(l.stop)
		<-l.stopped
		l.stop = nil
	}
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
	if l.Err() != nil {
		return nil
	}
	raw, err := readAt(l.auth, LeaseName)
	if err != nil {
		return nil
	}
	var cur leaseRecord
	if json.Unmarshal(raw, &cur) != nil || cur.Token != l.rec.Token {
		return nil
	}
	if err := unix.Unlinkat(l.auth, LeaseName, 0); err != nil {
		return fmt.Errorf("datadir: release lease: %w", err)
	}
	return unix.Fsync(l.auth)
}

// Lost is closed when the lease is lost (broken by hand, or not renewed
// in time): the holder must stop writing to the data directory at once.
// Err then says why.
func (l *Lock) Lost() <-chan struct{} { return l.lease.lost }

// Err is why the lease was lost (wrapping ErrLeaseLost), or nil.
func (l *Lock) Err() error { return l.lease.Err() }

// LeaseInfo describes the lease of a data directory, for BreakLease and
// its caller.
type LeaseInfo struct {
	Holder  Holder
	Expires time.Time
}

// ErrLeaseLive: BreakLease refused to break a lease that has not expired.
var ErrLeaseLive = errors.New("the lease has not expired")

// BreakLease removes the lease of dataDir, so that another host may take
// the data directory: a lease whose holder stopped renewing it (its host
// died, or lost the network). A lease that has not expired is broken only
// with force (its holder, if alive, stops writing at its next renewal,
// within a third of its TTL). It reports the lease it broke; found is false
// when there was none. It does not take the flock: a holder on this
// machine is not affected by its lease being broken until it renews.
func BreakLease(dataDir string, force bool, now time.Time) (info LeaseInfo, found bool, err error) {
	auth, err := openAuth(dataDir, false)
	if err != nil {
		return info, false, err
	}
	defer unix.Close(auth)
	raw, err := readAt(auth, LeaseName)
	if err == unix.ENOENT {
		return info, false, nil
	}
	if err != nil {
		return info, false, fmt.Errorf("datadir: read lease: %w", err)
	}
	var rec leaseRecord
	if json.Unmarshal(raw, &rec) == nil {
		info = LeaseInfo{Holder: rec.Holder, Expires: rec.Expires}
	}
	if !force && !info.Expires.IsZero() && now.Before(info.Expires) {
		return info, true, ErrLeaseLive
	}
	return info, true, breakLease(auth, raw)
}

// Package datadir guards a data directory: one mountd process at a time
// (the daemon, or an offline command such as fsck or export) holds its
// lock, and a refused process is told who holds it.
//
// The lock is flock(2) on auth/lock, held on an open descriptor for the
// holder's life, so it disappears with the process (also after kill -9).
// The file records who holds it (pid, command, mountpoint) for the refusal
// message; its content is advisory, the flock is what counts. flock does
// not reach other hosts of a network filesystem, so the holder also takes
// a lease, auth/lease, renewed while it runs (lease.go); a holder whose
// lease is lost must stop writing (Lock.Lost).
//
// auth/ and its files are opened from the data directory's descriptor
// without following symlinks: whoever may write the data directory must
// not redirect the lock or the lease elsewhere.
//
// It imports only the standard library and x/sys; it never logs.
package datadir

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// LockName is the lock file's name inside the auth/ directory.
const LockName = "lock"

// authDir is the directory under the data directory that holds the
// verifier and the lock; the mount hides it.
const authDir = "auth"

// Holder describes the process holding a data directory.
type Holder struct {
	PID       int       `json:"pid"`
	Command   string    `json:"command"`         // "serve", "fsck", ...
	Mount     string    `json:"mount,omitempty"` // the daemon's mountpoint
	Listen    string    `json:"listen,omitempty"`
	StartedAt time.Time `json:"started_at"`
	// The holder's machine (lease.go: Identity): its host name, boot id
	// and pid namespace. Only on the same machine does its pid mean
	// anything here.
	Host   string `json:"host,omitempty"`
	BootID string `json:"boot_id,omitempty"`
	PIDNS  string `json:"pid_ns,omitempty"`
	// PIDStart is when the holder's process started (clock ticks since
	// boot), telling it from a later process with its pid.
	PIDStart uint64 `json:"pid_start,omitempty"`
}

// HeldError is returned by Acquire when another process holds the lock.
type HeldError struct {
	Dir    string
	Holder Holder // zero if the holder's record could not be read
	// Expires is set when the refusal comes from the lease (a holder the
	// flock did not see: another host, or another mount of a network
	// filesystem): when the holder's lease runs out unless renewed.
	Expires time.Time
	// Now is when the lease was judged (for the message).
	Now time.Time
}

func (e *HeldError) Error() string {
	h := e.Holder
	var msg string
	on := ""
	if !e.Expires.IsZero() && h.Host != "" {
		on = " on host " + h.Host
	}
	switch {
	case h.PID == 0:
		msg = fmt.Sprintf("data directory %s is in use by another mountd process", e.Dir)
	case h.Command == "serve" && h.Mount != "":
		msg = fmt.Sprintf("data directory %s is served by mountd pid %d%s (mounted at %s)", e.Dir, h.PID, on, h.Mount)
	default:
		msg = fmt.Sprintf("data directory %s is in use by mountd %s, pid %d%s", e.Dir, h.Command, h.PID, on)
	}
	switch {
	case e.Expires.IsZero():
	case e.Now.Before(e.Expires):
		msg += fmt.Sprintf("; its lease runs until %s", e.Expires.UTC().Format(time.RFC3339))
	default:
		msg += fmt.Sprintf("; its lease expired at %s, not renewed: if that process is gone (its host down), "+
			"run 'mountd break-lease --data %s'", e.Expires.UTC().Format(time.RFC3339), e.Dir)
	}
	return msg
}

// ErrHeld matches a *HeldError with errors.Is.
var ErrHeld = errors.New("data directory in use")

// Is makes errors.Is(err, ErrHeld) true for a *HeldError.
func (e *HeldError) Is(target error) bool { return target == ErrHeld }

// Lock is a held data-directory lock: the flock and the lease.
type Lock struct {
	f     *os.File // auth/lock, flocked
	auth  int      // auth/, opened without following symlinks
	dir   string
	lease *lease
}

// Acquire takes the lock of dataDir (which must exist) for the process
// described by h (PID, StartedAt and the host identity are filled in when
// zero): the flock on auth/lock, then the lease auth/lease (lease.go),
// which keeps a daemon on another host out where flock does not reach.
// It creates auth/ (0700) and the lock file (0600) when missing; auth/
// and its files are opened without following symlinks. Another holder
// gives a *HeldError.
func Acquire(dataDir string, h Holder) (*Lock, error) {
	return AcquireWith(dataDir, h, LeaseOptions{})
}

// AcquireWith is Acquire with the lease's options.
func AcquireWith(dataDir string, h Holder, o LeaseOptions) (*Lock, error) {
	auth, err := openAuth(dataDir, true)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Openat(auth, LockName, unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		unix.Close(auth)
		return nil, fmt.Errorf("datadir: open lock: %w", err)
	}
	f := os.NewFile(uintptr(fd), filepath.Join(dataDir, authDir, LockName))
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		unix.Close(auth)
		if errors.Is(err, unix.EWOULDBLOCK) {
			held := &HeldError{Dir: dataDir}
			held.Holder, _ = ReadHolder(dataDir)
			return nil, held
		}
		return nil, fmt.Errorf("datadir: lock %s: %w", f.Name(), err)
	}
	if h.PID == 0 {
		h.PID = os.Getpid()
	}
	if h.StartedAt.IsZero() {
		h.StartedAt = time.Now().UTC()
	}
	if h.Host == "" {
		h.Host, h.BootID, h.PIDNS = Identity()
	}
	if h.PIDStart == 0 && h.PID == os.Getpid() {
		h.PIDStart = procStart(h.PID)
	}
	l := &Lock{f: f, auth: auth, dir: dataDir}
	if l.lease, err = takeLease(auth, dataDir, h, o); err != nil {
		f.Close()
		unix.Close(auth)
		return nil, err
	}
	b, _ := json.Marshal(h)
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt(append(b, '\n'), 0)
	}
	return l, nil
}

// openAuth opens dataDir's auth/ directory (making it, 0700, if create),
// never through a symlink: auth/ itself must be a directory.
func openAuth(dataDir string, create bool) (int, error) {
	dfd, err := unix.Open(dataDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("datadir: %w", err)
	}
	defer unix.Close(dfd)
	if create {
		if err := unix.Mkdirat(dfd, authDir, 0o700); err != nil && err != unix.EEXIST {
			return -1, fmt.Errorf("datadir: %s: %w", filepath.Join(dataDir, authDir), err)
		}
	}
	fd, err := unix.Openat(dfd, authDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if err == unix.ELOOP || err == unix.ENOTDIR {
			err = fmt.Errorf("%w (not a directory, or a symlink: refused)", err)
		}
		return -1, fmt.Errorf("datadir: %s: %w", filepath.Join(dataDir, authDir), err)
	}
	return fd, nil
}

// readAuthFile reads auth/name without following symlinks.
func readAuthFile(dataDir, name string) ([]byte, error) {
	auth, err := openAuth(dataDir, false)
	if err != nil {
		return nil, err
	}
	defer unix.Close(auth)
	return readAt(auth, name)
}

// readAt reads the regular file name in directory dirfd, not following
// a symlink.
func readAt(dirfd int, name string) ([]byte, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("datadir: %s is not a regular file", name)
	}
	return io.ReadAll(io.LimitReader(f, 1<<16))
}

// Probe reports whether another process holds the lock of dataDir, and
// who (the holder's record, zero if it cannot be read). It takes nothing:
// it only tries a shared lock, and drops it at once. A data directory
// without a lock file is not held.
func Probe(dataDir string) (h Holder, held bool, err error) {
	path := filepath.Join(dataDir, authDir, LockName)
	auth, err := openAuth(dataDir, false)
	if errors.Is(err, unix.ENOENT) {
		return Holder{}, false, nil
	}
	if err != nil {
		return Holder{}, false, err
	}
	defer unix.Close(auth)
	fd, err := unix.Openat(auth, LockName, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err == unix.ENOENT {
		return Holder{}, false, nil
	}
	if err != nil {
		return Holder{}, false, fmt.Errorf("datadir: open lock: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Flock(fd, unix.LOCK_SH|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			h, _ = ReadHolder(dataDir)
			return h, true, nil
		}
		return Holder{}, false, fmt.Errorf("datadir: lock %s: %w", path, err)
	}
	return Holder{}, false, nil // closing drops the shared lock
}

// ReadHolder returns the record of the last process that took the lock of
// dataDir. It says nothing about whether that process still holds it.
func ReadHolder(dataDir string) (Holder, error) {
	var h Holder
	b, err := readAuthFile(dataDir, LockName)
	if err != nil {
		return h, err
	}
	err = json.Unmarshal(b, &h)
	return h, err
}

// Release gives up the lease (removing it if it is still ours) and
// drops the flock. It is idempotent.
func (l *Lock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.lease.release()
	if cerr := l.f.Close(); err == nil { // closing the last descriptor drops the flock
		err = cerr
	}
	unix.Close(l.auth)
	l.f = nil
	return err
}

// Package datadir guards a data directory: one mountd process at a time
// (the daemon, or an offline command such as fsck or export) holds its
// lock, and a refused process is told who holds it.
//
// The lock is flock(2) on auth/lock, held on an open descriptor for the
// holder's life, so it disappears with the process (also after kill -9).
// The file records who holds it (pid, command, mountpoint) for the refusal
// message; its content is advisory, the flock is what counts.
//
// It imports only the standard library and x/sys; it never logs.
package datadir

import (
	"encoding/json"
	"errors"
	"fmt"
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
}

// HeldError is returned by Acquire when another process holds the lock.
type HeldError struct {
	Dir    string
	Holder Holder // zero if the holder's record could not be read
}

func (e *HeldError) Error() string {
	h := e.Holder
	switch {
	case h.PID == 0:
		return fmt.Sprintf("data directory %s is in use by another mountd process", e.Dir)
	case h.Command == "serve" && h.Mount != "":
		return fmt.Sprintf("data directory %s is served by mountd pid %d (mounted at %s)", e.Dir, h.PID, h.Mount)
	default:
		return fmt.Sprintf("data directory %s is in use by mountd %s, pid %d", e.Dir, h.Command, h.PID)
	}
}

// ErrHeld matches a *HeldError with errors.Is.
var ErrHeld = errors.New("data directory in use")

// Is makes errors.Is(err, ErrHeld) true for a *HeldError.
func (e *HeldError) Is(target error) bool { return target == ErrHeld }

// Lock is a held data-directory lock.
type Lock struct {
	f   *os.File
	dir string
}

// Acquire takes the lock of dataDir (which must exist) for the process
// described by h (PID and StartedAt are filled in when zero). It creates
// auth/ (0700) and the lock file (0600) when missing. Another holder gives
// a *HeldError.
func Acquire(dataDir string, h Holder) (*Lock, error) {
	dir := filepath.Join(dataDir, authDir)
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("datadir: %w", err)
	}
	path := filepath.Join(dir, LockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("datadir: open lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			held := &HeldError{Dir: dataDir}
			held.Holder, _ = ReadHolder(dataDir)
			return nil, held
		}
		return nil, fmt.Errorf("datadir: lock %s: %w", path, err)
	}
	if h.PID == 0 {
		h.PID = os.Getpid()
	}
	if h.StartedAt.IsZero() {
		h.StartedAt = time.Now().UTC()
	}
	b, _ := json.Marshal(h)
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt(append(b, '\n'), 0)
	}
	return &Lock{f: f, dir: dataDir}, nil
}

// Probe reports whether another process holds the lock of dataDir, and
// who (the holder's record, zero if it cannot be read). It takes nothing:
// it only tries a shared lock, and drops it at once. A data directory
// without a lock file is not held.
func Probe(dataDir string) (h Holder, held bool, err error) {
	path := filepath.Join(dataDir, authDir, LockName)
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrNotExist) {
		return Holder{}, false, nil
	}
	if err != nil {
		return Holder{}, false, fmt.Errorf("datadir: open lock: %w", err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
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
	b, err := os.ReadFile(filepath.Join(dataDir, authDir, LockName))
	if err != nil {
		return h, err
	}
	err = json.Unmarshal(b, &h)
	return h, err
}

// Release drops the lock. It is idempotent.
func (l *Lock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close() // closing the last descriptor drops the flock
	l.f = nil
	return err
}

package control

import (
	"context"
	"time"

	"github.com/mountd/mountd/task"
)

// Backend is what the HTTP handlers need. Service is the real one; tests use
// a fake. Errors are matched with errors.Is against crypto's sentinels
// (ErrInvalidPassword, ErrLocked, ErrNoVerifier, ...) and this package's
// (ErrTaskRunning, ErrEncryptedWithoutVerifier) and task.ErrNotFound; anything else is
// a 500 whose text is logged and never sent.
//
// Password slices belong to the caller, which zeroes them when the call
// returns: a Backend must neither keep nor modify them.
type Backend interface {
	// Login sets the key from password: it creates the verifier on the first
	// login, verifies it later. A wrong password leaves a set key set.
	Login(ctx context.Context, password []byte) (LoginResult, error)
	// Logout clears the key. It returns after the key bytes are zero and the
	// filesystem has dropped cached plaintext.
	Logout(ctx context.Context) error
	// ChangePassword rewraps the master key under newPassword.
	ChangePassword(ctx context.Context, oldPassword, newPassword []byte) error
	// ResetPassword rewraps the master key under newPassword after
	// unwrapping it with the recovery key (its text form) instead of the
	// old password. It never sets or changes the key in memory.
	ResetPassword(ctx context.Context, recoveryKey, newPassword []byte) error
	// Status reports the encryption state; scan adds file counts.
	Status(ctx context.Context, scan bool) (Status, error)
	// StartEncryptExisting starts the migration task, or returns the running
	// one with started false. ctx bounds the call, not the task.
	StartEncryptExisting(ctx context.Context) (t task.Record, started bool, err error)
	// Task returns the task with this id, running or finished.
	Task(id string) (task.Record, bool)
	// Tasks returns the tasks the daemon remembers, newest first.
	Tasks() []task.Record
	// CancelTask asks a running task to stop and returns its state; a
	// finished task is returned unchanged; task.ErrNotFound for an unknown id.
	CancelTask(id string) (task.Record, error)
}

// LoginResult says what a successful login did.
type LoginResult struct {
	// Created is true when this login created the verifier (first login).
	Created bool
	// AlreadySet is true when the same key was already set: nothing changed.
	AlreadySet bool
}

// Status is the encryption state reported by /api/system/encryption-status.
// Its JSON form is the response body minus the envelope.
type Status struct {
	KeySet      bool `json:"key_set"`
	PasswordSet bool `json:"password_set"`
	// RecoveryKeySet reports whether the verifier holds a recovery slot.
	RecoveryKeySet bool     `json:"recovery_key_set"`
	Cipher         string   `json:"cipher"`
	KDF            KDFInfo  `json:"kdf"`
	Protect        []string `json:"protect"`
	// Task is the running task, else the last one, else nil (JSON null).
	Task *task.Record `json:"task"`
	// AutoLock are the automatic lock policies.
	AutoLock AutoLock `json:"auto_lock"`
	// LastLock is the last time the key was cleared since the daemon
	// started, else nil (JSON null).
	LastLock *LockEvent `json:"last_lock"`
	// PendingEncryption counts the protected files whose plaintext waits
	// for encryption: written through the mount while logged out, or
	// moved onto a protected name and not yet encrypted (open, or
	// waiting for a login).
	PendingEncryption int `json:"pending_encryption"`
	// Files is set only when a scan was asked for.
	Files *FileCounts `json:"files,omitempty"`
	// Daemon describes the process serving the call; nil when the
	// Service was not told (ServiceOptions.Daemon).
	Daemon *DaemonInfo `json:"daemon,omitempty"`
}

// DaemonInfo describes the daemon process: what it serves, where, since
// when, and which build it is.
type DaemonInfo struct {
	Version    string    `json:"version"`
	PID        int       `json:"pid"`
	DataDir    string    `json:"data_dir"`
	Mountpoint string    `json:"mountpoint"`
	Listen     string    `json:"listen"`
	StartedAt  time.Time `json:"started_at"`
	// UptimeS is the whole seconds since StartedAt, filled in by Status.
	UptimeS int64 `json:"uptime_s"`
}

// KDFInfo describes the password KDF: the parameters recorded in the
// verifier when one exists, else those a first login would use.
type KDFInfo struct {
	Name      string `json:"name"` // "argon2id"
	Time      uint32 `json:"time"`
	MemoryKiB uint32 `json:"memory_kib"`
	Threads   uint8  `json:"threads"`
}

// FileCounts counts the regular files with a protected name, by whether
// their content is encrypted.
type FileCounts struct {
	Encrypted int64 `json:"encrypted"`
	Plaintext int64 `json:"plaintext"`
}

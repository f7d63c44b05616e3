package control

import (
	"context"
	"encoding/json"
	"time"
)

// Backend is what the HTTP handlers need. Service is the real one; tests use
// a fake. Errors are matched with errors.Is against crypto's sentinels
// (ErrInvalidPassword, ErrLocked, ErrNoVerifier, ...) and this package's
// (ErrNotFound, ErrTaskRunning, ErrEncryptedWithoutVerifier); anything else is
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
	// Status reports the encryption state; scan adds file counts.
	Status(ctx context.Context, scan bool) (Status, error)
	// StartEncryptExisting starts the migration task, or returns the running
	// one with started false. ctx bounds the call, not the task.
	StartEncryptExisting(ctx context.Context) (task Task, started bool, err error)
	// Task returns the task with this id, running or finished.
	Task(id string) (Task, bool)
	// CancelTask asks a running task to stop and returns its state; a
	// finished task is returned unchanged; ErrNotFound for an unknown id.
	CancelTask(id string) (Task, error)
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
	KeySet      bool     `json:"key_set"`
	PasswordSet bool     `json:"password_set"`
	Cipher      string   `json:"cipher"`
	KDF         KDFInfo  `json:"kdf"`
	Protect     []string `json:"protect"`
	// Task is the running task, else the last one, else nil (JSON null).
	Task *Task `json:"task"`
	// Files is set only when a scan was asked for.
	Files *FileCounts `json:"files,omitempty"`
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

// TaskState is the state of a task.
type TaskState string

// Task states. Running is the only non-final one.
const (
	TaskRunning   TaskState = "running"
	TaskSucceeded TaskState = "succeeded"
	TaskFailed    TaskState = "failed"
	TaskCancelled TaskState = "cancelled"
)

// TaskKindEncryptExisting is the kind of the migration task.
const TaskKindEncryptExisting = "encrypt_existing_files"

// Task is a snapshot of a long-running task. In JSON the times are RFC 3339
// in UTC and finished_at is null while the task runs.
type Task struct {
	ID           string
	Kind         string
	State        TaskState
	FilesTotal   int64
	FilesDone    int64
	FilesSkipped int64
	FilesFailed  int64
	FilesBusy    int64
	BytesTotal   int64
	BytesDone    int64
	StartedAt    time.Time
	FinishedAt   time.Time // zero while running
	Error        string    // why the task failed; "" otherwise
	// SkippedReasons counts skipped files by reason ("hard_links", ...).
	SkippedReasons map[string]int64
}

// taskJSON is Task's wire form.
type taskJSON struct {
	ID             string           `json:"id"`
	Kind           string           `json:"kind"`
	State          TaskState        `json:"state"`
	FilesTotal     int64            `json:"files_total"`
	FilesDone      int64            `json:"files_done"`
	FilesSkipped   int64            `json:"files_skipped"`
	FilesFailed    int64            `json:"files_failed"`
	FilesBusy      int64            `json:"files_busy"`
	BytesTotal     int64            `json:"bytes_total"`
	BytesDone      int64            `json:"bytes_done"`
	StartedAt      time.Time        `json:"started_at"`
	FinishedAt     *time.Time       `json:"finished_at"`
	Error          string           `json:"error"`
	SkippedReasons map[string]int64 `json:"skipped_reasons,omitempty"`
}

// MarshalJSON implements json.Marshaler.
func (t Task) MarshalJSON() ([]byte, error) {
	w := taskJSON{
		ID: t.ID, Kind: t.Kind, State: t.State,
		FilesTotal: t.FilesTotal, FilesDone: t.FilesDone, FilesSkipped: t.FilesSkipped,
		FilesFailed: t.FilesFailed, FilesBusy: t.FilesBusy,
		BytesTotal: t.BytesTotal, BytesDone: t.BytesDone,
		StartedAt: t.StartedAt.UTC(), Error: t.Error, SkippedReasons: t.SkippedReasons,
	}
	if !t.FinishedAt.IsZero() {
		f := t.FinishedAt.UTC()
		w.FinishedAt = &f
	}
	return json.Marshal(w)
}

// UnmarshalJSON implements json.Unmarshaler, for clients of the API.
func (t *Task) UnmarshalJSON(b []byte) error {
	var w taskJSON
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*t = Task{
		ID: w.ID, Kind: w.Kind, State: w.State,
		FilesTotal: w.FilesTotal, FilesDone: w.FilesDone, FilesSkipped: w.FilesSkipped,
		FilesFailed: w.FilesFailed, FilesBusy: w.FilesBusy,
		BytesTotal: w.BytesTotal, BytesDone: w.BytesDone,
		StartedAt: w.StartedAt, Error: w.Error, SkippedReasons: w.SkippedReasons,
	}
	if w.FinishedAt != nil {
		t.FinishedAt = *w.FinishedAt
	}
	return nil
}

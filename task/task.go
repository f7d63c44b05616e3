package task

import (
	"encoding/json"
	"errors"
	"maps"
	"reflect"
	"slices"
	"strings"
	"time"
)

// State is the state of a task. Running is the only one that changes.
type State string

// Task states.
const (
	Running   State = "running"
	Succeeded State = "succeeded"
	Failed    State = "failed"
	Cancelled State = "cancelled"
)

// Final reports whether s is an end state.
func (s State) Final() bool { return s != Running }

// Kind names what a task does.
type Kind string

// KindEncryptExisting is the migration that encrypts existing plaintext
// protected files in place.
const KindEncryptExisting Kind = "encrypt_existing_files"

// Why a protected file was skipped: the keys of Record.SkippedReasons, and
// File.Reason for those that leave plaintext behind (LeavesPlaintext).
const (
	SkipAlreadyEncrypted = "already_encrypted" // carries the crypto magic
	SkipHardLinks        = "hard_links"        // nlink > 1: the other names would keep the plaintext
	SkipEmpty            = "empty"             // nothing to encrypt yet; encrypted on its first write
	SkipNotRegular       = "not_regular"       // a symlink, FIFO, socket or device: no content of its own
	SkipGone             = "gone"              // removed or renamed before its turn
	SkipOther            = "other"             // changed into something not to convert
	SkipDamaged          = "damaged"           // encrypted in version 1 with a damaged block (or a damaged magic): left untouched
	SkipOtherKey         = "other_key"         // encrypted in version 1 under another master key: cannot be upgraded
)

// File.Reason of a file that was tried and stays plaintext.
const (
	ReasonBusy   = "busy"   // still open through the mount (or changing) after the retries
	ReasonFailed = "failed" // could not be read or encrypted; File.Error says why
)

// LeavesPlaintext reports whether a file skipped for reason keeps
// plaintext content under a protected name.
func LeavesPlaintext(reason string) bool {
	switch reason {
	case SkipHardLinks, SkipEmpty, SkipOther:
		return true
	}
	return false
}

// MaxListed bounds Record.LeftPlaintext; FilesLeftPlaintext counts them all.
const MaxListed = 100

// ErrNotFound means no task has the requested id (or it was forgotten).
var ErrNotFound = errors.New("no such task")

// File is a protected file a task left plaintext, and why.
type File struct {
	Path   string `json:"path"`            // relative to the data directory
	Reason string `json:"reason"`          // hard_links, empty, other, busy or failed
	Error  string `json:"error,omitempty"` // for failed: what went wrong
}

// Record is a snapshot of a task.
//
// FilesTotal counts the protected files found; when the task has run to
// its end it equals FilesDone + FilesSkipped + FilesFailed + FilesBusy.
// FilesUpgraded counts the files of FilesDone that were encrypted in
// content format version 1 and rewritten in the current one (omitted
// from JSON while 0).
// FilesLeftPlaintext counts the protected files with content that the
// task did not encrypt (skipped for hard links, emptiness or a change;
// busy; failed) and LeftPlaintext names the first MaxListed of them. Every
// counter only grows. In JSON the times are RFC 3339 in UTC and
// finished_at is null while the task runs.
type Record struct {
	ID                 string           `json:"id"`
	Kind               Kind             `json:"kind"`
	State              State            `json:"state"`
	FilesTotal         int64            `json:"files_total"`
	FilesDone          int64            `json:"files_done"`
	FilesUpgraded      int64            `json:"files_upgraded,omitempty"`
	FilesSkipped       int64            `json:"files_skipped"`
	FilesFailed        int64            `json:"files_failed"`
	FilesBusy          int64            `json:"files_busy"`
	FilesLeftPlaintext int64            `json:"files_left_plaintext"`
	BytesTotal         int64            `json:"bytes_total"`
	BytesDone          int64            `json:"bytes_done"`
	StartedAt          time.Time        `json:"started_at"`
	FinishedAt         time.Time        `json:"finished_at"` // zero while running
	Error              string           `json:"error"`       // why the task failed, or how a cancel came; "" otherwise
	SkippedReasons     map[string]int64 `json:"skipped_reasons,omitempty"`
	LeftPlaintext      []File           `json:"left_plaintext,omitempty"`
}

// New returns the record of a task that starts now.
func New(id string, kind Kind, now time.Time) Record {
	return Record{ID: id, Kind: kind, State: Running, StartedAt: now, SkippedReasons: map[string]int64{}}
}

// Finish records the end of the task.
func (r *Record) Finish(s State, errMsg string, now time.Time) {
	r.State, r.Error, r.FinishedAt = s, errMsg, now
}

// Skip counts a file skipped for reason, listing it when it stays
// plaintext.
func (r *Record) Skip(path, reason string) {
	r.FilesSkipped++
	if r.SkippedReasons == nil {
		r.SkippedReasons = map[string]int64{}
	}
	r.SkippedReasons[reason]++
	if LeavesPlaintext(reason) {
		r.leave(File{Path: path, Reason: reason})
	}
}

// Fail counts a file (or a directory the task could not read) that stays
// as it was because of err.
func (r *Record) Fail(path string, err error) {
	r.FilesFailed++
	r.leave(File{Path: path, Reason: ReasonFailed, Error: err.Error()})
}

// Busy counts a file that stayed busy through every retry.
func (r *Record) Busy(path string) {
	r.FilesBusy++
	r.leave(File{Path: path, Reason: ReasonBusy})
}

func (r *Record) leave(f File) {
	r.FilesLeftPlaintext++
	if len(r.LeftPlaintext) < MaxListed {
		r.LeftPlaintext = append(r.LeftPlaintext, f)
	}
}

// Counters returns the record's counters (its int64 fields) under their
// JSON names, for log lines: a new counter shows up there as well.
func (r Record) Counters() map[string]any {
	out := map[string]any{}
	v, t := reflect.ValueOf(r), reflect.TypeOf(r)
	for i := range t.NumField() {
		if f := t.Field(i); f.Type.Kind() == reflect.Int64 {
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			out[name] = v.Field(i).Int()
		}
	}
	return out
}

// Clone returns a copy that shares nothing with r.
func (r Record) Clone() Record {
	r.SkippedReasons = maps.Clone(r.SkippedReasons)
	r.LeftPlaintext = slices.Clone(r.LeftPlaintext)
	return r
}

// fields is Record without its methods, for the codec below.
type fields Record

// MarshalJSON writes the record's fields under their tags, with the times
// in UTC (last) and finished_at null while the task runs.
func (r Record) MarshalJSON() ([]byte, error) {
	w := struct {
		fields
		StartedAt  time.Time  `json:"started_at"`
		FinishedAt *time.Time `json:"finished_at"`
	}{fields: fields(r), StartedAt: r.StartedAt.UTC()}
	if !r.FinishedAt.IsZero() {
		f := r.FinishedAt.UTC()
		w.FinishedAt = &f
	}
	return json.Marshal(w)
}

// UnmarshalJSON reads what MarshalJSON writes (for clients of the API).
func (r *Record) UnmarshalJSON(b []byte) error {
	*r = Record{}
	w := struct {
		*fields
		FinishedAt *time.Time `json:"finished_at"`
	}{fields: (*fields)(r)}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	if w.FinishedAt != nil {
		r.FinishedAt = *w.FinishedAt
	}
	return nil
}

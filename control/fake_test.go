package control

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mountd/mountd/crypto"
	"github.com/mountd/mountd/task"
)

// fakeBackend is an in-memory Backend. It keeps the password slices it is
// handed (a real Backend must not) so tests can check they were zeroed.
type fakeBackend struct {
	mu                       sync.Mutex
	password                 []byte // nil: no verifier yet
	recovery                 []byte // nil: no recovery slot
	keySet                   bool
	encryptedWithoutVerifier bool
	received                 [][]byte
	tasks                    map[string]task.Record
	order                    []string // task ids, oldest first
	running                  string
	nextID                   int
	statusErr                error
	panicOnStatus            bool

	loginDelay   time.Duration
	inKDF, maxIn atomic.Int32
	kdfCalls     atomic.Int32
	logouts      atomic.Int32
}

func newFake() *fakeBackend { return &fakeBackend{tasks: map[string]task.Record{}} }

func (f *fakeBackend) kdf(pw ...[]byte) {
	n := f.inKDF.Add(1)
	defer f.inKDF.Add(-1)
	for {
		m := f.maxIn.Load()
		if n <= m || f.maxIn.CompareAndSwap(m, n) {
			break
		}
	}
	f.kdfCalls.Add(1)
	f.mu.Lock()
	f.received = append(f.received, pw...)
	f.mu.Unlock()
	time.Sleep(f.loginDelay)
}

func (f *fakeBackend) Login(_ context.Context, pw []byte) (LoginResult, error) {
	f.kdf(pw)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.password == nil {
		if f.encryptedWithoutVerifier {
			return LoginResult{}, fmt.Errorf("first login: %w", ErrEncryptedWithoutVerifier)
		}
		f.password = bytes.Clone(pw)
		f.keySet = true
		return LoginResult{Created: true}, nil
	}
	if !bytes.Equal(pw, f.password) {
		return LoginResult{}, fmt.Errorf("unlock: %w", crypto.ErrInvalidPassword)
	}
	was := f.keySet
	f.keySet = true
	return LoginResult{AlreadySet: was}, nil
}

func (f *fakeBackend) Logout(context.Context) error {
	f.logouts.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.keySet = false
	return nil
}

func (f *fakeBackend) ChangePassword(_ context.Context, old, nw []byte) error {
	f.kdf(old, nw)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.password == nil {
		return crypto.ErrNoVerifier
	}
	if !bytes.Equal(old, f.password) {
		return crypto.ErrInvalidPassword
	}
	f.password = bytes.Clone(nw)
	return nil
}

// fakeRecoveryKey is a well-formed recovery key; the fake treats any
// other text starting with "RK-" as well-formed but wrong, and anything
// else as malformed.
const fakeRecoveryKey = "RK-right"

func (f *fakeBackend) ResetPassword(_ context.Context, rk, nw []byte) error {
	f.kdf(rk, nw)
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.password == nil:
		return crypto.ErrNoVerifier
	case f.recovery == nil:
		return crypto.ErrNoRecoveryKey
	case !bytes.HasPrefix(rk, []byte("RK-")):
		return fmt.Errorf("reset: %w", crypto.ErrBadRecoveryKey)
	case !bytes.Equal(rk, f.recovery):
		return fmt.Errorf("reset: %w", crypto.ErrInvalidRecoveryKey)
	}
	f.password = bytes.Clone(nw)
	return nil
}

func (f *fakeBackend) Status(_ context.Context, scan bool) (Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.panicOnStatus {
		panic("fake: status exploded")
	}
	if f.statusErr != nil {
		return Status{}, f.statusErr
	}
	st := Status{
		KeySet: f.keySet, PasswordSet: f.password != nil, Cipher: Cipher,
		KDF:     KDFInfo{Name: "argon2id", Time: 3, MemoryKiB: 65536, Threads: 4},
		Protect: []string{"*.bin"},
	}
	if f.running != "" {
		t := f.tasks[f.running]
		st.Task = &t
	}
	if scan {
		st.Files = &FileCounts{Encrypted: 3, Plaintext: 4}
	}
	return st, nil
}

var fakeStart = time.Date(2025, 1, 2, 3, 4, 5, 0, time.FixedZone("X", 3600))

func (f *fakeBackend) StartEncryptExisting(context.Context) (task.Record, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.keySet {
		return task.Record{}, false, crypto.ErrLocked
	}
	if t, ok := f.tasks[f.running]; ok && t.State == task.Running {
		return t, false, nil
	}
	f.nextID++
	t := task.Record{ID: fmt.Sprintf("t%d", f.nextID), Kind: task.KindEncryptExisting, State: task.Running,
		FilesTotal: 10, FilesDone: 2, BytesTotal: 1000, BytesDone: 200, StartedAt: fakeStart}
	f.tasks[t.ID] = t
	f.order = append(f.order, t.ID)
	f.running = t.ID
	return t, true, nil
}

func (f *fakeBackend) Tasks() []task.Record {
	f.mu.Lock()
	defer f.mu.Unlock()
	var list []task.Record
	for i := len(f.order) - 1; i >= 0; i-- {
		list = append(list, f.tasks[f.order[i]])
	}
	return list
}

func (f *fakeBackend) Task(id string) (task.Record, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.tasks[id]
	return t, ok
}

func (f *fakeBackend) CancelTask(id string) (task.Record, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.tasks[id]
	if !ok {
		return task.Record{}, fmt.Errorf("cancel %s: %w", id, task.ErrNotFound)
	}
	if t.State == task.Running {
		// Like a real runner: the reply still says running, the task
		// stops a moment later.
		done := t
		done.State = task.Cancelled
		done.FinishedAt = fakeStart.Add(90 * time.Second)
		f.tasks[id] = done
	}
	return t, nil
}

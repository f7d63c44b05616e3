package control

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/mountd/mountd/crypto"
	"github.com/mountd/mountd/task"
)

// FileScanner looks at the backing tree. *fs.Root satisfies it as is (its
// results are plain ints so that fs need not import control).
type FileScanner interface {
	// Scan counts the regular files with a protected name by whether their
	// content is encrypted.
	Scan(ctx context.Context) (encrypted, plaintext int, err error)
	// AnyEncrypted reports whether any backing file is encrypted; it may
	// stop at the first one.
	AnyEncrypted(ctx context.Context) (bool, error)
}

// PendingCounter counts the protected files waiting for encryption.
// *fs.Root satisfies it as is.
type PendingCounter interface {
	PendingEncryption() int
}

// TaskRunner runs the encrypt-existing-files migration. The migration
// (migrate.Migrator) implements it as is.
type TaskRunner interface {
	// Start starts the task, or returns the running one with started
	// false. ctx bounds the call only: the task must outlive it.
	Start(ctx context.Context) (t task.Record, started bool, err error)
	// Get returns a task, running or finished, by id.
	Get(id string) (task.Record, bool)
	// List returns the tasks remembered, newest first.
	List() []task.Record
	// Cancel asks a running task to stop and returns its state; a finished
	// task is returned unchanged; an unknown id is an error wrapping
	// task.ErrNotFound.
	Cancel(id string) (task.Record, error)
	// Last returns the running task, else the last one that ran.
	Last() (task.Record, bool)
}

// ServiceOptions configures a Service.
type ServiceOptions struct {
	// Keyring holds the master key. Required.
	Keyring *crypto.Keyring
	// VerifierPath is the verifier file (crypto.VerifierPath(dataDir)). Required.
	VerifierPath string
	// KDF are the Argon2id parameters for a new verifier (first login or
	// password change). Zero means crypto.DefaultKDFParams.
	KDF crypto.KDFParams
	// Protect are the protected name patterns, reported by Status.
	Protect []string
	// Files and Tasks are the filesystem's side. Required.
	Files FileScanner
	Tasks TaskRunner
	// Pending, if set, counts the files waiting for encryption (Status);
	// nil reports none.
	Pending PendingCounter
	// AutoLock reports the automatic lock policies in Status. Nil reports
	// every policy off.
	AutoLock LockPolicies
	// OnLogin, if set, is called after every successful Login (the idle
	// policy counts a login as activity and restarts its timer).
	OnLogin func()
	// Daemon, when not zero, is reported by Status (with the uptime).
	Daemon DaemonInfo
}

// Service is the real Backend: the Keyring and verifier file from crypto,
// the file scanner and the migration from the filesystem.
type Service struct {
	// mu serializes Login and ChangePassword, so two first logins in this
	// process never race to create the verifier, and a password change
	// never interleaves with a login reading the verifier.
	mu      sync.Mutex
	keyring *crypto.Keyring
	path    string
	kdf     crypto.KDFParams
	protect []string
	files   FileScanner
	tasks   TaskRunner
	pending PendingCounter
	policy  LockPolicies
	onLogin func()
	daemon  DaemonInfo

	lockMu   sync.Mutex
	lastLock *LockEvent // guarded by lockMu; nil until the first logout that cleared a key

	now          func() time.Time                       // time.Now; tests replace it
	readVerifier func(string) (*crypto.Verifier, error) // crypto.ReadVerifier; tests replace it func(string) (*crypto.Verifier, error) // crypto.ReadVerifier; tests replace it
}

var _ Backend = (*Service)(nil)

// NewService checks opts and returns a Service.
func NewService(opts ServiceOptions) (*Service, error) {
	switch {
	case opts.Keyring == nil:
		return nil, errors.New("control: ServiceOptions.Keyring is nil")
	case opts.VerifierPath == "":
		return nil, errors.New("control: ServiceOptions.VerifierPath is empty")
	case opts.Files == nil:
		return nil, errors.New("control: ServiceOptions.Files is nil")
	case opts.Tasks == nil:
		return nil, errors.New("control: ServiceOptions.Tasks is nil")
	}
	kdf := opts.KDF
	if kdf == (crypto.KDFParams{}) {
		kdf = crypto.DefaultKDFParams
	}
	if err := kdf.Validate(); err != nil {
		return nil, fmt.Errorf("control: KDF parameters: %w", err)
	}
	return &Service{
		keyring:      opts.Keyring,
		path:         opts.VerifierPath,
		kdf:          kdf,
		protect:      slices.Clone(opts.Protect),
		files:        opts.Files,
		tasks:        opts.Tasks,
		pending:      opts.Pending,
		policy:       opts.AutoLock,
		onLogin:      opts.OnLogin,
		now:          time.Now,
		daemon:       opts.Daemon,
		readVerifier: crypto.ReadVerifier,
	}, nil
}

// Login sets the key. With no verifier it creates one (a new random master
// key wrapped under password), unless encrypted files exist: a new key
// could not read them (ErrEncryptedWithoutVerifier). Otherwise it unlocks
// the verifier: crypto.ErrInvalidPassword leaves a set key set, and the
// same key already set is a no-op (AlreadySet).
func (s *Service) Login(ctx context.Context, password []byte) (LoginResult, error) {
	res, err := s.login(ctx, password)
	if err == nil && s.onLogin != nil {
		s.onLogin()
	}
	return res, err
}

func (s *Service) login(ctx context.Context, password []byte) (LoginResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, err := s.readVerifier(s.path)
	if errors.Is(err, crypto.ErrNoVerifier) {
		return s.create(ctx, password)
	}
	if err != nil {
		return LoginResult{}, fmt.Errorf("control: login: %w", err)
	}
	return s.unlock(v, password)
}

func (s *Service) create(ctx context.Context, password []byte) (LoginResult, error) {
	enc, err := s.files.AnyEncrypted(ctx)
	if err != nil {
		return LoginResult{}, fmt.Errorf("control: login: looking for encrypted files: %w", err)
	}
	if enc {
		return LoginResult{}, ErrEncryptedWithoutVerifier
	}
	err = s.keyring.Create(s.path, password, s.kdf)
	if errors.Is(err, crypto.ErrVerifierExists) {
		// Someone else (another process on the same data directory)
		// created the verifier since we looked: this login checks the
		// password against theirs.
		v, err := s.readVerifier(s.path)
		if err != nil {
			return LoginResult{}, fmt.Errorf("control: login: %w", err)
		}
		return s.unlock(v, password)
	}
	if err != nil {
		return LoginResult{}, fmt.Errorf("control: login: creating the verifier: %w", err)
	}
	return LoginResult{Created: true}, nil
}

func (s *Service) unlock(v *crypto.Verifier, password []byte) (LoginResult, error) {
	wasSet, gen := s.keyring.IsSet(), s.keyring.Generation()
	if err := s.keyring.Unlock(v, password); err != nil {
		return LoginResult{}, fmt.Errorf("control: login: %w", err)
	}
	// Unlock with the key already set changes nothing, not even the
	// generation.
	return LoginResult{AlreadySet: wasSet && s.keyring.Generation() == gen}, nil
}

// Logout clears the key. Keyring.Clear returns after the filesystem's
// OnClear listeners have dropped cached plaintext and the key is zero.
// Every logout goes through here: the API's and the automatic locks',
// which say why with WithLogoutReason. A logout that clears a key is
// recorded, with its reason and the time it began, as Status's last lock
// — before the Keyring reports the key gone, so that a status showing
// key_set false never shows the lock before it (Clear takes a while: it
// flushes, zeroes and returns memory to the OS).
func (s *Service) Logout(ctx context.Context) error {
	wasSet, gen := s.keyring.IsSet(), s.keyring.Generation()
	ev := &LockEvent{Reason: logoutReason(ctx), At: s.now().UTC()}
	if wasSet {
		s.recordLock(ev)
	}
	s.keyring.Clear()
	// The generation moves when a login raced this call; Clear then
	// cleared that key.
	if !wasSet && s.keyring.Generation() != gen {
		s.recordLock(ev)
	}
	return nil
}

func (s *Service) recordLock(ev *LockEvent) {
	s.lockMu.Lock()
	s.lastLock = ev
	s.lockMu.Unlock()
}

// ChangePassword rewraps the master key under newPassword with the
// configured KDF parameters; no file is re-encrypted and the key state does
// not change. crypto.ErrNoVerifier when no password was ever set.
func (s *Service) ChangePassword(_ context.Context, oldPassword, newPassword []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := crypto.ChangePassword(s.path, oldPassword, newPassword, s.kdf); err != nil {
		return fmt.Errorf("control: change password: %w", err)
	}
	return nil
}

// ResetPassword rewraps the master key under newPassword, unwrapping it
// with the recovery key: crypto.ErrNoRecoveryKey, ErrBadRecoveryKey (a
// typo) and ErrInvalidRecoveryKey (the wrong key) change nothing. The key
// state in memory is left as it is: a set key stays set (it is the same
// master key), and no key is set.
func (s *Service) ResetPassword(_ context.Context, recoveryKey, newPassword []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := crypto.ResetPassword(s.path, recoveryKey, newPassword, s.kdf); err != nil {
		return fmt.Errorf("control: reset password: %w", err)
	}
	return nil
}

// Status reports the key and verifier state, the KDF parameters in force
// (the verifier's, else those a first login would use), the protect
// patterns, the current or last task and, when scan is set, file counts.
func (s *Service) Status(ctx context.Context, scan bool) (Status, error) {
	st := Status{
		KeySet:   s.keyring.IsSet(),
		Cipher:   Cipher,
		KDF:      kdfInfo(s.kdf),
		Protect:  slices.Clone(s.protect),
		AutoLock: autoLockOff,
	}
	if s.policy != nil {
		st.AutoLock = s.policy.LockPolicies()
	}
	s.lockMu.Lock()
	if s.lastLock != nil {
		ev := *s.lastLock
		st.LastLock = &ev
	}
	s.lockMu.Unlock()
	v, err := s.readVerifier(s.path)
	switch {
	case err == nil:
		st.PasswordSet = true
		st.RecoveryKeySet = v.Recovery
		st.KDF = kdfInfo(v.Params)
	case !errors.Is(err, crypto.ErrNoVerifier):
		return Status{}, fmt.Errorf("control: status: %w", err)
	}
	if t, ok := s.tasks.Last(); ok {
		st.Task = &t
	}
	if s.pending != nil {
		st.PendingEncryption = s.pending.PendingEncryption()
	}
	if s.daemon != (DaemonInfo{}) {
		d := s.daemon
		d.UptimeS = int64(time.Since(d.StartedAt) / time.Second)
		st.Daemon = &d
	}
	if scan {
		enc, plain, err := s.files.Scan(ctx)
		if err != nil {
			return Status{}, fmt.Errorf("control: status: scanning files: %w", err)
		}
		st.Files = &FileCounts{Encrypted: int64(enc), Plaintext: int64(plain)}
	}
	return st, nil
}

func kdfInfo(p crypto.KDFParams) KDFInfo {
	return KDFInfo{Name: "argon2id", Time: p.Time, MemoryKiB: p.MemoryKiB, Threads: p.Threads}
}

// StartEncryptExisting starts the migration (crypto.ErrLocked without a
// key) or returns the running task.
func (s *Service) StartEncryptExisting(ctx context.Context) (task.Record, bool, error) {
	if !s.keyring.IsSet() {
		return task.Record{}, false, crypto.ErrLocked
	}
	return s.tasks.Start(ctx)
}

// Task returns a task by id.
func (s *Service) Task(id string) (task.Record, bool) { return s.tasks.Get(id) }

// Tasks lists the tasks, newest first.
func (s *Service) Tasks() []task.Record { return s.tasks.List() }

// CancelTask asks a task to stop.
func (s *Service) CancelTask(id string) (task.Record, error) { return s.tasks.Cancel(id) }

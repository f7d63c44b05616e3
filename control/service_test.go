package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/mountd/mountd/crypto"
	"github.com/mountd/mountd/logkey"
	"github.com/mountd/mountd/task"
)

// testKDF is the cheapest parameter set crypto's Validate accepts.
var testKDF = crypto.KDFParams{Time: 2, MemoryKiB: 19 * 1024, Threads: 1}

type fakeFiles struct {
	encrypted bool
	counts    FileCounts
	err       error
}

func (f *fakeFiles) Scan(context.Context) (int, int, error) {
	return int(f.counts.Encrypted), int(f.counts.Plaintext), f.err
}
func (f *fakeFiles) AnyEncrypted(context.Context) (bool, error) { return f.encrypted, f.err }

type fakeTasks struct {
	mu      sync.Mutex
	tasks   map[string]task.Record
	last    string
	started atomic.Int32
}

func (f *fakeTasks) Start(context.Context) (task.Record, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if t, ok := f.tasks[f.last]; ok && t.State == task.Running {
		return t, false, nil
	}
	n := f.started.Add(1)
	t := task.Record{ID: fmt.Sprintf("m%d", n), Kind: task.KindEncryptExisting, State: task.Running, StartedAt: fakeStart}
	if f.tasks == nil {
		f.tasks = map[string]task.Record{}
	}
	f.tasks[t.ID], f.last = t, t.ID
	return t, true, nil
}

func (f *fakeTasks) Get(id string) (task.Record, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.tasks[id]
	return t, ok
}

func (f *fakeTasks) List() []task.Record {
	f.mu.Lock()
	defer f.mu.Unlock()
	var list []task.Record
	for _, t := range f.tasks {
		list = append(list, t)
	}
	return list
}

func (f *fakeTasks) Cancel(id string) (task.Record, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.tasks[id]
	if !ok {
		return task.Record{}, task.ErrNotFound
	}
	return t, nil
}

func (f *fakeTasks) Last() (task.Record, bool) { return f.Get(f.last) }

type svcEnv struct {
	svc   *Service
	kr    *crypto.Keyring
	path  string
	files *fakeFiles
	tasks *fakeTasks
}

func newSvc(t *testing.T, path string) *svcEnv {
	t.Helper()
	if path == "" {
		path = crypto.VerifierPath(t.TempDir())
	}
	e := &svcEnv{kr: crypto.NewKeyring(), path: path, files: &fakeFiles{}, tasks: &fakeTasks{}}
	svc, err := NewService(ServiceOptions{Keyring: e.kr, VerifierPath: path, KDF: testKDF,
		Protect: []string{"*.bin"}, Files: e.files, Tasks: e.tasks})
	if err != nil {
		t.Fatal(err)
	}
	e.svc = svc
	t.Cleanup(e.kr.Clear)
	return e
}

func TestNewServiceValidates(t *testing.T) {
	ok := ServiceOptions{Keyring: crypto.NewKeyring(), VerifierPath: "/x", Files: &fakeFiles{}, Tasks: &fakeTasks{}}
	if s, err := NewService(ok); err != nil || s.kdf != crypto.DefaultKDFParams {
		t.Fatalf("defaults: %v", err)
	}
	for name, mut := range map[string]func(*ServiceOptions){
		"keyring": func(o *ServiceOptions) { o.Keyring = nil },
		"path":    func(o *ServiceOptions) { o.VerifierPath = "" },
		"files":   func(o *ServiceOptions) { o.Files = nil },
		"tasks":   func(o *ServiceOptions) { o.Tasks = nil },
		"weak":    func(o *ServiceOptions) { o.KDF = crypto.KDFParams{Time: 1, MemoryKiB: 1024, Threads: 1} },
	} {
		o := ok
		mut(&o)
		if _, err := NewService(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestServiceLoginLifecycle(t *testing.T) {
	e := newSvc(t, "")
	ctx := t.Context()
	pw := []byte("pässword\x00!")

	res, err := e.svc.Login(ctx, pw)
	if err != nil || !res.Created || !e.kr.IsSet() {
		t.Fatalf("first login: %+v %v", res, err)
	}
	fi, err := os.Stat(e.path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("verifier: %v %v", fi, err)
	}
	verifier, _ := os.ReadFile(e.path)
	id1, _ := e.kr.KeyID()

	res, err = e.svc.Login(ctx, pw)
	if err != nil || res.Created || !res.AlreadySet {
		t.Fatalf("login again: %+v %v", res, err)
	}
	if _, err := e.svc.Login(ctx, []byte("wrong")); !errors.Is(err, crypto.ErrInvalidPassword) {
		t.Fatalf("wrong password: %v", err)
	}
	if !e.kr.IsSet() {
		t.Fatal("wrong password cleared the key")
	}

	cleared := false
	remove := e.kr.OnClear(func() { cleared = true })
	defer remove()
	if err := e.svc.Logout(ctx); err != nil || e.kr.IsSet() || !cleared {
		t.Fatalf("logout: %v set=%v listener ran=%v", err, e.kr.IsSet(), cleared)
	}
	if err := e.svc.Logout(ctx); err != nil {
		t.Fatalf("second logout: %v", err)
	}
	if after, _ := os.ReadFile(e.path); !bytes.Equal(after, verifier) {
		t.Fatal("logout touched the verifier")
	}
	if _, err := e.svc.Login(ctx, []byte("wrong")); !errors.Is(err, crypto.ErrInvalidPassword) || e.kr.IsSet() {
		t.Fatalf("wrong password while logged out: %v", err)
	}
	res, err = e.svc.Login(ctx, pw)
	if err != nil || res.Created || res.AlreadySet {
		t.Fatalf("login after logout: %+v %v", res, err)
	}
	if id2, _ := e.kr.KeyID(); id2 != id1 {
		t.Fatal("login after logout set another key")
	}
}

func TestServiceRefusesNewKeyOverEncryptedFiles(t *testing.T) {
	e := newSvc(t, "")
	e.files.encrypted = true
	if _, err := e.svc.Login(t.Context(), []byte("pw")); !errors.Is(err, ErrEncryptedWithoutVerifier) {
		t.Fatalf("got %v", err)
	}
	if _, err := os.Stat(e.path); !errors.Is(err, os.ErrNotExist) || e.kr.IsSet() {
		t.Fatalf("verifier created or key set: %v", err)
	}
	e.files.encrypted, e.files.err = false, errors.New("walk failed")
	if _, err := e.svc.Login(t.Context(), []byte("pw")); err == nil || e.kr.IsSet() {
		t.Fatal("a failed scan let the first login through")
	}
}

// TestServiceConcurrentFirstLogins: two daemons' worth of Services (separate
// keyrings, one data directory) log in at once. One creates the verifier;
// the other ends up with the same key through Unlock, or, with a different
// password, gets ErrInvalidPassword.
func TestServiceConcurrentFirstLogins(t *testing.T) {
	for _, same := range []bool{true, false} {
		t.Run(fmt.Sprint("same password ", same), func(t *testing.T) {
			a := newSvc(t, "")
			b := newSvc(t, a.path)
			pwB := "one"
			if !same {
				pwB = "two"
			}
			var ra, rb LoginResult
			var ea, eb error
			var wg sync.WaitGroup
			wg.Go(func() { ra, ea = a.svc.Login(t.Context(), []byte("one")) })
			wg.Go(func() { rb, eb = b.svc.Login(t.Context(), []byte(pwB)) })
			wg.Wait()
			if same {
				if ea != nil || eb != nil || ra.Created == rb.Created {
					t.Fatalf("a: %+v %v; b: %+v %v", ra, ea, rb, eb)
				}
				ida, _ := a.kr.KeyID()
				idb, _ := b.kr.KeyID()
				if ida != idb {
					t.Fatal("the two logins set different keys")
				}
				return
			}
			// Exactly one created; the other was checked against it.
			okA, okB := ea == nil && ra.Created, eb == nil && rb.Created
			badA, badB := errors.Is(ea, crypto.ErrInvalidPassword), errors.Is(eb, crypto.ErrInvalidPassword)
			if !(okA && badB || okB && badA) {
				t.Fatalf("a: %+v %v; b: %+v %v", ra, ea, rb, eb)
			}
		})
	}
	t.Run("same service", func(t *testing.T) {
		e := newSvc(t, "")
		var created atomic.Int32
		var wg sync.WaitGroup
		for range 3 {
			wg.Go(func() {
				r, err := e.svc.Login(t.Context(), []byte("pw"))
				if err != nil {
					t.Error(err)
				}
				if r.Created {
					created.Add(1)
				}
			})
		}
		wg.Wait()
		if created.Load() != 1 {
			t.Fatalf("%d logins created the verifier", created.Load())
		}
	})
}

// TestServiceCreateRaceFallsBack forces the window the lock cannot cover
// (another process creating the verifier between our read and our Create).
func TestServiceCreateRaceFallsBack(t *testing.T) {
	other := newSvc(t, "")
	if _, err := other.svc.Login(t.Context(), []byte("pw")); err != nil {
		t.Fatal(err)
	}
	e := newSvc(t, other.path)
	calls := 0
	e.svc.readVerifier = func(p string) (*crypto.Verifier, error) {
		calls++
		if calls == 1 {
			return nil, fmt.Errorf("stale read: %w", crypto.ErrNoVerifier)
		}
		return crypto.ReadVerifier(p)
	}
	res, err := e.svc.Login(t.Context(), []byte("pw"))
	if err != nil || res.Created || !e.kr.IsSet() || calls != 2 {
		t.Fatalf("%+v %v calls=%d", res, err, calls)
	}
	idA, _ := other.kr.KeyID()
	idB, _ := e.kr.KeyID()
	if idA != idB {
		t.Fatal("different keys")
	}
}

func TestServiceChangePassword(t *testing.T) {
	e := newSvc(t, "")
	ctx := t.Context()
	if err := e.svc.ChangePassword(ctx, []byte("a"), []byte("b")); !errors.Is(err, crypto.ErrNoVerifier) {
		t.Fatalf("no verifier: %v", err)
	}
	e.svc.Login(ctx, []byte("old"))
	id1, _ := e.kr.KeyID()
	if err := e.svc.ChangePassword(ctx, []byte("bad"), []byte("new")); !errors.Is(err, crypto.ErrInvalidPassword) {
		t.Fatalf("wrong old: %v", err)
	}
	if err := e.svc.ChangePassword(ctx, []byte("old"), []byte("new")); err != nil {
		t.Fatal(err)
	}
	if !e.kr.IsSet() {
		t.Fatal("password change cleared the key")
	}
	e.svc.Logout(ctx)
	if _, err := e.svc.Login(ctx, []byte("old")); !errors.Is(err, crypto.ErrInvalidPassword) {
		t.Fatalf("old password still works: %v", err)
	}
	if _, err := e.svc.Login(ctx, []byte("new")); err != nil {
		t.Fatal(err)
	}
	if id2, _ := e.kr.KeyID(); id2 != id1 {
		t.Fatal("password change changed the master key")
	}
}

func TestServiceStatusAndTasks(t *testing.T) {
	e := newSvc(t, "")
	ctx := t.Context()
	st, err := e.svc.Status(ctx, false)
	if err != nil || st.KeySet || st.PasswordSet || st.Task != nil || st.Files != nil ||
		st.KDF != (KDFInfo{"argon2id", 2, 19 * 1024, 1}) || st.Cipher != "AES-256-GCM" || st.Protect[0] != "*.bin" {
		t.Fatalf("initial: %+v %v", st, err)
	}
	if _, _, err := e.svc.StartEncryptExisting(ctx); !errors.Is(err, crypto.ErrLocked) || e.tasks.started.Load() != 0 {
		t.Fatalf("start while locked: %v", err)
	}
	e.svc.Login(ctx, []byte("pw"))
	tk, started, err := e.svc.StartEncryptExisting(ctx)
	if err != nil || !started {
		t.Fatal(err)
	}
	if _, started, _ := e.svc.StartEncryptExisting(ctx); started {
		t.Fatal("second start started another task")
	}
	if got, ok := e.svc.Task(tk.ID); !ok || got.ID != tk.ID {
		t.Fatal("task not found")
	}
	if _, err := e.svc.CancelTask("nope"); !errors.Is(err, task.ErrNotFound) {
		t.Fatal(err)
	}
	e.files.counts = FileCounts{Encrypted: 2, Plaintext: 5}
	st, err = e.svc.Status(ctx, true)
	if err != nil || !st.KeySet || !st.PasswordSet || st.Task == nil || st.Task.ID != tk.ID || *st.Files != e.files.counts {
		t.Fatalf("after: %+v %v", st, err)
	}
	// A broken verifier is an internal error, not "no password".
	os.WriteFile(e.path, []byte("garbage"), 0o600)
	if _, err := e.svc.Status(ctx, false); !errors.Is(err, crypto.ErrBadVerifier) {
		t.Fatalf("bad verifier: %v", err)
	}
}

// TestHTTPWithService runs the real Server on the real Service: the seed's
// statements, end to end, and no password anywhere in the logs (text and
// JSON formats, every level).
func TestHTTPWithService(t *testing.T) {
	e := newSvc(t, filepath.Join(t.TempDir(), "auth", "verifier.bin"))
	s := newTestServer(t, Options{Backend: e.svc})
	const pw = "Tr0ub4dor&3-unlikely-substring"
	const pw2 = "c0rrect-h0rse-batt3ry-staple"
	body := func(p string) string { return `{"password":"` + p + `"}` }

	res := do(t, s, jsonReq("POST", PathLogin, body(pw)))
	if res.status != 200 || res.env["created"] != true || !e.kr.IsSet() {
		t.Fatalf("first login: %d %s", res.status, res.body)
	}
	res = do(t, s, jsonReq("POST", PathLogin, body(pw)))
	if res.status != 200 || res.env["already_set"] != true {
		t.Fatalf("second login: %d %s", res.status, res.body)
	}
	res = do(t, s, jsonReq("POST", PathLogin, body(pw+"x")))
	if res.status != 401 || res.code() != CodeInvalidPassword || !e.kr.IsSet() {
		t.Fatalf("wrong password: %d %s", res.status, res.body)
	}
	res = do(t, s, req("GET", PathStatus+"?scan=true", ""))
	if res.status != 200 || res.env["key_set"] != true || res.env["password_set"] != true ||
		res.env["kdf"].(map[string]any)["memory_kib"] != 19456.0 {
		t.Fatalf("status: %s", res.body)
	}
	res = do(t, s, req("GET", PathLogout, ""))
	if res.status != 200 || string(res.body) != logoutBody || e.kr.IsSet() {
		t.Fatalf("logout: %d %s", res.status, res.body)
	}
	res = do(t, s, req("POST", PathEncryptExisting, ""))
	if res.status != 409 || res.code() != CodeKeyNotSet {
		t.Fatalf("encrypt while locked: %d %s", res.status, res.body)
	}
	res = do(t, s, jsonReq("POST", PathChangePassword, `{"old_password":"`+pw+`","new_password":"`+pw2+`"}`))
	if res.status != 200 {
		t.Fatalf("change password: %d %s", res.status, res.body)
	}
	res = do(t, s, jsonReq("POST", PathLogin, body(pw2)))
	if res.status != 200 || res.env["created"] != false {
		t.Fatalf("login with the new password: %d %s", res.status, res.body)
	}
	res = do(t, s, req("POST", PathEncryptExisting, ""))
	if res.status != 202 {
		t.Fatalf("encrypt: %d %s", res.status, res.body)
	}
	// Hostile ways of sending a password: none may reach a log line.
	do(t, s, req("POST", PathLogin+"?password="+pw, "", "Content-Type", "application/json"))
	do(t, s, req("GET", PathLogout+"?password="+pw, ""))
	do(t, s, req("POST", PathLogin, body(pw), "Content-Type", "text/plain"))
	do(t, s, jsonReq("POST", PathLogin, `{"password":"`+pw+`","`+pw+`":1}`))
	do(t, s, jsonReq("POST", PathLogin, `{"password":"`+pw+`"} trailing`))
	do(t, s, jsonReq("POST", PathLogin, `{"`+pw+``))
	do(t, s, req("GET", "/api/system/"+pw, ""))
	do(t, s, req("GET", "/api/system/tasks/"+pw, ""))
	do(t, s, req("GET", PathStatus, "", "Host", pw+":8080"))

	text := &logrus.TextFormatter{DisableColors: true}
	js := &logrus.JSONFormatter{}
	var access int
	for _, entry := range s.hook.AllEntries() {
		for _, f := range []logrus.Formatter{text, js} {
			b, err := f.Format(entry)
			if err != nil {
				t.Fatal(err)
			}
			for _, secret := range []string{pw, pw2, "Tr0ub4dor", "h0rse"} {
				if strings.Contains(string(b), secret) {
					t.Fatalf("log line contains a password: %s", b)
				}
			}
		}
		if entry.Message == "request" || entry.Message == "request failed" {
			access++
			for _, k := range []string{fieldReqID, fieldMethod, fieldRoute, fieldStatus, logkey.DurMS, fieldRemote, fieldCommand} {
				if _, ok := entry.Data[k]; !ok {
					t.Errorf("access line lacks %s: %v", k, entry.Data)
				}
			}
		}
	}
	if access != 18 {
		t.Errorf("%d access lines for 18 requests", access)
	}
	var events []string
	for _, entry := range s.hook.AllEntries() {
		if entry.Level == logrus.InfoLevel && entry.Message != "request" {
			events = append(events, entry.Message)
		}
	}
	want := []string{
		"login: Password created and file encryption key set",
		"login: File encryption key already set",
		"login failed: invalid password",
		"logout: file encryption key cleared",
		"password changed",
		"login: File encryption key set",
		"encrypt_existing_files: Task started",
		"logout: file encryption key cleared", // the query is ignored, not read
	}
	if strings.Join(events, "\n") != strings.Join(want, "\n") {
		t.Errorf("event lines:\n%s\nwant:\n%s", strings.Join(events, "\n"), strings.Join(want, "\n"))
	}
}

type fakePolicies struct{ a AutoLock }

func (f fakePolicies) LockPolicies() AutoLock { return f.a }

// TestServiceLastLock: a logout that clears a key is recorded with the
// reason its context carries ("request" without one); a logout with no key
// set changes nothing; OnLogin runs after each successful login only; the
// policies come from the reporter.
func TestServiceLastLock(t *testing.T) {
	kr := crypto.NewKeyring()
	t.Cleanup(kr.Clear)
	logins := 0
	pol := AutoLock{
		Idle:        IdlePolicy{LockPolicy{State: PolicyOn}, 900},
		Suspend:     LockPolicy{State: PolicyUnavailable, Detail: "no system D-Bus"},
		SessionLock: LockPolicy{State: PolicyOn, Detail: "sessions of uid 1000"},
	}
	svc, err := NewService(ServiceOptions{Keyring: kr, VerifierPath: crypto.VerifierPath(t.TempDir()), KDF: testKDF,
		Files: &fakeFiles{}, Tasks: &fakeTasks{}, AutoLock: fakePolicies{pol}, OnLogin: func() { logins++ }})
	if err != nil {
		t.Fatal(err)
	}
	clock := time.Date(2026, 12, 5, 10, 0, 0, 0, time.FixedZone("X", 3600))
	svc.now = func() time.Time { return clock }
	ctx := t.Context()

	st, err := svc.Status(ctx, false)
	if err != nil || st.LastLock != nil || st.AutoLock != pol {
		t.Fatalf("initial: %+v %v", st, err)
	}
	if err := svc.Logout(WithLogoutReason(ctx, "idle")); err != nil {
		t.Fatal(err)
	}
	if st, _ := svc.Status(ctx, false); st.LastLock != nil {
		t.Fatalf("a logout with no key set was recorded: %+v", st.LastLock)
	}

	if _, err := svc.Login(ctx, []byte("pw")); err != nil || logins != 1 {
		t.Fatalf("login: %v, OnLogin ran %d times", err, logins)
	}
	if _, err := svc.Login(ctx, []byte("wrong")); !errors.Is(err, crypto.ErrInvalidPassword) || logins != 1 {
		t.Fatalf("wrong password: %v, OnLogin ran %d times", err, logins)
	}
	if res, err := svc.Login(ctx, []byte("pw")); err != nil || !res.AlreadySet || logins != 2 {
		t.Fatalf("login again: %v, OnLogin ran %d times", err, logins)
	}
	if err := svc.Logout(WithLogoutReason(ctx, "suspend")); err != nil || kr.IsSet() {
		t.Fatalf("logout: %v", err)
	}
	st, _ = svc.Status(ctx, false)
	if st.LastLock == nil || *st.LastLock != (LockEvent{"suspend", clock.UTC()}) {
		t.Fatalf("after the suspend lock: %+v", st.LastLock)
	}
	clock = clock.Add(time.Hour)
	svc.Logout(ctx) // nothing to clear: the record stays
	if st, _ := svc.Status(ctx, false); st.LastLock.Reason != "suspend" || !st.LastLock.At.Equal(clock.Add(-time.Hour)) {
		t.Fatalf("a second logout changed the record: %+v", st.LastLock)
	}
	svc.Login(ctx, []byte("pw"))
	svc.Logout(ctx)
	st, _ = svc.Status(ctx, false)
	if *st.LastLock != (LockEvent{LockReasonRequest, clock.UTC()}) {
		t.Fatalf("API logout: %+v", st.LastLock)
	}
	if b, _ := json.Marshal(st.LastLock); string(b) != `{"reason":"request","at":"2026-12-05T10:00:00Z"}` {
		t.Fatalf("JSON: %s", b)
	}
}

// TestServiceResetPassword runs the real verifier: a reset with the
// recovery key sets the new password, keeps the master key, and leaves the
// key state in memory alone (set stays set, with the same generation;
// unset stays unset).
func TestServiceResetPassword(t *testing.T) {
	e := newSvc(t, "")
	ctx := t.Context()
	rk, err := crypto.CreateVerifier(e.path, []byte("old"), testKDF, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Login(ctx, []byte("old")); err != nil {
		t.Fatal(err)
	}
	id1, _ := e.kr.KeyID()
	gen := e.kr.Generation()
	st, err := e.svc.Status(ctx, false)
	if err != nil || !st.RecoveryKeySet || !st.PasswordSet {
		t.Fatalf("status: %+v %v", st, err)
	}
	other := crypto.FormatRecoveryKey(bytes.Repeat([]byte{7}, crypto.RecoveryKeySize))
	if err := e.svc.ResetPassword(ctx, other, []byte("new")); !errors.Is(err, crypto.ErrInvalidRecoveryKey) {
		t.Fatalf("wrong recovery key: %v", err)
	}
	if err := e.svc.ResetPassword(ctx, rk, []byte("new")); err != nil {
		t.Fatal(err)
	}
	if !e.kr.IsSet() || e.kr.Generation() != gen {
		t.Fatal("a reset changed the key in memory")
	}
	e.svc.Logout(ctx)
	if err := e.svc.ResetPassword(ctx, rk, []byte("newer")); err != nil || e.kr.IsSet() {
		t.Fatalf("reset while logged out: %v, key set %v", err, e.kr.IsSet())
	}
	if _, err := e.svc.Login(ctx, []byte("new")); !errors.Is(err, crypto.ErrInvalidPassword) {
		t.Fatalf("superseded password: %v", err)
	}
	if _, err := e.svc.Login(ctx, []byte("newer")); err != nil {
		t.Fatal(err)
	}
	if id2, _ := e.kr.KeyID(); id2 != id1 {
		t.Fatal("the reset changed the master key")
	}
}

// TestServiceDaemonInfo: Status reports the daemon it was given, with the
// uptime counted from its start; without one, no daemon field.
func TestServiceDaemonInfo(t *testing.T) {
	e := newSvc(t, "")
	if st, err := e.svc.Status(context.Background(), false); err != nil || st.Daemon != nil {
		t.Fatalf("without daemon info: %+v %v", st.Daemon, err)
	}
	info := DaemonInfo{Version: "v1", PID: 42, DataDir: "/d", Mountpoint: "/m", Listen: "unix:/s", StartedAt: time.Now().Add(-90 * time.Second)}
	svc, err := NewService(ServiceOptions{Keyring: e.kr, VerifierPath: e.path, KDF: testKDF, Files: e.files, Tasks: e.tasks, Daemon: info})
	if err != nil {
		t.Fatal(err)
	}
	st, err := svc.Status(context.Background(), false)
	if err != nil || st.Daemon == nil {
		t.Fatalf("status: %+v %v", st, err)
	}
	got := *st.Daemon
	if got.UptimeS < 90 || got.UptimeS > 90+3600 {
		t.Errorf("uptime %d s, want about 90", got.UptimeS)
	}
	got.UptimeS = 0
	if got != info {
		t.Errorf("daemon %+v, want %+v", got, info)
	}
	b, _ := json.Marshal(st)
	for _, k := range []string{`"daemon":{"version":"v1","pid":42,"data_dir":"/d","mountpoint":"/m","listen":"unix:/s","started_at":`, `"uptime_s":`} {
		if !strings.Contains(string(b), k) {
			t.Errorf("JSON lacks %s: %s", k, b)
		}
	}
}

// TestServiceLastLockBeforeKeyGone: a status taken while the logout is
// still running (from the Keyring's OnClear listeners: the key is already
// gone, Clear has not returned) shows that logout as the last lock. It was
// recorded after Clear returned, so a client that waited for key_set false
// could read the lock before it (TestAutoLockIdle: "last lock: <nil>").
func TestServiceLastLockBeforeKeyGone(t *testing.T) {
	kr := crypto.NewKeyring()
	t.Cleanup(kr.Clear)
	svc, err := NewService(ServiceOptions{Keyring: kr, VerifierPath: crypto.VerifierPath(t.TempDir()), KDF: testKDF,
		Files: &fakeFiles{}, Tasks: &fakeTasks{}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	var during []Status
	kr.OnClear(func() {
		st, err := svc.Status(ctx, false)
		if err != nil {
			t.Error(err)
		}
		during = append(during, st)
	})
	for _, reason := range []string{"idle", "session_lock"} {
		if _, err := svc.Login(ctx, []byte("pw")); err != nil {
			t.Fatal(err)
		}
		during = nil
		if err := svc.Logout(WithLogoutReason(ctx, reason)); err != nil {
			t.Fatal(err)
		}
		if len(during) == 0 {
			t.Fatal("the OnClear listener did not run")
		}
		for _, st := range during {
			if st.KeySet {
				t.Fatalf("%s: status during the listeners says the key is set", reason)
			}
			if st.LastLock == nil || st.LastLock.Reason != reason {
				t.Fatalf("%s: status with the key gone shows last lock %+v", reason, st.LastLock)
			}
		}
	}
}

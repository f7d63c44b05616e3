package control

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/julienschmidt/httprouter"
	"github.com/sirupsen/logrus"

	"github.com/mountd/mountd/crypto"
	"github.com/mountd/mountd/logkey"
	"github.com/mountd/mountd/task"
)

// Paths of the control API.
const (
	PathLogout          = "/api/system/logout"
	PathLogin           = "/api/system/login"
	PathStatus          = "/api/system/encryption-status"
	PathEncryptExisting = "/api/system/encrypt_existing_files"
	PathTasks           = "/api/system/tasks"
	PathTask            = "/api/system/tasks/:id"
	PathTaskCancel      = "/api/system/tasks/:id/cancel"
	PathChangePassword  = "/api/system/change_password"
	PathResetPassword   = "/api/system/reset_password"
)

// Cipher is the content cipher reported by encryption-status.
const Cipher = "AES-256-GCM"

// LogoutMessage is the message of the logout response, fixed by the seed.
const LogoutMessage = "File encryption key cleared"

// handler is an endpoint: it writes a success response itself and returns
// an error for everything else, which writeError turns into the response.
type handler func(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error

type route struct {
	methods  []string
	path     string
	command  string
	mutating bool // state-changing: Origin / Sec-Fetch-Site checked
	h        handler
}

func (s *Server) routeTable() []route {
	get, post := http.MethodGet, http.MethodPost
	return []route{
		{[]string{get, post}, PathLogout, "logout", true, s.handleLogout},
		{[]string{post}, PathLogin, "login", true, s.handleLogin},
		{[]string{get}, PathStatus, "encryption-status", false, s.handleStatus},
		{[]string{get, post}, PathEncryptExisting, "encrypt_existing_files", true, s.handleEncryptExisting},
		{[]string{get}, PathTasks, "tasks", false, s.handleTasks},
		{[]string{get}, PathTask, "task", false, s.handleTask},
		{[]string{post}, PathTaskCancel, "cancel_task", true, s.handleCancelTask},
		{[]string{post}, PathChangePassword, "change_password", true, s.handleChangePassword},
		{[]string{post}, PathResetPassword, "reset_password", true, s.handleResetPassword},
	}
}

func (s *Server) newRouter() *httprouter.Router {
	rt := httprouter.New()
	// No redirects (their bodies are HTML) and no automatic OPTIONS answer:
	// OPTIONS is a 405 like any other unrouted method, and no CORS header
	// is ever sent.
	rt.RedirectTrailingSlash = false
	rt.RedirectFixedPath = false
	rt.HandleOPTIONS = false
	rt.HandleMethodNotAllowed = true
	rt.NotFound = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, "unknown", errNotFound)
	})
	rt.MethodNotAllowed = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// httprouter's Allow adds OPTIONS, which answers 405 here too:
		// list only the methods that work.
		w.Header().Set("Allow", s.allowFor(r.URL.Path))
		s.writeError(w, r, s.commandFor(r.URL.Path), errMethodNotAllowed)
	})
	rt.PanicHandler = func(w http.ResponseWriter, r *http.Request, v any) {
		s.writeError(w, r, s.commandFor(r.URL.Path), fmt.Errorf("control: panic in handler: %v", v))
	}
	for _, e := range s.routes {
		for _, m := range e.methods {
			rt.Handle(m, e.path, s.wrap(e))
		}
	}
	return rt
}

// allowFor lists the methods of the route at path, for the Allow header.
func (s *Server) allowFor(path string) string {
	for _, rt := range s.routes {
		if matchPattern(rt.path, path) {
			return strings.Join(rt.methods, ", ")
		}
	}
	return ""
}

// wrap runs the per-route guard and maps the handler's error.
func (s *Server) wrap(e route) httprouter.Handle {
	return func(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
		if info := infoFrom(r); info != nil {
			info.route, info.mutating = e.path, e.mutating
		}
		if !slices.Contains(openRoutes, e.path) {
			if err := s.ownerOnly(r, e.mutating); err != nil {
				s.writeError(w, r, e.command, err)
				return
			}
		}
		if err := e.h(w, r, ps); err != nil {
			s.writeError(w, r, e.command, err)
		}
	}
}

type logoutResponse struct {
	envelope
	KeySet bool `json:"key_set"`
}

// handleLogout: GET or POST; idempotent; the body is the seed's, byte for byte.
func (s *Server) handleLogout(w http.ResponseWriter, r *http.Request, _ httprouter.Params) error {
	// A logout the client stops waiting for must still finish.
	if err := s.backend.Logout(context.WithoutCancel(r.Context())); err != nil {
		return err
	}
	s.reqLog(r).Info("logout: file encryption key cleared")
	return writeJSON(w, http.StatusOK, logoutResponse{ok("logout", LogoutMessage), false})
}

type loginRequest struct {
	Password secret `json:"password"`
}

func (q *loginRequest) secrets() []namedSecret { return []namedSecret{{"password", &q.Password}} }

type loginResponse struct {
	envelope
	KeySet     bool `json:"key_set"`
	Created    bool `json:"created"`
	AlreadySet bool `json:"already_set"`
}

// handleLogin: POST application/json {"password": "..."}. Only allowed
// callers get here, so only they can create the first password.
func (s *Server) handleLogin(w http.ResponseWriter, r *http.Request, _ httprouter.Params) error {
	var req loginRequest
	var res LoginResult
	err := s.passwordCall(w, r, "login", &req, func(ctx context.Context) error {
		var err error
		res, err = s.backend.Login(ctx, req.Password)
		return err
	})
	lg := s.reqLog(r)
	switch {
	case errors.Is(err, crypto.ErrInvalidPassword):
		lg.Info("login failed: invalid password")
		return err
	case errors.Is(err, ErrEncryptedWithoutVerifier):
		lg.Warn("login refused: encrypted files exist but the verifier is missing")
		return err
	case err != nil:
		return err
	}

	msg := "File encryption key set"
	switch {
	case res.Created:
		msg = "Password created and file encryption key set"
	case res.AlreadySet:
		msg = "File encryption key already set"
	}
	lg.WithField(fieldCreated, res.Created).Info("login: " + msg)
	return writeJSON(w, http.StatusOK, loginResponse{ok("login", msg), true, res.Created, res.AlreadySet})
}

type changePasswordRequest struct {
	OldPassword secret `json:"old_password"`
	NewPassword secret `json:"new_password"`
}

func (q *changePasswordRequest) secrets() []namedSecret {
	return []namedSecret{{"old_password", &q.OldPassword}, {"new_password", &q.NewPassword}}
}

// handleChangePassword: POST application/json {"old_password", "new_password"}.
// A wrong old password counts as a failed login for the backoff: it is the
// same oracle.
func (s *Server) handleChangePassword(w http.ResponseWriter, r *http.Request, _ httprouter.Params) error {
	var req changePasswordRequest
	err := s.passwordCall(w, r, "password change", &req, func(ctx context.Context) error {
		return s.backend.ChangePassword(ctx, req.OldPassword, req.NewPassword)
	})
	if errors.Is(err, crypto.ErrInvalidPassword) {
		s.reqLog(r).Info("password change failed: invalid old password")
		return err
	}
	if err != nil {
		return err
	}
	s.reqLog(r).Info("password changed")
	return writeJSON(w, http.StatusOK, ok("change_password", "Password changed"))
}

// namedSecret is one password field of a request body.
type namedSecret struct {
	name string // the JSON key
	val  *secret
}

// passwordRequest is the body of an endpoint that takes passwords: a
// struct whose fields are all secrets, every one required and not empty.
type passwordRequest interface {
	secrets() []namedSecret
}

// passwordCall is the one path of every endpoint that takes a password
// (login, change_password, and any later one such as a password reset).
// Its route is POST-only, state-changing and not open, so routing has
// already refused other users (403), other methods (405) and cross-site
// calls (403). passwordCall does the rest, in this order:
//   - a JSON Content-Type (415) and no query string (400): a password
//     never comes from a URL;
//   - the caller's backoff (429 at once while locked, without reading the
//     body);
//   - the body, at most maxBody, decoded into req: exactly its fields,
//     all JSON strings of valid UTF-8, none empty (413, 400); what the
//     connection read of the request is zeroed as soon as the body is read
//     (and the connection closed after the reply: wipe.go), the raw body
//     once decoded, and req's secrets when passwordCall returns;
//   - fn under the KDF gate (one password check at a time, bounded
//     waiting: 503), after the caller's backoff is checked again;
//     fn's crypto.ErrInvalidPassword (or ErrInvalidRecoveryKey) counts as
//     a failure of this caller,
//     a nil error resets the caller's count. fn's context is not
//     cancelled when the client goes away (a KDF run cannot stop).
//
// event names the call in log lines ("login", "password change").
func (s *Server) passwordCall(w http.ResponseWriter, r *http.Request, event string, req passwordRequest, fn func(context.Context) error) error {
	fields := req.secrets()
	defer func() {
		for _, f := range fields {
			f.val.wipe()
		}
	}()
	// Also when the body is never read (415, 429): part of it may be
	// buffered already.
	defer s.wipeRequest(w, r)
	if err := requireJSONPost(r); err != nil {
		return err
	}
	key := keyOf(callerOf(r))
	if wait := s.backoff.wait(key); wait > 0 {
		s.reqLog(r).WithField(fieldRetry, retryAfterSeconds(wait)).Info(event + " refused: backing off after failed attempts")
		return tooManyAttempts(wait)
	}
	names := make([]string, len(fields))
	for i, f := range fields {
		names[i] = f.name
	}
	if err := s.readSecrets(w, r, req, names...); err != nil {
		return err
	}
	for _, f := range fields {
		if len(*f.val) == 0 {
			return badRequest(f.name + " must not be empty")
		}
	}
	release, err := s.gate.acquire(r.Context())
	if err != nil {
		return err
	}
	defer release()
	if wait := s.backoff.wait(key); wait > 0 {
		return tooManyAttempts(wait)
	}
	err = fn(context.WithoutCancel(r.Context()))
	switch {
	case errors.Is(err, crypto.ErrInvalidPassword), errors.Is(err, crypto.ErrInvalidRecoveryKey):
		s.backoff.failure(key)
	case err == nil:
		s.backoff.success(key)
	}
	return err
}

type resetPasswordRequest struct {
	RecoveryKey secret `json:"recovery_key"`
	NewPassword secret `json:"new_password"`
}

func (q *resetPasswordRequest) secrets() []namedSecret {
	return []namedSecret{{"recovery_key", &q.RecoveryKey}, {"new_password", &q.NewPassword}}
}

// handleResetPassword: POST application/json {"recovery_key", "new_password"}.
// It takes the same path as login (passwordCall): a wrong recovery key
// counts as a failed login of this caller for the backoff, and the call
// runs under the KDF gate (the new password's wrap runs Argon2). A
// malformed key (a typo its checksum catches) says nothing about the key
// and does not count.
func (s *Server) handleResetPassword(w http.ResponseWriter, r *http.Request, _ httprouter.Params) error {
	var req resetPasswordRequest
	err := s.passwordCall(w, r, "password reset", &req, func(ctx context.Context) error {
		return s.backend.ResetPassword(ctx, req.RecoveryKey, req.NewPassword)
	})
	lg := s.reqLog(r)
	switch {
	case errors.Is(err, crypto.ErrInvalidRecoveryKey):
		lg.Info("password reset failed: invalid recovery key")
		return err
	case errors.Is(err, crypto.ErrBadRecoveryKey):
		lg.Info("password reset failed: malformed recovery key")
		return err
	case err != nil:
		return err
	}
	lg.Info("password reset with the recovery key")
	return writeJSON(w, http.StatusOK, ok("reset_password", "Password reset"))
}

// readSecrets reads and decodes a JSON body holding passwords, zeroing the
// raw body before returning, and what the connection buffered of it as
// soon as it is read (wipeRequest).
func (s *Server) readSecrets(w http.ResponseWriter, r *http.Request, dst any, keys ...string) error {
	body, err := readBody(w, r)
	// After decoding: a body larger than net/http's buffer is read
	// straight into body, which the connection then remembers and zeroes.
	defer s.wipeRequest(w, r)
	if err != nil {
		return err
	}
	defer clear(body)
	return decodeObject(body, dst, keys...)
}

type statusResponse struct {
	envelope
	Status
}

// handleStatus: GET, ?scan=true adds file counts. Other query parameters
// are ignored.
func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request, _ httprouter.Params) error {
	scan := false
	if v := r.URL.Query()["scan"]; len(v) > 0 {
		b, err := strconv.ParseBool(v[len(v)-1])
		if err != nil {
			return badRequest("scan must be true or false")
		}
		scan = b
	}
	if scan {
		// The scan walks the whole backing tree: as for a state-changing
		// call, allowed callers only, and not from another site.
		if info := infoFrom(r); info != nil {
			info.mutating = true
		}
		if err := s.ownerOnly(r, true); err != nil {
			return err
		}
	}
	st, err := s.backend.Status(r.Context(), scan)
	if err != nil {
		return err
	}
	if st.Protect == nil {
		st.Protect = []string{}
	}
	if !s.callers.allows(callerOf(r)) {
		// Other users learn what the mount shows anyway (is a key set),
		// not the owner's task and its file counts.
		st.Task = nil
		st.LastLock = nil // when the owner locked, and why
	}
	if st.AutoLock == (AutoLock{}) {
		st.AutoLock = autoLockOff
	}
	if !scan {
		st.Files = nil
	}
	msg := "File encryption key is not set"
	if st.KeySet {
		msg = "File encryption key is set"
	}
	return writeJSON(w, http.StatusOK, statusResponse{ok("encryption-status", msg), st})
}

type taskResponse struct {
	envelope
	Started *bool       `json:"started,omitempty"`
	Task    task.Record `json:"task"`
}

// handleEncryptExisting: GET or POST. 202 with the new task, or 200 with the
// one already running (started tells which).
func (s *Server) handleEncryptExisting(w http.ResponseWriter, r *http.Request, _ httprouter.Params) error {
	// The task outlives the request: never hand it a context that the
	// client's disconnect cancels.
	t, started, err := s.backend.StartEncryptExisting(context.WithoutCancel(r.Context()))
	if err != nil {
		return err
	}
	status, msg := http.StatusOK, "Task already running"
	if started {
		status, msg = http.StatusAccepted, "Task started"
	}
	s.reqLog(r).WithFields(logrus.Fields{logkey.TaskID: t.ID, fieldTaskState: t.State}).
		Info("encrypt_existing_files: " + msg)
	return writeJSON(w, status, taskResponse{ok("encrypt_existing_files", msg), &started, t})
}

// validTaskID bounds what a path parameter may be before a backend sees it.
func validTaskID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range []byte(id) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

type tasksResponse struct {
	envelope
	Tasks []task.Record `json:"tasks"`
}

// handleTasks: GET, the tasks the daemon remembers, newest first.
func (s *Server) handleTasks(w http.ResponseWriter, _ *http.Request, _ httprouter.Params) error {
	list := s.backend.Tasks()
	if list == nil {
		list = []task.Record{}
	}
	msg := strconv.Itoa(len(list)) + " tasks"
	if len(list) == 1 {
		msg = "1 task"
	}
	return writeJSON(w, http.StatusOK, tasksResponse{ok("tasks", msg), list})
}

func (s *Server) handleTask(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error {
	id := ps.ByName("id")
	if !validTaskID(id) {
		return errNotFound
	}
	t, found := s.backend.Task(id)
	if !found {
		return errNotFound
	}
	return writeJSON(w, http.StatusOK, taskResponse{envelope: ok("task", "Task "+string(t.State)), Task: t})
}

// handleCancelTask: POST. 200 with the task: still "running" until it has
// stopped (poll it); a finished task is returned unchanged.
func (s *Server) handleCancelTask(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error {
	id := ps.ByName("id")
	if !validTaskID(id) {
		return errNotFound
	}
	t, err := s.backend.CancelTask(id)
	if err != nil {
		return err
	}
	msg := "Cancellation requested"
	if t.State.Final() {
		msg = "Task already " + string(t.State)
	}
	s.reqLog(r).WithFields(logrus.Fields{logkey.TaskID: t.ID, fieldTaskState: t.State}).Info("cancel_task: " + msg)
	return writeJSON(w, http.StatusOK, taskResponse{envelope: ok("cancel_task", msg), Task: t})
}

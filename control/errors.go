package control

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/mountd/mountd/crypto"
	"github.com/mountd/mountd/task"
)

// Error codes: the stable values of the "error" field of a failure response.
// Clients match on these, never on the message.
const (
	CodeInvalidPassword               = "RESULT_INVALID_PASSWORD"
	CodeInvalidRecoveryKey            = "RESULT_INVALID_RECOVERY_KEY"
	CodeRecoveryKeyNotSet             = "RESULT_RECOVERY_KEY_NOT_SET"
	CodeKeyNotSet                     = "RESULT_KEY_NOT_SET"
	CodePasswordNotSet                = "RESULT_PASSWORD_NOT_SET"
	CodeBadRequest                    = "RESULT_BAD_REQUEST"
	CodeTaskRunning                   = "RESULT_TASK_RUNNING"
	CodeNotFound                      = "RESULT_NOT_FOUND"
	CodeTooManyAttempts               = "RESULT_TOO_MANY_ATTEMPTS"
	CodeForbidden                     = "RESULT_FORBIDDEN"
	CodeMethodNotAllowed              = "RESULT_METHOD_NOT_ALLOWED"
	CodeUnsupportedMediaType          = "RESULT_UNSUPPORTED_MEDIA_TYPE"
	CodeTooLarge                      = "RESULT_TOO_LARGE"
	CodeUnauthorized                  = "RESULT_UNAUTHORIZED"
	CodeConflict                      = "RESULT_CONFLICT"
	CodeEncryptedFilesWithoutVerifier = "RESULT_ENCRYPTED_FILES_WITHOUT_VERIFIER"
	CodeBusy                          = "RESULT_BUSY"
	CodeBadVerifier                   = "RESULT_BAD_VERIFIER"
	CodeInternal                      = "RESULT_INTERNAL"
)

// Sentinel errors a Backend (or the TaskRunner behind Service) returns,
// possibly wrapped, for conditions that are not crypto's.
var (
	// ErrTaskRunning means a backend refused a call because a task runs.
	ErrTaskRunning = errors.New("control: a task is running")

	// ErrEncryptedWithoutVerifier means the first login was refused because
	// encrypted files exist but the verifier file does not: a new password
	// would make a new master key that cannot read them.
	ErrEncryptedWithoutVerifier = errors.New("control: encrypted files exist but the verifier is missing")
)

// apiError is a failure with its HTTP status, code and client message fixed.
// The guards and decoders return it; classify maps everything else onto it.
type apiError struct {
	status     int
	code       string
	msg        string
	retryAfter time.Duration // > 0: send Retry-After (whole seconds, rounded up)
	cause      error         // logged for 5xx, never sent
}

func (e *apiError) Error() string {
	if e.cause != nil {
		return e.msg + ": " + e.cause.Error()
	}
	return e.msg
}

func (e *apiError) Unwrap() error { return e.cause }

func badRequest(msg string) *apiError {
	return &apiError{status: http.StatusBadRequest, code: CodeBadRequest, msg: msg}
}

var (
	errForbiddenHost = &apiError{status: http.StatusForbidden, code: CodeForbidden,
		msg: "Host not allowed; use localhost, 127.0.0.1 or [::1] with the listen port"}
	errForbiddenOrigin = &apiError{status: http.StatusForbidden, code: CodeForbidden,
		msg: "Cross-origin request refused"}
	errForbiddenCaller = &apiError{status: http.StatusForbidden, code: CodeForbidden,
		msg: "Only root, the daemon's user and users allowed with --allow-uid may do this"}
	errCallerUnknown = &apiError{status: http.StatusForbidden, code: CodeForbidden,
		msg: "Could not tell which user is calling; refused"}
	errUnauthorized = &apiError{status: http.StatusUnauthorized, code: CodeUnauthorized,
		msg: "Missing or invalid bearer token"}
	errNotFound = &apiError{status: http.StatusNotFound, code: CodeNotFound,
		msg: "Not found"}
	errMethodNotAllowed = &apiError{status: http.StatusMethodNotAllowed, code: CodeMethodNotAllowed,
		msg: "Method not allowed"}
	errMediaType = &apiError{status: http.StatusUnsupportedMediaType, code: CodeUnsupportedMediaType,
		msg: "Content-Type must be application/json"}
	errTooLarge = &apiError{status: http.StatusRequestEntityTooLarge, code: CodeTooLarge,
		msg: "Request body too large"}
	errQuery = badRequest("Query parameters are not accepted here; send the JSON body only")
	errBusy  = &apiError{status: http.StatusServiceUnavailable, code: CodeBusy,
		msg: "Too many password checks in progress; try again", retryAfter: time.Second}
)

// tooManyAttempts is the 429 reply of the login backoff. Its body is the same
// every time; only the Retry-After header varies.
func tooManyAttempts(wait time.Duration) *apiError {
	return &apiError{status: http.StatusTooManyRequests, code: CodeTooManyAttempts,
		msg: "Too many failed attempts; try again later", retryAfter: wait}
}

// classify is the one place that turns an error into a status, a code and a
// client message. Messages are fixed strings: nothing from err reaches the
// client, so a 5xx body carries no internals.
func classify(err error) *apiError {
	var ae *apiError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.As(err, &mbe):
		return errTooLarge
	case errors.Is(err, task.ErrNotFound):
		return errNotFound
	case errors.Is(err, ErrTaskRunning):
		return &apiError{status: http.StatusConflict, code: CodeTaskRunning,
			msg: "A task is running; try again when it has finished"}
	case errors.Is(err, ErrEncryptedWithoutVerifier):
		return &apiError{status: http.StatusConflict, code: CodeEncryptedFilesWithoutVerifier,
			msg: "Encrypted files exist but the password verifier (auth/verifier.bin) is missing; " +
				"a new password would create a new key that cannot read them. Restore the verifier file from a backup"}
	case errors.Is(err, crypto.ErrInvalidPassword):
		return &apiError{status: http.StatusUnauthorized, code: CodeInvalidPassword,
			msg: "Invalid password"}
	case errors.Is(err, crypto.ErrInvalidRecoveryKey):
		return &apiError{status: http.StatusUnauthorized, code: CodeInvalidRecoveryKey,
			msg: "Invalid recovery key"}
	case errors.Is(err, crypto.ErrBadRecoveryKey):
		return badRequest("Malformed recovery key: a character is mistyped, missing or extra, or two groups are swapped")
	case errors.Is(err, crypto.ErrNoRecoveryKey):
		return &apiError{status: http.StatusConflict, code: CodeRecoveryKeyNotSet,
			msg: "No recovery key is set for this data directory"}
	case errors.Is(err, crypto.ErrLocked):
		return &apiError{status: http.StatusConflict, code: CodeKeyNotSet,
			msg: "File encryption key is not set; log in first"}
	case errors.Is(err, crypto.ErrNoVerifier):
		return &apiError{status: http.StatusConflict, code: CodePasswordNotSet,
			msg: "No password is set yet; log in once to create it"}
	case errors.Is(err, crypto.ErrKeyAlreadySet):
		return &apiError{status: http.StatusConflict, code: CodeConflict,
			msg: "A different file encryption key is set; log out first"}
	case errors.Is(err, crypto.ErrVerifierExists):
		return &apiError{status: http.StatusConflict, code: CodeConflict,
			msg: "A password was set concurrently; try again"}
	case errors.Is(err, crypto.ErrBadVerifier):
		// A server-side data problem, but one the operator must act on, so
		// it gets its own code and a message that says what to do.
		return &apiError{status: http.StatusInternalServerError, code: CodeBadVerifier,
			msg: "The password verifier (auth/verifier.bin) is corrupt or records unsupported KDF parameters; " +
				"restore it from a backup", cause: err}
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return &apiError{status: http.StatusServiceUnavailable, code: CodeBusy,
			msg: "Request cancelled or timed out", retryAfter: time.Second}
	default:
		return &apiError{status: http.StatusInternalServerError, code: CodeInternal,
			msg: "Internal error", cause: err}
	}
}

// retryAfterSeconds renders d as a Retry-After value: whole seconds, at least 1.
func retryAfterSeconds(d time.Duration) string {
	s := int64((d + time.Second - 1) / time.Second)
	if s < 1 {
		s = 1
	}
	return strconv.FormatInt(s, 10)
}

// writeError writes the failure envelope for err and records the outcome
// for the access log line.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, command string, err error) {
	ae := classify(err)
	if info := infoFrom(r); info != nil {
		info.code = ae.code
		if ae.cause != nil {
			// RESULT_INTERNAL and RESULT_BAD_VERIFIER: the operator
			// needs the cause, which the client never gets.
			info.cause = err
		}
	}
	if ae.retryAfter > 0 {
		w.Header().Set("Retry-After", retryAfterSeconds(ae.retryAfter))
	}
	if ae.status == http.StatusUnauthorized && ae.code == CodeUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="mountd"`)
	}
	// Marshalling a fixed struct of strings cannot fail.
	_ = writeJSON(w, ae.status, envelope{Command: command, Success: false, Message: ae.msg, Error: ae.code})
}

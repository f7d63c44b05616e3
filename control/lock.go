package control

import (
	"context"
	"time"
)

// LockReasonRequest is the reason recorded for a logout asked for through
// the API (GET or POST /api/system/logout) or any Logout call whose
// context carries no reason.
const LockReasonRequest = "request"

type logoutReasonKey struct{}

// WithLogoutReason returns a context that makes Service.Logout record
// reason (a short snake_case word such as "idle" or "suspend") as the
// last lock's reason in Status. The daemon's automatic locks use it; the
// logout itself is the same as the API's.
func WithLogoutReason(ctx context.Context, reason string) context.Context {
	return context.WithValue(ctx, logoutReasonKey{}, reason)
}

func logoutReason(ctx context.Context) string {
	if r, ok := ctx.Value(logoutReasonKey{}).(string); ok && r != "" {
		return r
	}
	return LockReasonRequest
}

// LockEvent is the last time the key was cleared, and why.
type LockEvent struct {
	// Reason is LockReasonRequest for a logout call, else the reason its
	// caller gave (docs/API.md lists them).
	Reason string `json:"reason"`
	// At is when the key was cleared (RFC 3339 in JSON).
	At time.Time `json:"at"`
}

// Lock policy states.
const (
	PolicyOff         = "off"         // not configured
	PolicyOn          = "on"          // configured and working
	PolicyUnavailable = "unavailable" // configured but not working now; Detail says why
)

// LockPolicy is the state of one automatic lock policy.
type LockPolicy struct {
	// State is PolicyOff, PolicyOn or PolicyUnavailable.
	State string `json:"state"`
	// Detail says what the policy watches, or why it is unavailable.
	Detail string `json:"detail,omitempty"`
}

// IdlePolicy is the idle-time policy.
type IdlePolicy struct {
	LockPolicy
	// AfterSeconds is the idle time that locks; 0 when off.
	AfterSeconds float64 `json:"after_s"`
}

// AutoLock are the automatic lock policies (--lock-after-idle,
// --lock-on-suspend, --lock-on-session-lock).
type AutoLock struct {
	Idle        IdlePolicy `json:"idle"`
	Suspend     LockPolicy `json:"suspend"`
	SessionLock LockPolicy `json:"session_lock"`
}

// LockPolicies reports the automatic lock policies for Status. cmd/mountd
// adapts the autolock package's to it.
type LockPolicies interface {
	LockPolicies() AutoLock
}

// autoLockOff is the report when no policy reporter is configured.
var autoLockOff = AutoLock{
	Idle:        IdlePolicy{LockPolicy: LockPolicy{State: PolicyOff}},
	Suspend:     LockPolicy{State: PolicyOff},
	SessionLock: LockPolicy{State: PolicyOff},
}

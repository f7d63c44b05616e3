package control

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// hostPolicy decides which Host and Origin values name this server. A web
// page that got its own DNS name to resolve to 127.0.0.1 (DNS rebinding)
// still sends its own name as Host, so only the loopback names are accepted.
type hostPolicy struct {
	port string // the TCP listen port; "" for a unix socket
	unix bool
}

func newHostPolicy(addr string) (hostPolicy, error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		if path == "" {
			return hostPolicy{}, fmt.Errorf("control: listen address %q: empty socket path", addr)
		}
		return hostPolicy{unix: true}, nil
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return hostPolicy{}, fmt.Errorf("control: listen address %q: %w", addr, err)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 || strconv.FormatUint(n, 10) != port {
		return hostPolicy{}, fmt.Errorf("control: listen address %q: need a fixed port (with port 0, pass the listener's address)", addr)
	}
	return hostPolicy{port: port}, nil
}

// allow reports whether hostport (a Host header, or an Origin without its
// scheme) is a loopback name with the right port. Over TCP the port must
// be the listen port (it may be left out only when that is 80). Over a unix
// socket no browser can connect, so any port or none is accepted, but the
// name must still be a loopback one: that keeps a TCP-to-socket proxy
// safe from rebinding too.
func (p hostPolicy) allow(hostport string) bool {
	var host, port string
	var bracketed bool
	if rest, ok := strings.CutPrefix(hostport, "["); ok {
		i := strings.IndexByte(rest, ']')
		if i < 0 {
			return false
		}
		host, bracketed = rest[:i], true
		switch after := rest[i+1:]; {
		case after == "":
		case strings.HasPrefix(after, ":"):
			port = after[1:]
			if port == "" {
				return false
			}
		default:
			return false
		}
	} else if i := strings.LastIndexByte(hostport, ':'); i >= 0 {
		host, port = hostport[:i], hostport[i+1:]
		if port == "" {
			return false
		}
	} else {
		host = hostport
	}
	if bracketed {
		if host != "::1" {
			return false
		}
	} else if !strings.EqualFold(host, "localhost") && host != "127.0.0.1" {
		return false
	}
	for _, c := range []byte(port) {
		if c < '0' || c > '9' {
			return false
		}
	}
	if p.unix {
		return true
	}
	return port == p.port || (port == "" && p.port == "80")
}

// checkHost refuses a Host header that is not a loopback name (403).
func (s *Server) checkHost(r *http.Request) error {
	if !s.hosts.allow(r.Host) {
		return errForbiddenHost
	}
	return nil
}

// checkOrigin refuses, on a state-changing call, a request a browser marks
// as coming from another site: an Origin other than this server's own
// (including "null"), a Sec-Fetch-Site other than none / same-origin, or a
// Referer from another origin.
// Tools like curl send neither header and pass. No CORS header is ever sent,
// so a foreign page can never read a response either.
func (s *Server) checkOrigin(r *http.Request) error {
	if v := r.Header.Values("Origin"); len(v) > 0 {
		if len(v) != 1 {
			return errForbiddenOrigin
		}
		rest, ok := cutPrefixFold(v[0], "http://")
		if !ok || !s.hosts.allow(rest) {
			return errForbiddenOrigin
		}
	}
	if v := r.Header.Values("Sec-Fetch-Site"); len(v) > 0 {
		if len(v) != 1 || (v[0] != "none" && v[0] != "same-origin") {
			return errForbiddenOrigin
		}
	}
	// Older browsers send neither header on a plain GET (<img src=...>),
	// but usually a Referer: a foreign one is refused too. (A page can
	// suppress its Referer; the bearer token is the complete answer.)
	if v := r.Header.Values("Referer"); len(v) > 0 {
		rest, ok := cutPrefixFold(v[0], "http://")
		if len(v) != 1 || !ok {
			return errForbiddenOrigin
		}
		if i := strings.IndexAny(rest, "/?#"); i >= 0 {
			rest = rest[:i]
		}
		if !s.hosts.allow(rest) {
			return errForbiddenOrigin
		}
	}
	return nil
}

func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix) {
		return s[len(prefix):], true
	}
	return s, false
}

// checkToken requires "Authorization: Bearer <token>" when a token is set.
// Both sides are hashed first, so the constant-time compare does not even
// leak the token's length.
func (s *Server) checkToken(r *http.Request) error {
	if s.tokenHash == nil {
		return nil
	}
	v := r.Header.Values("Authorization")
	if len(v) != 1 {
		return errUnauthorized
	}
	tok, ok := cutPrefixFold(v[0], "Bearer ")
	if !ok {
		return errUnauthorized
	}
	got := sha256.Sum256([]byte(tok))
	if subtle.ConstantTimeCompare(got[:], s.tokenHash) != 1 {
		return errUnauthorized
	}
	return nil
}

// backoff slows down password guessing, separately for each caller
// (backoffKey), so one caller's failures never lock out another: the
// lockAt-th failure in a row locks that caller's password checks for
// base, the next one (once the lock is over) for 2*base, then 4*base, ...
// up to max. A success resets the caller's count, and so does a quiet
// window without a failure. With the defaults: four failures cost
// nothing, the fifth locks for 1 s, then 2, 4, 8, 16, 32, 60, 60, ... s.
type backoff struct {
	mu        sync.Mutex
	now       func() time.Time
	lockAt    int
	base, max time.Duration
	window    time.Duration

	callers map[backoffKey]*backoffState
}

type backoffState struct {
	failures int
	last     time.Time // last failure
	until    time.Time // no attempt before this
}

func newBackoff() *backoff {
	return &backoff{now: time.Now, lockAt: 5, base: time.Second, max: time.Minute, window: 15 * time.Minute,
		callers: map[backoffKey]*backoffState{}}
}

// wait returns how long until k's next attempt is allowed; 0 means now.
func (b *backoff) wait(k backoffKey) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := b.callers[k]
	if st == nil {
		return 0
	}
	return max(st.until.Sub(b.now()), 0)
}

func (b *backoff) failure(k backoffKey) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	st := b.callers[k]
	if st == nil {
		b.forgetQuiet(now)
		st = &backoffState{}
		b.callers[k] = st
	}
	if now.Sub(st.last) > b.window {
		st.failures = 0
	}
	st.failures++
	st.last = now
	if n := st.failures - b.lockAt; n >= 0 {
		d := b.max
		if n < 30 && b.base<<n < b.max {
			d = b.base << n
		}
		st.until = now.Add(d)
	}
}

// forgetQuiet drops the counts that have expired. Only allowed callers
// reach the backoff, so the map stays small; this keeps it so.
func (b *backoff) forgetQuiet(now time.Time) {
	for k, st := range b.callers {
		if now.Sub(st.last) > b.window && !now.Before(st.until) {
			delete(b.callers, k)
		}
	}
}

func (b *backoff) success(k backoffKey) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.callers, k)
}

// kdfGate lets one password check (an Argon2 run) proceed at a time. Others
// wait, bounded by their request context and by maxWait; at most maxWaiting
// wait at once, the rest get 503 at once. So a flood of logins holds at most
// one KDF's memory plus maxWaiting small request bodies.
type kdfGate struct {
	sem        chan struct{}
	waiting    atomic.Int32
	maxWaiting int32
	maxWait    time.Duration
}

func newKDFGate() *kdfGate {
	return &kdfGate{sem: make(chan struct{}, 1), maxWaiting: 64, maxWait: 30 * time.Second}
}

func (g *kdfGate) acquire(ctx context.Context) (release func(), err error) {
	if g.waiting.Add(1) > g.maxWaiting {
		g.waiting.Add(-1)
		return nil, errBusy
	}
	defer g.waiting.Add(-1)
	ctx, cancel := context.WithTimeout(ctx, g.maxWait)
	defer cancel()
	select {
	case g.sem <- struct{}{}:
		return func() { <-g.sem }, nil
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, errBusy
		}
		return nil, ctx.Err()
	}
}

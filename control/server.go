package control

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/julienschmidt/httprouter"
	"github.com/mountd/mountd/logkey"
	"github.com/sirupsen/logrus"
)

// DefaultAddr is the default control-plane listen address.
const DefaultAddr = "127.0.0.1:8080"

// Options configures a Server.
type Options struct {
	// Backend does the work. Required.
	Backend Backend
	// Log receives the access log and the login/logout/password events.
	// nil discards them.
	Log *logrus.Entry
	// Addr is the address the server is reached at: "host:port" (the port
	// must be the real one, not 0) or "unix:/path". It decides which Host
	// and Origin headers are accepted. Empty means DefaultAddr.
	Addr string
	// Token, when not empty, is required on every call as
	// "Authorization: Bearer <token>". New keeps only its SHA-256. A TCP
	// Addr that is not loopback needs one (see CheckAddr).
	Token []byte
	// AllowUIDs are the users, besides root and the daemon's own
	// (effective) uid, who may log in, log out and change anything.
	// Other local users get 403 on every route but encryption-status.
	AllowUIDs []uint32
}

// Server is the HTTP control plane. It is an http.Handler; Serve runs it on
// a listener with timeouts set.
type Server struct {
	backend   Backend
	log       *logrus.Entry
	hosts     hostPolicy
	tokenHash []byte
	router    *httprouter.Router
	routes    []route
	backoff   *backoff
	gate      *kdfGate
	timeouts  timeouts
	callers   callerPolicy
	identify  func(net.Conn) Caller // tests replace it
}

// timeouts are the http.Server limits Serve applies, so that a slow client
// cannot hold a connection (or the KDF gate) for long.
type timeouts struct {
	readHeader, read, write, idle, shutdown time.Duration
}

var defaultTimeouts = timeouts{
	readHeader: 5 * time.Second,
	read:       30 * time.Second,
	// Covers the longest handler: a login waiting up to kdfGate.maxWait
	// for its turn, then one Argon2 run.
	write:    2 * time.Minute,
	idle:     time.Minute,
	shutdown: 5 * time.Second,
}

// New returns a Server. It fails only on an unusable Addr.
func New(opts Options) (*Server, error) {
	if opts.Backend == nil {
		panic("control: Options.Backend is nil")
	}
	addr := opts.Addr
	if addr == "" {
		addr = DefaultAddr
	}
	hp, err := newHostPolicy(addr)
	if err != nil {
		return nil, err
	}
	if err := CheckAddr(addr, len(opts.Token) > 0); err != nil {
		return nil, err
	}
	lg := opts.Log
	if lg == nil {
		l := logrus.New()
		l.Out = discard{}
		lg = logrus.NewEntry(l)
	}
	s := &Server{
		backend:  opts.Backend,
		log:      lg.WithField(logkey.Component, "control"),
		hosts:    hp,
		backoff:  newBackoff(),
		gate:     newKDFGate(),
		timeouts: defaultTimeouts,
		identify: identify,
		callers: callerPolicy{
			uids:        append([]uint32{0, uint32(os.Geteuid())}, opts.AllowUIDs...),
			remoteToken: len(opts.Token) > 0,
		},
	}
	if len(opts.Token) > 0 {
		h := sha256.Sum256(opts.Token)
		s.tokenHash = h[:]
	}
	s.routes = s.routeTable()
	s.router = s.newRouter()
	return s, nil
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// Handler returns the server as an http.Handler (guards and logging included).
func (s *Server) Handler() http.Handler { return s }

// ServeHTTP runs the guards that apply to every path (Host, token), routes,
// and writes one access log line.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	info := &reqInfo{id: newRequestID()}
	r = r.WithContext(context.WithValue(r.Context(), reqInfoKey{}, info))
	rec := &statusRecorder{ResponseWriter: w}
	rec.Header().Set("X-Request-Id", info.id)
	info.caller = callerOf(r)
	defer s.logRequest(r, rec, info, start)

	if err := s.checkHost(r); err != nil {
		s.writeError(rec, r, s.commandFor(r.URL.Path), err)
		return
	}
	if err := s.checkToken(r); err != nil {
		s.writeError(rec, r, s.commandFor(r.URL.Path), err)
		return
	}
	s.router.ServeHTTP(rec, r)
}

// Serve serves on ln until ctx is done, then shuts down gracefully (in-flight
// requests get a few seconds) and returns nil. It closes ln. Each
// connection remembers what it read, so that a request carrying a
// password can zero it (wipe.go).
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	errLog := s.log.WriterLevel(logrus.DebugLevel)
	defer errLog.Close()
	hs := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: s.timeouts.readHeader,
		ReadTimeout:       s.timeouts.read,
		WriteTimeout:      s.timeouts.write,
		IdleTimeout:       s.timeouts.idle,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          log.New(errLog, "", 0),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
		ConnContext:       s.connContext,
	}
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		select {
		case <-ctx.Done():
		case <-done:
			return
		}
		sctx, cancel := context.WithTimeout(context.Background(), s.timeouts.shutdown)
		defer cancel()
		if err := hs.Shutdown(sctx); err != nil {
			hs.Close()
		}
	}()
	err := hs.Serve(wipeListener{ln})
	if !errors.Is(err, http.ErrServerClosed) {
		hs.Close() // the listener failed: drop the open connections too
	}
	close(done)
	<-stopped
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// writeJSON writes v as the whole response body: compact JSON, no trailing
// newline (the logout body is byte-exact), application/json, not cacheable.
func writeJSON(w http.ResponseWriter, status int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(b)
	return nil
}

// envelope is the part of every response body that DESIGN §6 fixes.
type envelope struct {
	Command string `json:"command"`
	Success bool   `json:"success"`
	Message string `json:"message"`
	Error   string `json:"error,omitempty"`
}

func ok(command, message string) envelope {
	return envelope{Command: command, Success: true, Message: message}
}

// Log field keys. Every control log line uses these and no others.
const (
	fieldReqID     = "req_id"
	fieldMethod    = "method"
	fieldRoute     = "route"
	fieldCommand   = "command"
	fieldStatus    = "status"
	fieldCode      = "code"
	fieldRemote    = "remote"
	fieldCreated   = "created"
	fieldTaskState = "task_state"
	fieldRetry     = "retry_after_s"
	fieldUID       = "uid"    // uint32: the caller's uid, as the kernel says
	fieldCaller    = "caller" // string: "remote" or "unknown" when there is no uid
)

// reqInfo is what the access log needs to know about a request; the
// outer handler creates it, routing and writeError fill it in.
type reqInfo struct {
	id       string
	route    string // route pattern, never the raw URL
	mutating bool
	caller   Caller
	code     string
	cause    error // only for internal errors (500)
}

type reqInfoKey struct{}

func infoFrom(r *http.Request) *reqInfo {
	i, _ := r.Context().Value(reqInfoKey{}).(*reqInfo)
	return i
}

func newRequestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand panics instead)
	return hex.EncodeToString(b[:])
}

// reqLog is the logger for events inside a request.
func (s *Server) reqLog(r *http.Request) *logrus.Entry {
	if i := infoFrom(r); i != nil {
		return s.log.WithField(fieldReqID, i.id)
	}
	return s.log
}

// logRequest writes the one access line of a request. Reads (status, task)
// that succeed log at Debug, internal errors (500) at Error with their
// cause, the rest (503 busy included) at Info. The
// route is the pattern (/api/system/tasks/:id), never the URL or query.
func (s *Server) logRequest(r *http.Request, rec *statusRecorder, info *reqInfo, start time.Time) {
	status := rec.status
	if status == 0 {
		status = http.StatusOK
	}
	route := info.route
	if route == "" {
		route = "-"
	}
	f := logrus.Fields{
		fieldReqID:   info.id,
		fieldMethod:  r.Method,
		fieldRoute:   route,
		fieldStatus:  status,
		logkey.DurMS: logkey.MS(time.Since(start)),
		fieldRemote:  r.RemoteAddr,
		fieldCommand: s.commandFor(r.URL.Path),
	}
	if info.code != "" {
		f[fieldCode] = info.code
	}
	if info.caller.Known {
		f[fieldUID] = info.caller.UID
	} else {
		f[fieldCaller] = info.caller.String()
	}
	e := s.log.WithFields(f)
	switch {
	case info.cause != nil:
		e.WithError(info.cause).Error("request failed")
	case status < 400 && !info.mutating:
		e.Debug("request")
	default:
		e.Info("request")
	}
}

// statusRecorder remembers the status code written.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (w *statusRecorder) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusRecorder) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusRecorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// commandFor names the command of a path for the envelope, also when the
// request never reached a handler (403, 401, 405); "unknown" otherwise.
func (s *Server) commandFor(path string) string {
	for _, rt := range s.routes {
		if matchPattern(rt.path, path) {
			return rt.command
		}
	}
	return "unknown"
}

// matchPattern matches an httprouter pattern made of static segments and
// :params (no catch-alls), as httprouter would.
func matchPattern(pattern, path string) bool {
	for {
		seg, restPattern, more := strings.Cut(pattern, "/")
		got, restPath, gotMore := strings.Cut(path, "/")
		if strings.HasPrefix(seg, ":") {
			if got == "" {
				return false
			}
		} else if seg != got {
			return false
		}
		if !more || !gotMore {
			return more == gotMore
		}
		pattern, path = restPattern, restPath
	}
}

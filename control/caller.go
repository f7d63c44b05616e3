package control

import (
	"context"
	"errors"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"

	"github.com/mountd/mountd/peer"
)

// Caller is who sent a request, as the kernel tells it: the uid owning
// the client's socket (SO_PEERCRED on a unix socket, the socket table on
// TCP). It is found once per connection, on its first request, while the
// client is connected.
type Caller struct {
	UID   uint32
	Known bool // UID is the kernel's answer
	// Remote: a TCP client on another host, which has no uid here. Only a
	// server with a bearer token (needed to listen beyond loopback) lets
	// it in.
	Remote bool
	Err    error // why the uid is not known
}

func (c Caller) String() string {
	switch {
	case c.Known:
		return "uid " + strconv.FormatUint(uint64(c.UID), 10)
	case c.Remote:
		return "remote"
	}
	return "unknown"
}

// openRoutes are the routes any local user may call: encryption-status
// without ?scan (whether a key and a password are set, the cipher, the
// patterns: nothing the mount does not show). Every other route, present
// or future, is for allowed callers only.
var openRoutes = []string{PathStatus}

// connCaller resolves a connection's caller once.
type connCaller struct {
	once    sync.Once
	resolve func() Caller
	caller  Caller
}

func (cc *connCaller) get() Caller {
	cc.once.Do(func() { cc.caller = cc.resolve() })
	return cc.caller
}

type connCallerKey struct{}

// connContext is the http.Server's ConnContext: it only attaches a
// resolver, so the accept loop never waits for a socket-table lookup.
func (s *Server) connContext(ctx context.Context, c net.Conn) context.Context {
	if wc, ok := c.(*wipeConn); ok {
		ctx = context.WithValue(ctx, wipeConnKey{}, wc)
		c = wc.Conn // the kernel's socket, for identify
	}
	return context.WithValue(ctx, connCallerKey{}, &connCaller{resolve: func() Caller { return s.identify(c) }})
}

// callerOf returns the caller of r. A request that did not come through
// Serve (no connection to ask the kernel about) has an unknown caller.
func callerOf(r *http.Request) Caller {
	cc, _ := r.Context().Value(connCallerKey{}).(*connCaller)
	if cc == nil {
		return Caller{Err: errNoConnection}
	}
	return cc.get()
}

var errNoConnection = errors.New("control: request not served from a connection")

// identify asks the kernel who owns the client's end of c.
func identify(c net.Conn) Caller {
	uid, err := peer.UID(c)
	if err == nil {
		return Caller{UID: uid, Known: true}
	}
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok && errors.Is(err, peer.ErrNotFound) && !ta.IP.IsLoopback() {
		return Caller{Remote: true, Err: err}
	}
	return Caller{Err: err}
}

// callerPolicy is who may use the routes that are not open.
type callerPolicy struct {
	uids        []uint32 // root, the daemon's uid, Options.AllowUIDs
	remoteToken bool     // a bearer token admits callers from other hosts
}

func (p callerPolicy) allows(c Caller) bool {
	switch {
	case c.Known:
		return slices.Contains(p.uids, c.UID)
	case c.Remote:
		return p.remoteToken
	}
	return false
}

// checkCaller refuses (403) a caller the policy does not allow, and logs
// the refusal with the caller's uid.
func (s *Server) checkCaller(r *http.Request) error {
	c := callerOf(r)
	if s.callers.allows(c) {
		return nil
	}
	lg := s.reqLog(r)
	if c.Known {
		lg.WithField(fieldUID, c.UID).Info("request refused: this user may not control the key")
		return errForbiddenCaller
	}
	lg.WithField(fieldCaller, c.String()).WithError(c.Err).Info("request refused: the calling user could not be identified")
	return errCallerUnknown
}

// ownerOnly runs the guards of a route that is not open: the caller
// check, then, for a state-changing call, the cross-site check.
func (s *Server) ownerOnly(r *http.Request, mutating bool) error {
	if err := s.checkCaller(r); err != nil {
		return err
	}
	if mutating {
		return s.checkOrigin(r)
	}
	return nil
}

// backoffKey is whose failures a backoff count holds: one count per uid,
// one shared by all callers from other hosts.
type backoffKey struct {
	uid    uint32
	remote bool
}

func keyOf(c Caller) backoffKey { return backoffKey{uid: c.UID, remote: !c.Known} }

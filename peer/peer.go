package peer

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

var (
	// ErrNotFound means no socket on this machine has the address pair
	// that mirrors the connection: the other end is on another host, or
	// its socket is gone.
	ErrNotFound = errors.New("peer: no local socket at the other end")

	// ErrNotHeld means the socket at the other end exists but no process
	// holds it: it was closed and lingers (FIN_WAIT, TIME_WAIT), or the
	// server has not accepted the connection yet. The owner the kernel
	// shows for such a socket (often uid 0) means nothing.
	ErrNotHeld = errors.New("peer: the socket at the other end is held by no process")

	// ErrUnsupported means the connection is neither TCP nor a unix socket.
	ErrUnsupported = errors.New("peer: not a TCP or unix socket connection")
)

// UID returns the uid that owns the socket at the other end of c.
//
// For a unix socket it is SO_PEERCRED's effective uid. For TCP it is the
// owner of the live socket whose local address is c's remote address and
// whose remote address is c's local address; the other end must be on
// this machine and still open (ErrNotFound, ErrNotHeld otherwise).
func UID(c net.Conn) (uint32, error) {
	switch c := c.(type) {
	case *net.UnixConn:
		return unixPeerUID(c)
	case *net.TCPConn:
		local, ok1 := c.LocalAddr().(*net.TCPAddr)
		remote, ok2 := c.RemoteAddr().(*net.TCPAddr)
		if !ok1 || !ok2 {
			return 0, ErrUnsupported
		}
		return TCPOwner(remote.AddrPort(), local.AddrPort())
	}
	return 0, ErrUnsupported
}

func unixPeerUID(c *net.UnixConn) (uint32, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("peer: %w", err)
	}
	var cred *unix.Ucred
	var serr error
	if err := rc.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, fmt.Errorf("peer: %w", err)
	}
	if serr != nil {
		return 0, fmt.Errorf("peer: SO_PEERCRED: %w", serr)
	}
	return cred.Uid, nil
}

// TCPOwner returns the uid owning the live TCP socket on this machine
// whose local address is local and whose remote address is remote. IPv4
// addresses may be given plain or IPv4-mapped (::ffff:a.b.c.d): a socket
// of either family with those addresses is found.
func TCPOwner(local, remote netip.AddrPort) (uint32, error) {
	return tcpLookup()(local, remote)
}

// lookupFunc finds the owner of one TCP socket by its address pair.
type lookupFunc func(local, remote netip.AddrPort) (uint32, error)

// tcpLookup picks the socket-table reader once per process: sock_diag
// netlink when it answers a probe correctly, else /proc/net/tcp{,6}.
// (sock_diag says ENOENT both for "no such socket" and for "no TCP diag
// support here", so only a probe with a socket known to exist tells them
// apart.)
var tcpLookup = sync.OnceValue(func() lookupFunc {
	if probeDiag() == nil {
		return diagLookup
	}
	return procLookup
})

// probeDiag checks that diagLookup finds a connection this process holds.
func probeDiag() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return err
	}
	defer c.Close()
	local := c.LocalAddr().(*net.TCPAddr).AddrPort()
	remote := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	uid, err := diagLookup(local, remote)
	if err != nil {
		return err
	}
	if uid != uint32(unix.Geteuid()) {
		return fmt.Errorf("peer: sock_diag probe: uid %d, want %d", uid, unix.Geteuid())
	}
	return nil
}

// TCP states as the kernel numbers them (include/net/tcp_states.h).
const (
	tcpTimeWait   = 6
	tcpClose      = 7
	tcpListen     = 10
	tcpNewSynRecv = 12
)

// held classifies a socket-table entry: a listener is not the socket
// asked for (an exact lookup falls back to it), and one without an inode
// (a time-wait or request mini-socket, an orphan, a child not yet
// accepted) has no owning process.
func held(state uint8, inode uint64) error {
	switch {
	case state == tcpListen:
		return ErrNotFound
	case inode == 0 || state == tcpTimeWait || state == tcpNewSynRecv || state == tcpClose:
		return ErrNotHeld
	}
	return nil
}

// Dialer opens connections to a local server and hands one back only
// after the kernel says that the process holding the other end runs as a
// trusted uid, so nothing (a password, a bearer token) is ever sent to a
// listener some other user put on the server's address.
type Dialer struct {
	// Trusted reports whether the server may run as uid. Required.
	Trusted func(uid uint32) bool
	// Wait bounds how long to wait for the server to accept the
	// connection (until it does, its socket has no owning process).
	// Zero means 5 s.
	Wait time.Duration
}

// UntrustedError is DialContext's refusal: the server's socket (or, for a
// unix socket, the socket file) belongs to an untrusted uid, or its owner
// could not be found out.
type UntrustedError struct {
	Addr string // the address dialled
	What string // "socket file" or "listener"
	UID  uint32 // the owner, when Err is nil
	Err  error  // why the owner is unknown; nil when UID is the owner
}

func (e *UntrustedError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("cannot tell who owns the %s at %s: %v", e.What, e.Addr, e.Err)
	}
	return fmt.Sprintf("the %s at %s is owned by uid %d, which is not trusted", e.What, e.Addr, e.UID)
}

func (e *UntrustedError) Unwrap() error { return e.Err }

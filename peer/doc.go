// Package peer tells which user is at the other end of a local socket, as
// the kernel records it, so that neither side of mountd's control plane
// has to take a caller's word for who it is.
//
//   - Over a unix socket the answer is SO_PEERCRED: the peer's effective
//     uid when it connected (seen from the server), or when the server
//     called listen (seen from the client).
//   - Over loopback TCP it is the owner of the socket at the other end,
//     found in the kernel's socket table by the connection's address pair:
//     sock_diag netlink (one exact lookup, independent of the table's size)
//     or, where netlink is unavailable, /proc/net/tcp and tcp6.
//
// The daemon uses it to know who sends each request; the client uses
// Dialer to refuse, before it sends a byte, a listener that a user other
// than the one running the daemon has put on the daemon's address.
//
// A socket the kernel lists without an owning process (closed and
// lingering, or not yet accepted) has no trustworthy owner: lookups report
// ErrNotHeld for it rather than the uid 0 the kernel prints there.
//
// What peer must not do: import other mountd packages, log, or guess: when
// the kernel gives no clear answer the result is an error, never a uid.
package peer

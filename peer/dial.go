package peer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
)

// DialContext connects to addr ("tcp": host:port; "unix": a socket path)
// and returns the connection once the server is known to run as a
// trusted uid. Otherwise it closes the connection, having sent nothing,
// and returns an *UntrustedError (or the dial error).
//
// For a unix socket, the socket file must belong to a trusted uid and so
// must the listening process (SO_PEERCRED). For TCP, the socket that
// accepted the connection must belong to a trusted uid; until the server
// accepts, that socket has no owner, so DialContext waits (up to Wait)
// for it to be accepted. A server on another host is never trusted: the
// kernel cannot tell who runs it.
func (d *Dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if d.Trusted == nil {
		panic("peer: Dialer.Trusted is nil")
	}
	if network == "unix" {
		if err := d.checkSocketFile(addr); err != nil {
			return nil, err
		}
	}
	var nd net.Dialer
	c, err := nd.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	uid, err := d.owner(ctx, c)
	if err == nil && d.Trusted(uid) {
		return c, nil
	}
	c.Close()
	if err != nil && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return nil, &UntrustedError{Addr: addr, What: "listener", UID: uid, Err: err}
}

func (d *Dialer) checkSocketFile(path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return err // the dial would fail the same way
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !ok:
		return &UntrustedError{Addr: path, What: "socket file", Err: errors.New("no owner in stat")}
	case fi.Mode().Type() != os.ModeSocket:
		return &UntrustedError{Addr: path, What: "socket file", Err: fmt.Errorf("%s is not a socket", path)}
	case !d.Trusted(st.Uid):
		return &UntrustedError{Addr: path, What: "socket file", UID: st.Uid}
	}
	return nil
}

// owner waits for the server's end of c to have an owner and returns it.
// It polls: the kernel has no notification for "accepted".
func (d *Dialer) owner(ctx context.Context, c net.Conn) (uint32, error) {
	wait := d.Wait
	if wait == 0 {
		wait = 5 * time.Second
	}
	deadline := time.Now().Add(wait)
	pause := time.Millisecond
	for {
		uid, err := UID(c)
		if !errors.Is(err, ErrNotHeld) && !errors.Is(err, ErrNotFound) {
			return uid, err
		}
		// Not accepted yet (or, right after connect, the server's
		// socket not created yet): poll with a growing pause.
		if time.Now().Add(pause).After(deadline) {
			if errors.Is(err, ErrNotHeld) {
				return 0, fmt.Errorf("%w: the server did not accept the connection within %v", err, wait)
			}
			return 0, fmt.Errorf("%w (is the server on another host?)", err)
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, ctx.Err()
		case <-t.C:
		}
		pause = min(2*pause, 50*time.Millisecond)
	}
}

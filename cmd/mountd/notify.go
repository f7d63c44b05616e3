package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/mountd/mountd/control"
)

// notifier speaks the sd_notify(3) protocol to systemd (Type=notify): one
// datagram of newline-separated VAR=value lines to the unix socket named
// by $NOTIFY_SOCKET ("@name" for the abstract namespace). Without that
// variable it does nothing, so the daemon runs the same outside systemd.
type notifier struct {
	mu   sync.Mutex
	conn *net.UnixConn // nil: not under systemd, or the socket failed
}

// envNotifySocket names systemd's notification socket.
const envNotifySocket = "NOTIFY_SOCKET"

// newNotifier connects to $NOTIFY_SOCKET, if set.
func newNotifier() (*notifier, error) {
	path := os.Getenv(envNotifySocket)
	if path == "" {
		return &notifier{}, nil
	}
	if strings.HasPrefix(path, "@") {
		path = "\x00" + path[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return &notifier{}, fmt.Errorf("systemd notification socket %s: %w", os.Getenv(envNotifySocket), err)
	}
	return &notifier{conn: conn}, nil
}

// send sends the lines as one message.
func (n *notifier) send(lines ...string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.conn == nil {
		return nil
	}
	// systemd reads at once; a full queue must not hold up a logout.
	_ = n.conn.SetWriteDeadline(time.Now().Add(time.Second))
	_, err := n.conn.Write([]byte(strings.Join(lines, "\n") + "\n"))
	return err
}

// close closes the socket.
func (n *notifier) close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.conn != nil {
		n.conn.Close()
		n.conn = nil
	}
}

// Status lines: what 'systemctl status mountd' shows.
const (
	statusLocked   = "STATUS=locked: the file encryption key is not set"
	statusUnlocked = "STATUS=unlocked: the file encryption key is set"
)

// notifyingBackend tells systemd when a login through the control plane
// sets the key. Every clearing of the key (a logout, an automatic lock,
// the shutdown) reaches systemd through the Keyring's OnClear instead.
type notifyingBackend struct {
	control.Backend
	n *notifier
}

func (b notifyingBackend) Login(ctx context.Context, password []byte) (control.LoginResult, error) {
	res, err := b.Backend.Login(ctx, password)
	if err == nil {
		_ = b.n.send(statusUnlocked)
	}
	return res, err
}

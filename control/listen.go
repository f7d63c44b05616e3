package control

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// CheckAddr refuses a TCP listen address that is not loopback (a name
// other than localhost, an address such as 0.0.0.0, [::] or a LAN address)
// unless a bearer token is configured: other hosts could then reach the
// control plane, the kernel cannot say which user calls from another host,
// and the token is all that stands between the network and the key.
// Unix sockets and loopback addresses are always accepted.
func CheckAddr(addr string, token bool) error {
	if strings.HasPrefix(addr, "unix:") {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("control: listen address %q: %w", addr, err)
	}
	if strings.EqualFold(host, "localhost") {
		return nil
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.Unmap().IsLoopback() {
		return nil
	}
	if token {
		return nil
	}
	return fmt.Errorf("control: listen address %q is not a loopback address: other hosts could reach the control plane "+
		"and the kernel cannot tell which user calls from another host; listen on 127.0.0.1, [::1] or a unix socket, "+
		"or configure a bearer token (--token-file) to require it of every caller", addr)
}

// Listen opens the control-plane listener for addr: "host:port" for TCP, or
// "unix:/path" for a unix socket of mode 0600. It is ListenMode(addr, 0o600).
func Listen(addr string) (net.Listener, error) { return ListenMode(addr, 0o600) }

// ListenMode opens the control-plane listener for addr; a unix socket gets
// mode perm. 0o666 lets every local user connect and leaves the decision
// to the server's caller check (SO_PEERCRED), which a daemon with
// --allow-uid users needs; the socket's directory must let them in too.
//
// For a unix socket, a stale socket left at path by a dead process (nothing
// accepts on it) is replaced; a live one is an error, and so is a path that
// exists and is not a socket. The socket is bound in a fresh private (0700)
// directory beside path, set to perm, then renamed into place, so it is
// never reachable with looser permissions than perm. Closing the listener removes the
// socket, unless another one has replaced it meanwhile.
func ListenMode(addr string, perm os.FileMode) (net.Listener, error) {
	path, ok := strings.CutPrefix(addr, "unix:")
	if !ok {
		return net.Listen("tcp", addr)
	}
	if path == "" {
		return nil, fmt.Errorf("control: listen %q: empty socket path", addr)
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(filepath.Dir(path), ".mountd-")
	if err != nil {
		return nil, fmt.Errorf("control: listen %q: %w", addr, err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("control: listen %q: %w", addr, err)
	}
	ul.SetUnlinkOnClose(false)
	fail := func(err error) (net.Listener, error) {
		ul.Close()
		return nil, fmt.Errorf("control: listen %q: %w", addr, err)
	}
	if err := os.Chmod(tmp, perm.Perm()); err != nil {
		return fail(err)
	}
	fi, err := os.Lstat(tmp)
	if err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	return &unixListener{UnixListener: ul, path: path, fi: fi}, nil
}

// removeStaleSocket removes path if it is a socket nobody accepts on.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("control: listen unix:%s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("control: listen unix:%s: exists and is not a socket", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("control: listen unix:%s: %w (another process is serving on it)", path, syscall.EADDRINUSE)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("control: listen unix:%s: probing existing socket: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("control: listen unix:%s: removing stale socket: %w", path, err)
	}
	return nil
}

// unixListener removes its socket file on Close if it is still ours.
type unixListener struct {
	*net.UnixListener
	path string
	fi   os.FileInfo
	once sync.Once
}

func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		if fi, e := os.Lstat(l.path); e == nil && os.SameFile(fi, l.fi) {
			os.Remove(l.path)
		}
	})
	return err
}

// Addr reports the final socket path (not the temporary bind path).
func (l *unixListener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

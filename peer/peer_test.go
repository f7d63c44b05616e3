package peer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const stranger = 65534

// lookups are both socket-table readers, so each is tested whichever one
// this machine would pick.
var lookups = map[string]lookupFunc{"sock_diag": diagLookup, "proc": procLookup}

// asUID runs fn on a thread whose filesystem uid is uid: a socket created
// in fn is owned by uid in the kernel's tables (sk_uid is the creator's
// fsuid), which lets one test process hold sockets of several owners.
// It needs CAP_SETUID; without it the test is skipped.
func asUID(t testing.TB, uid int, fn func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (setfsuid) under CI=true")
		}
		t.Skip("needs root to make sockets owned by another uid")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	prev, _ := unix.SetfsuidRetUid(uid)
	defer unix.SetfsuidRetUid(prev)
	if now, _ := unix.SetfsuidRetUid(uid); now != uid {
		t.Fatalf("setfsuid(%d) did not take (fsuid %d)", uid, now)
	}
	fn()
}

func listen(t testing.TB, network, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Skipf("cannot listen on %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

type pair struct {
	client, server net.Conn
	owner          uint32 // of the client socket
}

// connect opens n connections to ln, every other one from a socket owned
// by stranger, and returns both ends of each.
func connect(t testing.TB, ln net.Listener, network, addr string, n int) []pair {
	t.Helper()
	pairs := make([]pair, n)
	for i := range pairs {
		var c net.Conn
		var err error
		owner := uint32(os.Geteuid())
		dial := func() { c, err = net.Dial(network, addr) }
		if i%2 == 1 {
			owner = stranger
			asUID(t, stranger, dial)
		} else {
			dial()
		}
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(); s.Close() })
		pairs[i] = pair{client: c, server: s, owner: owner}
	}
	return pairs
}

func addrs(c net.Conn) (local, remote netip.AddrPort) {
	return c.LocalAddr().(*net.TCPAddr).AddrPort(), c.RemoteAddr().(*net.TCPAddr).AddrPort()
}

// TestTCPOwner: among many connections of two owners, over IPv4, IPv6,
// and IPv4 clients of an IPv6 (dual-stack) listener, each reader finds
// the right owner of each client socket, seen from the server's end as
// the daemon does, and the owner of each accepted socket from the
// client's end.
func TestTCPOwner(t *testing.T) {
	const n = 200
	type setup struct{ lnNet, lnAddr, dialNet string }
	for name, s := range map[string]setup{
		"ipv4":       {"tcp4", "127.0.0.1:0", "tcp4"},
		"ipv6":       {"tcp6", "[::1]:0", "tcp6"},
		"dual-stack": {"tcp", "[::]:0", "tcp4"},
	} {
		t.Run(name, func(t *testing.T) {
			ln := listen(t, s.lnNet, s.lnAddr)
			port := ln.Addr().(*net.TCPAddr).Port
			target := fmt.Sprintf("127.0.0.1:%d", port)
			if s.dialNet == "tcp6" {
				target = fmt.Sprintf("[::1]:%d", port)
			}
			pairs := connect(t, ln, s.dialNet, target, n)
			me := uint32(os.Geteuid())
			for lname, lookup := range lookups {
				for i, p := range pairs {
					if lname == "proc" && i%7 != 0 {
						continue // each read of the table costs milliseconds
					}
					// The daemon's question: who owns the client's socket?
					local, remote := addrs(p.server)
					uid, err := lookup(remote, local)
					if err != nil || uid != p.owner {
						t.Fatalf("%s: client %d (%v): uid %d, %v; want %d", lname, i, remote, uid, err, p.owner)
					}
					// The client's question: who accepted my connection?
					local, remote = addrs(p.client)
					if uid, err := lookup(remote, local); err != nil || uid != me {
						t.Fatalf("%s: server end of %d: uid %d, %v; want %d", lname, i, uid, err, me)
					}
				}
			}
			// UID, whichever reader this machine uses.
			for _, p := range pairs[:4] {
				if uid, err := UID(p.server); err != nil || uid != p.owner {
					t.Fatalf("UID(server end): %d %v, want %d", uid, err, p.owner)
				}
			}
		})
	}
}

// TestIPv4MappedClient: a client socket of family AF_INET6 connected to an
// IPv4 address is listed (in tcp6) with ::ffff: addresses, and is found.
func TestIPv4MappedClient(t *testing.T) {
	ln := listen(t, "tcp", "[::]:0")
	port := ln.Addr().(*net.TCPAddr).Port
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	sa := &unix.SockaddrInet6{Port: port, Addr: netip.MustParseAddr("::ffff:127.0.0.1").As16()}
	if err := unix.Connect(fd, sa); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "client")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	local, remote := addrs(s)
	for lname, lookup := range lookups {
		if uid, err := lookup(remote, local); err != nil || uid != uint32(os.Geteuid()) {
			t.Errorf("%s: %d %v", lname, uid, err)
		}
		// The same socket, asked for with mapped addresses.
		m := func(ap netip.AddrPort) netip.AddrPort {
			return netip.AddrPortFrom(netip.AddrFrom16(ap.Addr().As16()), ap.Port())
		}
		if uid, err := lookup(m(remote), m(local)); err != nil || uid != uint32(os.Geteuid()) {
			t.Errorf("%s, mapped: %d %v", lname, uid, err)
		}
	}
}

// TestNoOwnerIsNoAnswer: a socket nobody holds any more, one not yet
// accepted, and one that never existed give errors, never a uid (the
// kernel lists closed and unaccepted sockets with uid 0).
func TestNoOwnerIsNoAnswer(t *testing.T) {
	for lname, lookup := range lookups {
		t.Run(lname, func(t *testing.T) {
			ln := listen(t, "tcp4", "127.0.0.1:0")
			c, err := net.Dial("tcp4", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			// Not accepted yet: the server's end has no owner.
			local, remote := addrs(c)
			waitErr(t, func() error { _, err := lookup(remote, local); return err }, ErrNotHeld)

			s, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			local, remote = addrs(s)
			if _, err := lookup(remote, local); err != nil {
				t.Fatal(err)
			}
			// The client closes: its socket lingers in FIN_WAIT2 with no
			// process, and later TIME_WAIT; either way no uid.
			c.Close()
			s.Close() // the client's socket goes to TIME_WAIT
			if uid, err := lookup(remote, local); err == nil {
				t.Fatalf("closed client socket: uid %d", uid)
			}
			// A pair that never existed.
			ghost := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), 1)
			if _, err := lookup(ghost, local); !errors.Is(err, ErrNotFound) {
				t.Fatalf("no such socket: %v", err)
			}
			// A pair that names the listener's own port: an exact lookup
			// must not answer with the listener.
			lp := ln.Addr().(*net.TCPAddr).AddrPort()
			if uid, err := lookup(lp, ghost); !errors.Is(err, ErrNotFound) {
				t.Fatalf("listener returned for a connection: uid %d, %v", uid, err)
			}
		})
	}
}

// waitErr polls fn until it returns want (the kernel processes a loopback
// handshake asynchronously, so right after connect the server's socket
// may not be listed yet).
func waitErr(t *testing.T, fn func() error, want error) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := fn()
		if errors.Is(err, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("got %v, want %v", err, want)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestProcSearch(t *testing.T) {
	const hdr = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
	line := func(sl int, local, remote string, st, uid, inode int) string {
		return fmt.Sprintf("%4d: %s %s %02X 00000000:00000000 00:00000000 00000000 %5d        0 %d 1 0000000000000000 20 4 30 10 -1\n",
			sl, local, remote, st, uid, inode)
	}
	l := procAddr(netip.MustParseAddr("127.0.0.1"), 40000)
	r := procAddr(netip.MustParseAddr("127.0.0.1"), 8080)
	other := procAddr(netip.MustParseAddr("127.0.0.1"), 40001)
	for name, tc := range map[string]struct {
		table string
		uid   uint32
		err   error
	}{
		"found":       {hdr + line(0, r, "00000000:0000", tcpListen, 0, 1) + line(1, other, r, 1, 7, 2) + line(2, l, r, 1, 1000, 3), 1000, nil},
		"absent":      {hdr + line(0, other, r, 1, 1000, 3), 0, ErrNotFound},
		"reversed":    {hdr + line(0, r, l, 1, 1000, 3), 0, ErrNotFound},
		"time-wait":   {hdr + line(0, l, r, tcpTimeWait, 0, 0), 0, ErrNotHeld},
		"orphan":      {hdr + line(0, l, r, 5, 0, 0), 0, ErrNotHeld},
		"tw and live": {hdr + line(0, l, r, tcpTimeWait, 0, 0) + line(1, l, r, 1, 1000, 9), 1000, nil},
		"last line":   {hdr + strings.TrimSuffix(line(0, l, r, 1, 42, 9), "\n"), 42, nil},
	} {
		uid, err := procSearch([]byte(tc.table), l, r)
		if uid != tc.uid || !errors.Is(err, tc.err) {
			t.Errorf("%s: %d %v, want %d %v", name, uid, err, tc.uid, tc.err)
		}
	}
	if _, err := procSearch([]byte(hdr+line(0, l, r, 1, 1, 9)+line(1, l, r, 1, 2, 10)), l, r); err == nil {
		t.Error("two owners for one pair accepted")
	}
	if _, err := procSearch([]byte(hdr+" 0: "+l+" "+r+" 01 garbage\n"), l, r); err == nil || errors.Is(err, ErrNotFound) {
		t.Errorf("malformed line: %v", err)
	}
	if got := procAddr(netip.MustParseAddr("127.0.0.1"), 8080); got != "0100007F:1F90" {
		// x86 and arm64 are little-endian; this is what /proc prints there.
		t.Errorf("procAddr(127.0.0.1:8080) = %s", got)
	}
}

func TestUnixUID(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	ln := listen(t, "unix", path)
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, conn := range []net.Conn{c, s} {
		if uid, err := UID(conn); err != nil || uid != uint32(os.Geteuid()) {
			t.Fatalf("UID: %d %v", uid, err)
		}
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, err := UID(a); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("pipe: %v", err)
	}
}

// TestDialer: a listener owned by an untrusted uid gets a connection
// refused before anything is sent; a trusted one gets it.
func TestDialer(t *testing.T) {
	me := uint32(os.Geteuid())
	trustMe := &Dialer{Trusted: func(uid uint32) bool { return uid == me }}

	// The kernel reports the owner of the accepted socket: the process
	// that called accept (and would read what is sent).
	var ln net.Listener
	asUID(t, stranger, func() { ln = listen(t, "tcp4", "127.0.0.1:0") })
	got := make(chan int, 1)
	go func() {
		var s net.Conn
		var err error
		asUID(t, stranger, func() { s, err = ln.Accept() })
		if err != nil {
			got <- -1
			return
		}
		defer s.Close()
		s.SetReadDeadline(time.Now().Add(10 * time.Second))
		var buf [1]byte
		n, _ := s.Read(buf[:])
		got <- n
	}()
	_, err := trustMe.DialContext(context.Background(), "tcp", ln.Addr().String())
	var ue *UntrustedError
	if !errors.As(err, &ue) || ue.Err != nil || ue.UID != stranger {
		t.Fatalf("dial to a stranger's listener: %v", err)
	}
	if n := <-got; n != 0 {
		t.Fatalf("the stranger's listener received %d bytes", n)
	}

	ok := listen(t, "tcp4", "127.0.0.1:0")
	acceptAndHold(t, ok)
	c, err := trustMe.DialContext(context.Background(), "tcp", ok.Addr().String())
	if err != nil {
		t.Fatalf("dial to my own listener: %v", err)
	}
	c.Close()

	// A listener that never accepts is never trusted.
	idle := listen(t, "tcp4", "127.0.0.1:0")
	short := &Dialer{Trusted: trustMe.Trusted, Wait: 200 * time.Millisecond}
	if _, err := short.DialContext(context.Background(), "tcp", idle.Addr().String()); !errors.As(err, &ue) || !errors.Is(err, ErrNotHeld) {
		t.Fatalf("listener that never accepts: %v", err)
	}

	// Unix: the socket file's owner counts.
	dir := t.TempDir()
	path := filepath.Join(dir, "s")
	uln := listen(t, "unix", path)
	acceptAndHold(t, uln)
	if c, err := trustMe.DialContext(context.Background(), "unix", path); err != nil {
		t.Fatalf("unix, mine: %v", err)
	} else {
		c.Close()
	}
	if err := os.Lchown(path, stranger, stranger); err != nil {
		t.Fatal(err)
	}
	if _, err := trustMe.DialContext(context.Background(), "unix", path); !errors.As(err, &ue) || ue.What != "socket file" || ue.UID != stranger {
		t.Fatalf("unix socket file owned by a stranger: %v", err)
	}
	notSock := filepath.Join(dir, "f")
	os.WriteFile(notSock, nil, 0o600)
	if _, err := trustMe.DialContext(context.Background(), "unix", notSock); !errors.As(err, &ue) {
		t.Fatalf("regular file: %v", err)
	}
}

// acceptAndHold accepts connections on ln and keeps them open until the
// test ends.
func acceptAndHold(t *testing.T, ln net.Listener) {
	held := make(chan net.Conn, 16)
	t.Cleanup(func() {
		ln.Close()
		for c := range held {
			c.Close()
		}
	})
	go func() {
		defer close(held)
		for {
			s, err := ln.Accept()
			if err != nil {
				return
			}
			held <- s
		}
	}()
}

// BenchmarkTCPOwner measures one lookup with many other sockets open (the
// cost /proc/net/tcp grows with; sock_diag's exact lookup does not).
func BenchmarkTCPOwner(b *testing.B) {
	for _, n := range []int{10, 1000, 5000} {
		ln := listen(b, "tcp4", "127.0.0.1:0")
		var conns []net.Conn
		for range n {
			c, err := net.Dial("tcp4", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			s, err := ln.Accept()
			if err != nil {
				b.Fatal(err)
			}
			conns = append(conns, c, s)
		}
		local, remote := addrs(conns[len(conns)-1])
		for lname, lookup := range lookups {
			b.Run(fmt.Sprintf("%s/conns=%d", lname, n), func(b *testing.B) {
				for b.Loop() {
					if _, err := lookup(remote, local); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
		for _, c := range conns {
			c.Close()
		}
		ln.Close()
	}
}

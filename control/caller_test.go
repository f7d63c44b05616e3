package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/task"
)

const strangerUID = 65534

var (
	stranger    = Caller{UID: strangerUID, Known: true}
	nobodyKnows = Caller{Err: errors.New("test: no socket")}
)

// spyBackend records every Backend call by name.
type spyBackend struct {
	*fakeBackend
	mu    sync.Mutex
	calls []string
}

func (b *spyBackend) record(name string) {
	b.mu.Lock()
	b.calls = append(b.calls, name)
	b.mu.Unlock()
}

func (b *spyBackend) called() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.calls...)
}

func (b *spyBackend) Login(ctx context.Context, pw []byte) (LoginResult, error) {
	b.record("Login")
	return b.fakeBackend.Login(ctx, pw)
}
func (b *spyBackend) Logout(ctx context.Context) error {
	b.record("Logout")
	return b.fakeBackend.Logout(ctx)
}
func (b *spyBackend) ChangePassword(ctx context.Context, o, n []byte) error {
	b.record("ChangePassword")
	return b.fakeBackend.ChangePassword(ctx, o, n)
}
func (b *spyBackend) Status(ctx context.Context, scan bool) (Status, error) {
	b.record(fmt.Sprintf("Status(scan=%v)", scan))
	return b.fakeBackend.Status(ctx, scan)
}
func (b *spyBackend) StartEncryptExisting(ctx context.Context) (task.Record, bool, error) {
	b.record("StartEncryptExisting")
	return b.fakeBackend.StartEncryptExisting(ctx)
}
func (b *spyBackend) Task(id string) (task.Record, bool) {
	b.record("Task")
	return b.fakeBackend.Task(id)
}
func (b *spyBackend) Tasks() []task.Record { b.record("Tasks"); return b.fakeBackend.Tasks() }
func (b *spyBackend) CancelTask(id string) (task.Record, error) {
	b.record("CancelTask")
	return b.fakeBackend.CancelTask(id)
}

// everyOwnerRoute returns one well-formed request per route and method
// that is not open, built from the route table, so a route added later is
// covered too; and a status request with ?scan=true.
func everyOwnerRoute(s *Server) []*http.Request {
	var rs []*http.Request
	for _, rt := range s.routes {
		if slices.Contains(openRoutes, rt.path) {
			continue
		}
		path := strings.ReplaceAll(rt.path, ":id", "t1")
		for _, m := range rt.methods {
			switch rt.path {
			case PathLogin:
				rs = append(rs, jsonReq(m, path, `{"password":"pw"}`))
			case PathChangePassword:
				rs = append(rs, jsonReq(m, path, `{"old_password":"pw","new_password":"new"}`))
			default:
				rs = append(rs, req(m, path, ""))
			}
		}
	}
	return append(rs, req("GET", PathStatus+"?scan=true", ""))
}

// TestOtherUsersRefused: a user who is not root, the daemon's user or an
// allowed one gets 403 on every route but plain encryption-status, and the
// backend is never asked anything else; the refusal is logged with the uid.
// A caller whose uid could not be found is treated the same (fail closed).
func TestOtherUsersRefused(t *testing.T) {
	for _, who := range []Caller{stranger, nobodyKnows} {
		t.Run(who.String(), func(t *testing.T) {
			spy := &spyBackend{fakeBackend: newFake()}
			s := newTestServer(t, Options{Backend: spy})
			spy.password, spy.keySet = []byte("pw"), true // logged in
			spy.tasks["t1"] = task.Record{ID: "t1", Kind: task.KindEncryptExisting, State: task.Running, StartedAt: fakeStart}
			n := 0
			for _, r := range everyOwnerRoute(s.Server) {
				n++
				res := do(t, s, as(who, r))
				if res.status != 403 || res.code() != CodeForbidden {
					t.Errorf("%s %s: %d %s", r.Method, r.URL, res.status, res.body)
				}
			}
			if n < 10 {
				t.Fatalf("only %d requests: route table not covered", n)
			}
			if c := spy.called(); len(c) != 0 {
				t.Fatalf("refused requests reached the backend: %v", c)
			}
			if !spy.keySet || string(spy.password) != "pw" || spy.tasks["t1"].State != task.Running {
				t.Fatal("a refused request changed the state")
			}
			// The open route answers, without the owner's task.
			spy.running = "t1"
			if res := do(t, s, as(who, req("GET", PathStatus, ""))); res.status != 200 || res.env["key_set"] != true ||
				res.env["task"] != nil {
				t.Fatalf("status: %d %s", res.status, res.body)
			}
			if res := do(t, s, req("GET", PathStatus, "")); res.env["task"] == nil {
				t.Fatalf("owner's status lacks the task: %s", res.body)
			}
			// Logged, with the uid when there is one.
			logged := 0
			for _, e := range s.hook.AllEntries() {
				if !strings.HasPrefix(e.Message, "request refused: ") {
					continue
				}
				logged++
				if who.Known && e.Data[fieldUID] != uint32(strangerUID) {
					t.Errorf("refusal logged without the uid: %v", e.Data)
				}
				if !who.Known && (e.Data[fieldCaller] != "unknown" || e.Data[logrus.ErrorKey] == nil) {
					t.Errorf("unknown caller's refusal: %v", e.Data)
				}
			}
			if logged != n {
				t.Errorf("%d refusals logged, want %d", logged, n)
			}
		})
	}
}

// TestFirstPasswordOnlyByAllowedCaller: with no password yet, another
// user's login creates nothing; the owner's first login creates it.
func TestFirstPasswordOnlyByAllowedCaller(t *testing.T) {
	s := newTestServer(t, Options{})
	if res := do(t, s, as(stranger, jsonReq("POST", PathLogin, `{"password":"mine now"}`))); res.status != 403 {
		t.Fatalf("stranger's first login: %d %s", res.status, res.body)
	}
	if s.fake.password != nil || s.fake.kdfCalls.Load() != 0 {
		t.Fatal("a stranger's login created a password")
	}
	res := do(t, s, jsonReq("POST", PathLogin, `{"password":"owner's"}`))
	if res.status != 200 || res.env["created"] != true {
		t.Fatalf("owner's first login: %d %s", res.status, res.body)
	}
}

// TestAllowUIDs: a user given in AllowUIDs does what the owner does, and
// gets the seed's logout reply byte for byte.
func TestAllowUIDs(t *testing.T) {
	friend := Caller{UID: 4242, Known: true}
	s := newTestServer(t, Options{AllowUIDs: []uint32{4242}})
	if res := do(t, s, as(friend, jsonReq("POST", PathLogin, `{"password":"pw"}`))); res.status != 200 {
		t.Fatalf("allowed user's login: %d %s", res.status, res.body)
	}
	res := do(t, s, as(friend, req("GET", PathLogout, "")))
	if res.status != 200 || string(res.body) != `{"command":"logout","success":true,"message":"File encryption key cleared","key_set":false}` {
		t.Fatalf("allowed user's logout: %d %s", res.status, res.body)
	}
	if res := do(t, s, as(Caller{UID: 4243, Known: true}, req("GET", PathLogout, ""))); res.status != 403 {
		t.Fatalf("uid 4243 not allowed: %d", res.status)
	}
	if res := do(t, s, as(Caller{UID: 0, Known: true}, req("GET", PathLogout, ""))); res.status != 200 {
		t.Fatalf("root: %d", res.status)
	}
}

// TestRemoteCallers: a caller from another host (no local uid) is let in
// only by a server that requires a bearer token.
func TestRemoteCallers(t *testing.T) {
	remote := Caller{Remote: true, Err: errors.New("not local")}
	s := newTestServer(t, Options{})
	if res := do(t, s, as(remote, req("GET", PathLogout, ""))); res.status != 403 {
		t.Fatalf("remote without a token: %d", res.status)
	}
	s = newTestServer(t, Options{Token: []byte("0123456789abcdef")})
	if res := do(t, s, as(remote, req("GET", PathLogout, ""))); res.status != 401 {
		t.Fatalf("remote without the token: %d", res.status)
	}
	if res := do(t, s, as(remote, req("GET", PathLogout, "", "Authorization", "Bearer 0123456789abcdef"))); res.status != 200 {
		t.Fatalf("remote with the token: %d %s", res.status, res.body)
	}
}

// TestBackoffPerCaller: the exact count of docs/API.md (four failures
// free, the fifth locks for 1 s, so a sixth attempt at once is 429), kept
// per caller: one allowed user's failures never lock out another, and
// other users' refused attempts count for nobody.
func TestBackoffPerCaller(t *testing.T) {
	friend := Caller{UID: 4242, Known: true}
	s := newTestServer(t, Options{AllowUIDs: []uint32{4242}})
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	s.backoff.now = clk.Now
	s.fake.password = []byte("right")
	login := func(c Caller, pw string) result {
		return do(t, s, as(c, jsonReq("POST", PathLogin, `{"password":"`+pw+`"}`)))
	}
	for range 100 {
		if res := login(stranger, "guess"); res.status != 403 {
			t.Fatalf("stranger: %d", res.status)
		}
	}
	for i := range 5 {
		if res := login(friend, "wrong"); res.status != 401 {
			t.Fatalf("friend's failure %d: %d %s", i+1, res.status, res.body)
		}
	}
	if res := login(friend, "right"); res.status != 429 || res.header.Get("Retry-After") != "1" {
		t.Fatalf("friend's 6th attempt: %d %q", res.status, res.header.Get("Retry-After"))
	}
	// The owner is not locked out by the friend, and has a count of its own.
	if res := login(owner, "right"); res.status != 200 {
		t.Fatalf("owner while the friend is locked: %d %s", res.status, res.body)
	}
	for i := range 4 {
		if res := login(owner, "wrong"); res.status != 401 {
			t.Fatalf("owner's failure %d: %d", i+1, res.status)
		}
	}
	if res := login(owner, "right"); res.status != 200 {
		t.Fatalf("owner after four failures: %d (four are free)", res.status)
	}
	// The friend is still locked; a second later it may try again.
	if res := login(friend, "right"); res.status != 429 {
		t.Fatalf("friend: %d", res.status)
	}
	clk.Advance(time.Second)
	if res := login(friend, "right"); res.status != 200 {
		t.Fatalf("friend after the lock: %d", res.status)
	}
}

// TestScanGuarded: ?scan=true walks the whole tree, so it is refused from
// another site and from other users, like a state-changing call.
func TestScanGuarded(t *testing.T) {
	s := newTestServer(t, Options{})
	for _, hdr := range [][]string{
		{"Origin", "http://evil.example"},
		{"Sec-Fetch-Site", "cross-site"},
		{"Referer", "http://evil.example/"},
	} {
		if res := do(t, s, req("GET", PathStatus+"?scan=true", "", hdr...)); res.status != 403 || res.code() != CodeForbidden {
			t.Errorf("scan with %v: %d %s", hdr, res.status, res.body)
		}
		if res := do(t, s, req("GET", PathStatus, "", hdr...)); res.status != 200 {
			t.Errorf("status without scan, %v: %d", hdr, res.status)
		}
	}
	if res := do(t, s, req("GET", PathStatus+"?scan=true", "", "Sec-Fetch-Site", "same-origin")); res.status != 200 || res.env["files"] == nil {
		t.Fatalf("own scan: %d %s", res.status, res.body)
	}
}

func TestNoConnectionNoCaller(t *testing.T) {
	s := newTestServer(t, Options{})
	r := req("GET", PathLogout, "")
	r = r.WithContext(context.Background()) // no connection behind it
	if res := do(t, s, r); res.status != 403 || s.fake.logouts.Load() != 0 {
		t.Fatalf("request without a connection: %d", res.status)
	}
}

func TestCheckAddr(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:8080": true, "127.1.2.3:1": true, "[::1]:8080": true, "localhost:8080": true,
		"LocalHost:1": true, "[::ffff:127.0.0.1]:80": true, "unix:/run/x": true,
		"0.0.0.0:8080": false, "[::]:8080": false, "192.168.1.5:8080": false, ":8080": false,
		"example.com:8080": false, "localhost.localdomain:1": false,
	} {
		if err := CheckAddr(addr, false); (err == nil) != want {
			t.Errorf("CheckAddr(%q): %v", addr, err)
		} else if err != nil && !strings.Contains(err.Error(), "--token-file") {
			t.Errorf("CheckAddr(%q): the error does not say what to do: %v", addr, err)
		}
		if err := CheckAddr(addr, true); err != nil {
			t.Errorf("CheckAddr(%q) with a token: %v", addr, err)
		}
	}
	if _, err := New(Options{Backend: newFake(), Addr: "0.0.0.0:8080"}); err == nil {
		t.Error("New accepted a non-loopback address without a token")
	}
	if _, err := New(Options{Backend: newFake(), Addr: "0.0.0.0:8080", Token: []byte("0123456789abcdef")}); err != nil {
		t.Errorf("New with a token: %v", err)
	}
}

// asStranger runs fn on a thread whose filesystem uid is strangerUID, so a
// socket fn creates is owned by that user in the kernel's tables.
func asStranger(t *testing.T, fn func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (setfsuid) under CI=true")
		}
		t.Skip("needs root to make sockets owned by another uid")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	prev, _ := unix.SetfsuidRetUid(strangerUID)
	defer unix.SetfsuidRetUid(prev)
	fn()
}

// TestServeIdentifiesCallers: over real TCP and unix connections, Serve
// asks the kernel who calls: this process's own sockets are allowed, a
// socket owned by another uid (made with setfsuid) is refused with 403,
// and the caller is looked up once per connection, not per request.
func TestServeIdentifiesCallers(t *testing.T) {
	for _, network := range []string{"tcp4", "tcp6", "unix"} {
		t.Run(network, func(t *testing.T) {
			var ln net.Listener
			var err error
			addr := ""
			switch network {
			case "tcp4":
				ln, err = Listen("127.0.0.1:0")
			case "tcp6":
				ln, err = Listen("[::1]:0")
			case "unix":
				addr = "unix:" + filepath.Join(t.TempDir(), "ctl.sock")
				ln, err = ListenMode(addr, 0o666)
			}
			if err != nil {
				t.Skipf("listen: %v", err)
			}
			if addr == "" {
				addr = ln.Addr().String()
			} else if fi, err := os.Stat(strings.TrimPrefix(addr, "unix:")); err != nil || fi.Mode().Perm() != 0o666 {
				t.Fatalf("ListenMode 0666: %v %v", fi.Mode(), err)
			}
			s := newTestServer(t, Options{Addr: addr})
			var lookups atomic.Int32
			s.identify = func(c net.Conn) Caller { lookups.Add(1); return identify(c) }
			serve(t, s.Server, ln)

			dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
				if network == "unix" {
					return (&net.Dialer{}).DialContext(ctx, "unix", strings.TrimPrefix(addr, "unix:"))
				}
				return (&net.Dialer{}).DialContext(ctx, network, addr)
			}
			mine := &http.Client{Transport: &http.Transport{DialContext: dial}}
			defer mine.CloseIdleConnections()
			host := addr
			if network == "unix" {
				host = "localhost"
			}
			call := func(c *http.Client, method, path string) int {
				r, _ := http.NewRequest(method, "http://"+host+path, nil)
				resp, err := c.Do(r)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				return resp.StatusCode
			}
			for range 3 {
				if st := call(mine, "POST", PathLogout); st != 200 {
					t.Fatalf("own logout: %d", st)
				}
			}
			if n := lookups.Load(); n != 1 {
				t.Errorf("%d lookups for one keep-alive connection", n)
			}
			if network == "unix" {
				// SO_PEERCRED gives the effective uid, which setfsuid does
				// not change; the integration test drops privileges for it.
				return
			}
			theirs := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, n, a string) (c net.Conn, err error) {
				asStranger(t, func() { c, err = dial(ctx, n, a) })
				return c, err
			}}}
			defer theirs.CloseIdleConnections()
			if st := call(theirs, "POST", PathLogout); st != 403 {
				t.Fatalf("stranger's logout: %d", st)
			}
			if st := call(theirs, "GET", PathStatus); st != 200 {
				t.Fatalf("stranger's status: %d", st)
			}
			if got := s.fake.logouts.Load(); got != 3 {
				t.Fatalf("%d logouts, want the owner's 3", got)
			}
		})
	}
}

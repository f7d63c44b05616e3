package control

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
)

const testAddr = "127.0.0.1:8080"

type testServer struct {
	*Server
	fake *fakeBackend
	hook *logtest.Hook
}

// newTestServer returns a Server on a fake backend, logging everything
// (Debug included) into a test hook. allowWarn lists the Warn messages the
// test expects; any other Warn or worse fails the test at cleanup.
func newTestServer(t *testing.T, opts Options, allowWarn ...string) *testServer {
	t.Helper()
	lg, hook := logtest.NewNullLogger()
	lg.SetLevel(logrus.TraceLevel)
	fake := newFake()
	if opts.Backend == nil {
		opts.Backend = fake
	}
	if opts.Addr == "" {
		opts.Addr = testAddr
	}
	opts.Log = logrus.NewEntry(lg)
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, e := range hook.AllEntries() {
			if e.Level > logrus.WarnLevel {
				continue
			}
			allowed := false
			for _, w := range allowWarn {
				allowed = allowed || strings.Contains(e.Message, w)
			}
			if !allowed {
				t.Errorf("unexpected %s log: %q %v", e.Level, e.Message, e.Data)
			}
		}
	})
	return &testServer{Server: s, fake: fake, hook: hook}
}

// owner is the caller test requests come from unless a test says
// otherwise: the daemon's own user.
var owner = Caller{UID: uint32(os.Geteuid()), Known: true}

// as makes r come from caller c, as if Serve had identified its
// connection.
func as(c Caller, r *http.Request) *http.Request {
	return r.WithContext(context.WithValue(r.Context(), connCallerKey{}, &connCaller{resolve: func() Caller { return c }}))
}

// req builds a request from the loopback Host, from the owner. hdr is
// name, value pairs.
func req(method, target, body string, hdr ...string) *http.Request {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	r := httptest.NewRequest(method, target, rd)
	r.Host = testAddr
	r.RemoteAddr = "127.0.0.1:50000"
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			r.Host = hdr[i+1]
			continue
		}
		r.Header.Add(hdr[i], hdr[i+1])
	}
	return as(owner, r)
}

func jsonReq(method, target, body string, hdr ...string) *http.Request {
	return req(method, target, body, append([]string{"Content-Type", "application/json"}, hdr...)...)
}

type result struct {
	status int
	header http.Header
	body   []byte
	env    map[string]any
}

func (r result) code() string { s, _ := r.env["error"].(string); return s }

// do runs r and checks what every response must satisfy: a JSON object
// body with command, success and message, Content-Type application/json,
// an error code exactly when it failed, and no CORS header.
func do(t testing.TB, h http.Handler, r *http.Request) result {
	t.Helper()
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	res := result{status: w.Code, header: w.Header(), body: w.Body.Bytes()}
	checkEnvelope(t, r.Method+" "+r.URL.Path, &res)
	return res
}

func checkEnvelope(t testing.TB, what string, res *result) {
	t.Helper()
	if ct := res.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: Content-Type %q", what, ct)
	}
	for k := range res.header {
		if strings.HasPrefix(strings.ToLower(k), "access-control-") {
			t.Errorf("%s: CORS header %s sent", what, k)
		}
	}
	if err := json.Unmarshal(res.body, &res.env); err != nil {
		t.Fatalf("%s: body is not a JSON object: %v: %q", what, err, res.body)
	}
	cmd, _ := res.env["command"].(string)
	succ, okS := res.env["success"].(bool)
	_, okM := res.env["message"].(string)
	if cmd == "" || !okS || !okM {
		t.Errorf("%s: envelope incomplete: %s", what, res.body)
	}
	_, hasErr := res.env["error"].(string)
	if succ == (res.status >= 400) || hasErr != (res.status >= 400) {
		t.Errorf("%s: status %d but success=%v error present=%v: %s", what, res.status, succ, hasErr, res.body)
	}
}

// fakeClock is a settable clock for the backoff.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func allZero(b []byte) bool { return len(bytes.Trim(b, "\x00")) == 0 }

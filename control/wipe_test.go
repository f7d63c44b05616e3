package control

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// spyListener hands out spyConns, which see every buffer the server reads
// a connection into (the wipeConn Serve adds reads through them).
type spyListener struct {
	net.Listener
	mu    sync.Mutex
	conns []*spyConn
}

func (l *spyListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	sc := &spyConn{Conn: c}
	l.mu.Lock()
	l.conns = append(l.conns, sc)
	l.mu.Unlock()
	return sc, nil
}

type spyConn struct {
	net.Conn
	mu    sync.Mutex
	bufs  [][]byte
	bytes bytes.Buffer // everything read, for the control
}

func (c *spyConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.bufs = append(c.bufs, p[:n])
	c.bytes.Write(p[:n])
	c.mu.Unlock()
	return n, err
}

// holding reports whether a buffer the connection was read into still
// holds s.
func (c *spyConn) holding(s string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, b := range c.bufs {
		if bytes.Contains(b, []byte(s)) {
			return true
		}
	}
	return false
}

func (c *spyConn) saw(s string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Contains(c.bytes.Bytes(), []byte(s))
}

// TestPasswordWipedFromConnection sends password requests over a raw
// keep-alive TCP connection and checks that, once the reply is in, no
// buffer the server read the connection into still holds the password,
// and that the reply closes the connection. A status request on its own
// connection is the control: its bytes stay where they were read.
func TestPasswordWipedFromConnection(t *testing.T) {
	raw, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &spyListener{Listener: raw}
	addr := raw.Addr().String()
	s := newTestServer(t, Options{Addr: addr})
	s.identify = func(net.Conn) Caller { return owner }
	serve(t, s.Server, ln)

	send := func(req string) (*http.Response, *spyConn) {
		t.Helper()
		ln.mu.Lock()
		n := len(ln.conns)
		ln.mu.Unlock()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		ln.mu.Lock()
		defer ln.mu.Unlock()
		if len(ln.conns) != n+1 {
			t.Fatalf("%d connections accepted, want %d", len(ln.conns), n+1)
		}
		return resp, ln.conns[n]
	}
	post := func(path, body string, hdr ...string) string {
		return fmt.Sprintf("POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s",
			path, addr, len(body), strings.Join(hdr, ""), body)
	}

	resp, ctl := send("GET " + PathStatus + " HTTP/1.1\r\nHost: " + addr + "\r\nX-Marker: status-marker-1234\r\n\r\n")
	if resp.StatusCode != 200 || resp.Close {
		t.Fatalf("status: %d, close %v", resp.StatusCode, resp.Close)
	}
	if !ctl.holding("status-marker-1234") {
		t.Fatal("control: the status request is not in the buffers it was read into; the test sees nothing")
	}

	const pw = "wipe-me-pa55word-9f3c"
	cases := []struct {
		name, req string
		status    int
	}{
		{"login", post(PathLogin, `{"password":"`+pw+`"}`), 200},
		{"duplicated key", post(PathLogin, `{"password":"`+pw+`","password":"`+pw+`"}`), 200},
		{"change password", post(PathChangePassword, `{"old_password":"`+pw+`","new_password":"`+pw+`"}`), 200},
		{"chunked body", fmt.Sprintf("POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n",
			PathLogin, addr, len(`{"password":"`+pw+`"}`), `{"password":"`+pw+`"}`), 200},
		{"wrong content type (body never read)", strings.Replace(post(PathLogin, `{"password":"`+pw+`"}`), "application/json", "text/plain", 1), 415},
		{"unknown field", post(PathLogin, `{"password":"`+pw+`","x":"y"}`), 400},
		{"pipelined", post(PathLogin, `{"password":"`+pw+`"}`) + "GET " + PathStatus + " HTTP/1.1\r\nHost: " + addr + "\r\n\r\n", 200},
		// Larger than net/http's buffer: read straight into the handler's
		// buffer, decoded before it is wiped (a wrong password: 401, not a
		// zeroed body's 400).
		{"long body", post(PathLogin, `{"password":"`+pw+strings.Repeat("x", 10000)+`"}`), 401},
	}
	for _, c := range cases {
		resp, sc := send(c.req)
		if resp.StatusCode != c.status {
			t.Errorf("%s: status %d, want %d", c.name, resp.StatusCode, c.status)
		}
		if !sc.saw(pw) {
			t.Fatalf("%s: the server never read the password", c.name)
		}
		if sc.holding(pw) {
			t.Errorf("%s: the password is still in a buffer the connection was read into", c.name)
		}
		if !resp.Close {
			t.Errorf("%s: the reply does not close the connection", c.name)
		}
	}
}

// spySecret records every value a secret field decodes to.
type spySecret struct {
	secret
	seen *[][]byte
}

func (s *spySecret) UnmarshalJSON(b []byte) error {
	err := s.secret.UnmarshalJSON(b)
	*s.seen = append(*s.seen, s.secret)
	return err
}

// TestDuplicatedKeyWiped: a body that gives "password" twice decodes to
// the last value, and the first decoded copy is zeroed.
func TestDuplicatedKeyWiped(t *testing.T) {
	var seen [][]byte
	dst := struct {
		Password spySecret `json:"password"`
	}{Password: spySecret{seen: &seen}}
	if err := decodeObject([]byte(`{"password":"first-secret","password":"second"}`), &dst, "password"); err != nil {
		t.Fatal(err)
	}
	if len(seen) != 2 {
		t.Fatalf("decoded %d times", len(seen))
	}
	if !allZero(seen[0]) {
		t.Fatalf("the first value is left: %q", seen[0])
	}
	if string(dst.Password.secret) != "second" {
		t.Fatalf("decoded %q", dst.Password.secret)
	}
	dst.Password.wipe()
}

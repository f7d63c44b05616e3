package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// TestJSONObject: jsonObject's output, of exactly the size it computed,
// decodes with encoding/json to the values given (valid UTF-8, control
// characters, quotes and backslashes included).
func TestJSONObject(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	alphabet := []rune{'a', 'Z', '0', ' ', '"', '\\', '\n', '\t', 0, 0x1f, 'é', '€', '😀', '/'}
	for i := 0; i < 500; i++ {
		var a, b []byte
		for n := r.IntN(40); n > 0; n-- {
			a = utf8.AppendRune(a, alphabet[r.IntN(len(alphabet))])
		}
		for n := r.IntN(40); n > 0; n-- {
			b = utf8.AppendRune(b, alphabet[r.IntN(len(alphabet))])
		}
		out := jsonObject("password", a, "new_password", b)
		var got map[string]string
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("%q: %v", out, err)
		}
		if got["password"] != string(a) || got["new_password"] != string(b) || len(got) != 2 {
			t.Fatalf("%q decoded to %q", out, got)
		}
	}
}

// TestCallSecret: a password request is written whole on a connection of
// its own, as valid HTTP/1.1 that closes the connection, with the token,
// and the body handed in is zeroed.
func TestCallSecret(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan *http.Request, 1)
	bodies := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			t.Error(err)
			return
		}
		b, _ := io.ReadAll(req.Body)
		got <- req
		bodies <- b
		const reply = `{"command":"login","success":true,"message":"Key set"}`
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: "+
			strconv.Itoa(len(reply))+"\r\n\r\n"+reply)
	}()
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte("tok-123\n"), 0o600)
	c, err := newClient(ln.Addr().String(), tokenFile, trustDialer([]uint32{0, uint32(os.Geteuid())}))
	if err != nil {
		t.Fatal(err)
	}
	body := jsonObject("password", []byte("s3cret-pw"))
	r, status, err := c.callSecret("/api/system/login", body)
	if err != nil || status != 200 || r.Message != "Key set" {
		t.Fatalf("%v %d %v", r, status, err)
	}
	req := <-got
	if req.Method != "POST" || req.URL.Path != "/api/system/login" || req.Header.Get("Content-Type") != "application/json" ||
		req.Header.Get("Authorization") != "Bearer tok-123" || !req.Close || req.Host != ln.Addr().String() ||
		req.ContentLength != int64(len(`{"password":"s3cret-pw"}`)) {
		t.Fatalf("request: %s %s host %q close %v length %d headers %v", req.Method, req.URL, req.Host, req.Close, req.ContentLength, req.Header)
	}
	if b := <-bodies; string(b) != `{"password":"s3cret-pw"}` {
		t.Fatalf("body %q", b)
	}
	if !bytes.Equal(body, make([]byte, len(body))) {
		t.Fatal("the body was not zeroed")
	}
}

// openPTY returns a pseudo-terminal's master and slave.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return m, s
}

// TestReadNoEcho types lines at a pseudo-terminal: each comes back without
// its line end, nothing is echoed, the terminal's echo is back on after,
// and a line that is too long is refused.
func TestReadNoEcho(t *testing.T) {
	m, s := openPTY(t)
	echo := func() bool {
		tio, err := unix.IoctlGetTermios(int(s.Fd()), unix.TCGETS)
		if err != nil {
			t.Fatal(err)
		}
		return tio.Lflag&unix.ECHO != 0
	}
	if !echo() {
		t.Fatal("a new terminal without echo")
	}
	type res struct {
		b   []byte
		err error
	}
	// readNoEcho tells when echo is off (echoOff): type only then, else
	// the terminal echoes.
	off := make(chan struct{}, 1)
	echoOff = func() { off <- struct{}{} }
	t.Cleanup(func() { echoOff = nil })
	read := func(limit int) chan res {
		ch := make(chan res, 1)
		go func() {
			b, err := readNoEcho(s, limit)
			ch <- res{b, err}
		}()
		return ch
	}
	typeLine := func(line string) {
		select {
		case <-off:
		case <-time.After(5 * time.Second):
			t.Fatal("echo never went off")
		}
		if echo() {
			t.Fatal("readNoEcho said echo is off; the terminal still echoes")
		}
		if _, err := io.WriteString(m, line); err != nil {
			t.Fatal(err)
		}
	}
	ch := read(100)
	typeLine("p4ss word\r")
	if r := <-ch; r.err != nil || string(r.b) != "p4ss word" {
		t.Fatalf("%q %v", r.b, r.err)
	}
	if !echo() {
		t.Fatal("echo not restored")
	}
	ch = read(4)
	typeLine("12345\n")
	if r := <-ch; !errors.Is(r.err, errSecretTooLong) {
		t.Fatalf("a long line: %q %v", r.b, r.err)
	}
	// Nothing typed was echoed: the master side has nothing to read (an
	// echo is queued when the line is processed, before readNoEcho gets
	// it; the poll's timeout only covers the pty's hand-over to the
	// master). A pty master does not honour read deadlines: poll it.
	fds := []unix.PollFd{{Fd: int32(m.Fd()), Events: unix.POLLIN}}
	if n, err := unix.Poll(fds, 200); err == nil && n > 0 {
		var out [256]byte
		k, _ := unix.Read(int(m.Fd()), out[:])
		if k > 0 && (bytes.Contains(out[:k], []byte("p4ss")) || bytes.Contains(out[:k], []byte("123"))) {
			t.Fatalf("echoed: %q", out[:k])
		}
	}
}

package control

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestNewAddr(t *testing.T) {
	for addr, good := range map[string]bool{
		"":                 true,
		"127.0.0.1:8080":   true,
		"[::1]:9":          true,
		"localhost:65535":  true,
		"unix:/run/m.sock": true,
		"127.0.0.1:0":      false,
		"127.0.0.1:08080":  false,
		"127.0.0.1:99999":  false,
		"127.0.0.1":        false,
		"unix:":            false,
	} {
		_, err := New(Options{Backend: newFake(), Addr: addr})
		if (err == nil) != good {
			t.Errorf("New(Addr %q): %v", addr, err)
		}
	}
}

// serve runs s on ln until the test ends, and checks Serve returns nil.
func serve(t *testing.T, s *Server, ln net.Listener) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after cancel")
		}
	})
}

func unixClient(path string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		},
	}}
}

func get(t *testing.T, c *http.Client, url, host string) (int, map[string]any) {
	t.Helper()
	r, _ := http.NewRequest("GET", url, nil)
	if host != "" {
		r.Host = host
	}
	resp, err := c.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var env map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&env); err != nil {
		t.Fatalf("%s: not JSON: %v", url, err)
	}
	return resp.StatusCode, env
}

func TestUnixSocket(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ctl.sock")
	ln, err := Listen("unix:" + path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket: %v %v", fi.Mode(), err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("leftovers beside the socket: %v", ents)
	}
	if ln.Addr().String() != path {
		t.Errorf("Addr %q", ln.Addr())
	}

	// A second daemon on a live socket is refused and does not break it.
	if _, err := Listen("unix:" + path); err == nil {
		t.Fatal("listened on a live socket")
	}

	s := newTestServer(t, Options{Addr: "unix:" + path})
	serve(t, s.Server, ln)
	c := unixClient(path)
	for host, want := range map[string]int{
		"localhost": 200, "localhost:8080": 200, "127.0.0.1": 200, "[::1]": 200,
		"evil.example": 403, "evil.example:8080": 403,
	} {
		if st, env := get(t, c, "http://x"+PathStatus, host); st != want {
			t.Errorf("Host %q over the socket: %d %v", host, st, env)
		}
	}
	c.CloseIdleConnections()
}

func TestUnixSocketStaleAndForeign(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ctl.sock")

	// A socket left behind by a dead process is replaced.
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ul.SetUnlinkOnClose(false)
	ul.Close()
	ln, err := Listen("unix:" + path)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	// Closing removes the socket.
	ln.Close()
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("socket left after Close: %v", err)
	}

	// If another socket has replaced ours meanwhile, Close leaves it.
	ln, _ = Listen("unix:" + path)
	os.Remove(path)
	other, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	ln.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatal("Close removed a socket that was not ours")
	}

	// A regular file is never removed.
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("keep"), 0o644)
	if _, err := Listen("unix:" + file); err == nil {
		t.Fatal("listened over a regular file")
	}
	if b, _ := os.ReadFile(file); string(b) != "keep" {
		t.Fatal("regular file damaged")
	}
	if _, err := Listen("unix:"); err == nil {
		t.Fatal("empty socket path accepted")
	}
}

// TestServeTCPParallel: 1000 concurrent requests over real TCP connections,
// a mix of good and hostile ones, all get the right JSON reply.
func TestServeTCPParallel(t *testing.T) {
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	s := newTestServer(t, Options{Addr: addr})
	s.fake.password = []byte("pw")
	serve(t, s.Server, ln)

	c := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 64, MaxIdleConnsPerHost: 64}, Timeout: 30 * time.Second}
	defer c.CloseIdleConnections()
	base := "http://" + addr
	type kind struct {
		method, path, ctype, body, host string
		status                          int
	}
	kinds := []kind{
		{"GET", PathStatus, "", "", "", 200},
		{"GET", PathLogout, "", "", "", 200},
		{"POST", PathLogout, "", "", "localhost:" + addr[strings.LastIndexByte(addr, ':')+1:], 200},
		{"GET", "/nope", "", "", "", 404},
		{"DELETE", PathLogin, "", "", "", 405},
		{"GET", PathStatus, "", "", "evil.example", 403},
		{"POST", PathLogin, "text/plain", `{"password":"pw"}`, "", 415},
		{"POST", PathLogin, "application/json", `{"password":`, "", 400},
		{"POST", PathLogin, "application/json", `{"password":"` + strings.Repeat("x", maxBody) + `"}`, "", 413},
		{"GET", "/api/system/tasks/none", "", "", "", 404},
	}
	var wg sync.WaitGroup
	for i := range 1000 {
		wg.Go(func() {
			k := kinds[i%len(kinds)]
			var body io.Reader
			if k.body != "" {
				body = strings.NewReader(k.body)
			}
			r, _ := http.NewRequest(k.method, base+k.path, body)
			if k.ctype != "" {
				r.Header.Set("Content-Type", k.ctype)
			}
			if k.host != "" {
				r.Host = k.host
			}
			resp, err := c.Do(r)
			if err != nil {
				t.Errorf("%s %s: %v", k.method, k.path, err)
				return
			}
			defer resp.Body.Close()
			var env map[string]any
			derr := json.NewDecoder(resp.Body).Decode(&env)
			if resp.StatusCode != k.status || derr != nil || env["command"] == nil ||
				resp.Header.Get("Content-Type") != "application/json" {
				t.Errorf("%s %s (Host %q): %d %v %v", k.method, k.path, k.host, resp.StatusCode, env, derr)
			}
		})
	}
	wg.Wait()
}

// TestSlowClientIsDropped: a client that never finishes its headers, or
// its body, loses the connection after the server's timeouts.
func TestSlowClientIsDropped(t *testing.T) {
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := newTestServer(t, Options{Addr: ln.Addr().String()})
	s.timeouts.readHeader = 200 * time.Millisecond
	s.timeouts.read = 400 * time.Millisecond
	serve(t, s.Server, ln)

	for name, prefix := range map[string]string{
		"headers": "GET /api/system/encryption-status HTTP/1.1\r\nHost: " + ln.Addr().String() + "\r\n",
		"body": "POST /api/system/login HTTP/1.1\r\nHost: " + ln.Addr().String() +
			"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"pass",
	} {
		t.Run(name, func(t *testing.T) {
			conn, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			start := time.Now()
			if _, err := io.WriteString(conn, prefix); err != nil {
				t.Fatal(err)
			}
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			io.Copy(io.Discard, conn) // returns when the server closes
			if d := time.Since(start); d > 3*time.Second {
				t.Fatalf("connection held for %v", d)
			}
		})
	}
	if s.fake.kdfCalls.Load() != 0 {
		t.Fatal("a truncated body reached the backend")
	}
}

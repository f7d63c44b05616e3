package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var mountdBin string

func TestMain(m *testing.M) {
	if spec := os.Getenv(escapeEnv); spec != "" {
		// This binary, run as the attacker of TestEscapeRace.
		os.Exit(escapeChild(spec))
	}
	dir, err := os.MkdirTemp("", "mountd-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	mountdBin = filepath.Join(dir, "mountd")
	// The daemon is built with the race detector, except when
	// MOUNTD_INTEGRATION_RACE=false (e.g. to measure memory in the soak).
	args := []string{"build", "-race", "-o", mountdBin, "github.com/mountd/mountd/cmd/mountd"}
	if os.Getenv("MOUNTD_INTEGRATION_RACE") == "false" {
		args = append(args[:1], args[2:]...)
	}
	build := exec.Command("go", args...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building mountd:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// requireFUSE skips (or, under CI=true, fails) when this machine cannot
// mount FUSE filesystems as this user.
func requireFUSE(t *testing.T) {
	t.Helper()
	_, err := os.Stat("/dev/fuse")
	if err == nil && os.Geteuid() != 0 {
		if _, lerr := exec.LookPath("fusermount3"); lerr != nil {
			err = lerr
		}
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("FUSE unavailable under CI=true: %v", err)
		}
		t.Skipf("FUSE unavailable: %v", err)
	}
}

// daemon is one running mountd process.
type daemon struct {
	t          *testing.T
	data, mnt  string
	addr       string
	cmd        *exec.Cmd
	out        *syncBuffer
	exited     chan struct{}
	exitErr    error
	client     *http.Client
	stopOnce   sync.Once
	killed     bool // the last run ended with kill(): a stale mount is expected
	extraFlags []string
	token      string   // sent as "Authorization: Bearer", when set
	env        []string // added to the daemon's environment
	bin        string   // the binary to run; mountdBin when empty
}

// url is path on d's control plane; over its unix socket when d.addr is
// "unix:/path" (see listenUnix).
func (d *daemon) url(path string) string {
	if strings.HasPrefix(d.addr, "unix:") {
		return "http://localhost" + path
	}
	return "http://" + d.addr + path
}

// listenUnix makes d listen on a unix socket at path instead of TCP.
func (d *daemon) listenUnix(path string) {
	d.addr = "unix:" + path
	d.client.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}
}

func (d *daemon) newRequest(method, path string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(context.Background(), method, d.url(path), body)
	if err == nil && d.token != "" {
		req.Header.Set("Authorization", "Bearer "+d.token)
	}
	return req, err
}

// syncBuffer collects the daemon's output; waitFor waits for a line.
type syncBuffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	written chan struct{} // closed (and dropped) by the next Write
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.written != nil {
		close(s.written)
		s.written = nil
	}
	return s.b.Write(p)
}

// waitFor waits until a line of the output contains every one of parts,
// woken by each write; it reports false after d.
func (s *syncBuffer) waitFor(d time.Duration, parts ...string) bool {
	return s.waitForCount(d, 1, parts...)
}

// waitForCount is waitFor for n such lines.
func (s *syncBuffer) waitForCount(d time.Duration, n int, parts ...string) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		s.mu.Lock()
		out := s.b.String()
		if s.written == nil {
			s.written = make(chan struct{})
		}
		written := s.written
		s.mu.Unlock()
		seen := 0
		for _, line := range strings.Split(out, "\n") {
			if containsAll(line, parts) {
				seen++
			}
		}
		if seen >= n {
			return true
		}
		select {
		case <-written:
		case <-timer.C:
			return false
		}
	}
}

func containsAll(s string, parts []string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// newDaemon prepares (but does not start) a daemon on fresh temp dirs.
func newDaemon(t *testing.T, extra ...string) *daemon {
	t.Helper()
	requireFUSE(t)
	root := t.TempDir()
	d := &daemon{
		t:          t,
		data:       filepath.Join(root, "Client_Data"),
		mnt:        filepath.Join(root, "mnt"),
		addr:       fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		client:     &http.Client{Timeout: 60 * time.Second},
		extraFlags: extra,
	}
	return d
}

// start runs the daemon and waits until both the mount and the control
// plane answer. It registers a cleanup that stops it and checks that no
// mount is left behind.
func (d *daemon) start() {
	t := d.t
	t.Helper()
	d.out = &syncBuffer{}
	d.exited = make(chan struct{})
	d.stopOnce = sync.Once{}
	d.killed = false
	args := append([]string{"--data", d.data, "--create", "--mount", d.mnt, "--listen", d.addr, "--log-level", "debug"}, d.extraFlags...)
	bin := mountdBin
	if d.bin != "" {
		bin = d.bin
	}
	d.cmd = exec.Command(bin, args...)
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	if len(d.env) > 0 {
		d.cmd.Env = append(os.Environ(), d.env...)
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		d.exitErr = d.cmd.Wait()
		close(d.exited)
	}()
	t.Cleanup(func() {
		d.stop()
		if isMounted(d.mnt) {
			exec.Command("umount", "-l", d.mnt).Run()
			if !d.killed {
				t.Errorf("mount %s left behind after the daemon stopped", d.mnt)
			}
		}
		if t.Failed() {
			t.Logf("daemon output:\n%s", d.out.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	listen := d.addr
	for {
		select {
		case <-d.exited:
			t.Fatalf("daemon exited during start-up: %v\n%s", d.exitErr, d.out.String())
		default:
		}
		if strings.HasSuffix(listen, ":0") {
			// --listen HOST:0: the port the daemon logs it chose.
			if m := startedListen.FindStringSubmatch(d.out.String()); m != nil {
				d.addr = m[1]
			}
		}
		if isMounted(d.mnt) && !strings.HasSuffix(d.addr, ":0") {
			req, _ := d.newRequest("GET", "/api/system/encryption-status", nil)
			if resp, err := d.client.Do(req); err == nil {
				resp.Body.Close()
				// 401: up, with --token-file.
				if resp.StatusCode == 200 || resp.StatusCode == 401 {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon not ready after 30s:\n%s", d.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startedListen finds the control plane's address in the start-up line.
var startedListen = regexp.MustCompile(`msg="mountd started".* listen="([^"]+)"`)

// stop sends SIGTERM and waits for exit; it kills after a timeout.
func (d *daemon) stop() error {
	var err error
	d.stopOnce.Do(func() {
		if d.cmd == nil || d.cmd.Process == nil {
			return
		}
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
			err = d.exitErr
		case <-time.After(30 * time.Second):
			d.cmd.Process.Kill()
			<-d.exited
			err = fmt.Errorf("daemon did not exit within 30s of SIGTERM")
		}
	})
	return err
}

// kill sends SIGKILL (a crash) and waits for the process to go. The
// stale mount stays, as after a real crash.
func (d *daemon) kill() {
	d.stopOnce.Do(func() {
		d.killed = true
		d.cmd.Process.Kill()
		<-d.exited
	})
}

func isMounted(dir string) bool {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) > 2 && fields[1] == dir {
			return true
		}
	}
	return false
}

// apiReply is a decoded response plus its raw body and status.
type apiReply struct {
	Status int
	Header http.Header
	Raw    []byte
	JSON   map[string]any
}

func (d *daemon) do(method, path, contentType, body string, hdr ...string) apiReply {
	d.t.Helper()
	req, err := d.newRequest(method, path, strings.NewReader(body))
	if err != nil {
		d.t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if strings.EqualFold(hdr[i], "Host") {
			req.Host = hdr[i+1]
		} else {
			req.Header.Set(hdr[i], hdr[i+1])
		}
	}
	resp, err := d.client.Do(req)
	if err != nil {
		d.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	r := apiReply{Status: resp.StatusCode, Header: resp.Header, Raw: raw}
	if err := json.Unmarshal(raw, &r.JSON); err != nil {
		d.t.Fatalf("%s %s: status %d, body is not JSON: %q", method, path, resp.StatusCode, raw)
	}
	return r
}

func (d *daemon) login(password string) apiReply {
	d.t.Helper()
	body, _ := json.Marshal(map[string]string{"password": password})
	return d.do("POST", "/api/system/login", "application/json", string(body))
}

func (d *daemon) mustLogin(password string) {
	d.t.Helper()
	if r := d.login(password); r.Status != 200 {
		d.t.Fatalf("login: %d %s", r.Status, r.Raw)
	}
}

func (d *daemon) logout() apiReply {
	d.t.Helper()
	return d.do("GET", "/api/system/logout", "", "")
}

func (d *daemon) status(scan bool) map[string]any {
	d.t.Helper()
	p := "/api/system/encryption-status"
	if scan {
		p += "?scan=true"
	}
	r := d.do("GET", p, "", "")
	if r.Status != 200 {
		d.t.Fatalf("status: %d %s", r.Status, r.Raw)
	}
	return r.JSON
}

func newJSONRequest(addr, path string, body []byte) (*http.Request, error) {
	req, err := http.NewRequest("POST", "http://"+addr+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	return req, nil
}

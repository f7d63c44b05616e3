package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Tests of issue 16: only root, the daemon's user and --allow-uid users
// control the key, and the client talks only to a daemon run by a user
// it trusts. "Another user" is this test binary re-executed as uid 65534
// in a helper mode (identityHelper), making real connections.

const (
	strangerUID = 65534
	helperEnv   = "MOUNTD_IDENTITY_HELPER" // helper mode: "http" or "listen"
	helperAddr  = "MOUNTD_HELPER_ADDR"     // host:port or unix:/path
	helperCalls = "MOUNTD_HELPER_CALLS"    // JSON []httpCall, for "http"
)

func init() {
	switch os.Getenv(helperEnv) {
	case "":
	case "http":
		os.Exit(helperHTTP())
	case "listen":
		os.Exit(helperListen())
	default:
		fmt.Fprintln(os.Stderr, "unknown helper mode")
		os.Exit(2)
	}
}

// httpCall is one request the other user makes.
type httpCall struct {
	Method, Path, ContentType, Body string
	Header                          map[string]string `json:",omitempty"`
}

type httpResult struct {
	Status int
	Body   string
	Err    string
}

// helperHTTP makes the calls in $MOUNTD_HELPER_CALLS and prints
// {"UID": its uid, "Results": [...]} as JSON.
func helperHTTP() int {
	var calls []httpCall
	if err := json.Unmarshal([]byte(os.Getenv(helperCalls)), &calls); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	addr := os.Getenv(helperAddr)
	base, client := "http://"+addr, &http.Client{Timeout: time.Minute}
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		base = "http://localhost"
		client.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		}}
	}
	out := struct {
		UID     int
		Results []httpResult
	}{UID: os.Geteuid()}
	for _, c := range calls {
		var res httpResult
		req, err := http.NewRequest(c.Method, base+c.Path, strings.NewReader(c.Body))
		if err == nil {
			if c.ContentType != "" {
				req.Header.Set("Content-Type", c.ContentType)
			}
			for k, v := range c.Header {
				req.Header.Set(k, v)
			}
			var resp *http.Response
			if resp, err = client.Do(req); err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				res.Status, res.Body = resp.StatusCode, string(b)
			}
		}
		if err != nil {
			res.Err = err.Error()
		}
		out.Results = append(out.Results, res)
	}
	json.NewEncoder(os.Stdout).Encode(out)
	return 0
}

// helperListen listens on $MOUNTD_HELPER_ADDR, prints "listening", and
// for each connection prints "conn N <quoted bytes received>" once the
// client has closed it (it answers a request with an empty 500, so a
// client that does send something is not left waiting). It stops when
// its stdin closes, after every connection has been reported.
func helperListen() int {
	addr := os.Getenv(helperAddr)
	network := "tcp"
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, addr = "unix", path
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	fmt.Println("listening")
	go func() {
		io.Copy(io.Discard, os.Stdin)
		ln.Close()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			break
		}
		wg.Go(func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(30 * time.Second))
			var got []byte
			buf := make([]byte, 4096)
			answered := false
			for {
				n, err := c.Read(buf)
				got = append(got, buf[:n]...)
				if n > 0 && !answered {
					answered = true
					io.WriteString(c, "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
				}
				if err != nil {
					break
				}
			}
			mu.Lock()
			fmt.Printf("conn %d %q\n", len(got), got)
			mu.Unlock()
		})
	}
	wg.Wait()
	return 0
}

// strangerBinary copies this test binary where uid 65534 can run it.
func strangerBinary(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (to run a helper as another user) under CI=true")
		}
		t.Skip("needs root to run a helper as another user")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "mountd-identity-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	bin := filepath.Join(dir, "helper")
	dst, err := os.OpenFile(bin, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.Copy(dst, src)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// asStranger returns a command running bin as uid/gid 65534 in a helper
// mode.
func asStranger(bin, mode, addr string, env ...string) *exec.Cmd {
	cmd := exec.Command(bin)
	cmd.Env = append([]string{helperEnv + "=" + mode, helperAddr + "=" + addr, "PATH=/usr/bin:/bin"}, env...)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: strangerUID, Gid: strangerUID}}
	return cmd
}

// strangerCalls makes calls to d's control plane as uid 65534.
func (d *daemon) strangerCalls(bin string, calls ...httpCall) []httpResult {
	d.t.Helper()
	enc, _ := json.Marshal(calls)
	cmd := asStranger(bin, "http", d.addr, helperCalls+"="+string(enc))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		d.t.Fatalf("helper as uid %d: %v\n%s", strangerUID, err, stderr.String())
	}
	var res struct {
		UID     int
		Results []httpResult
	}
	if err := json.Unmarshal(out, &res); err != nil || res.UID != strangerUID || len(res.Results) != len(calls) {
		d.t.Fatalf("helper output (uid %d, %v): %s", res.UID, err, out)
	}
	for i, r := range res.Results {
		if r.Err != "" {
			d.t.Fatalf("helper: %s %s: %s", calls[i].Method, calls[i].Path, r.Err)
		}
	}
	return res.Results
}

func get(path string) httpCall  { return httpCall{Method: "GET", Path: path} }
func post(path string) httpCall { return httpCall{Method: "POST", Path: path} }
func postJSON(path, body string) httpCall {
	return httpCall{Method: "POST", Path: path, ContentType: "application/json", Body: body}
}

// wantForbidden checks that each result is 403 RESULT_FORBIDDEN.
func wantForbidden(t *testing.T, calls []httpCall, res []httpResult) {
	t.Helper()
	for i, r := range res {
		var env map[string]any
		json.Unmarshal([]byte(r.Body), &env)
		if r.Status != 403 || env["error"] != "RESULT_FORBIDDEN" || env["success"] != false {
			t.Errorf("other user's %s %s: %d %s, want 403 RESULT_FORBIDDEN", calls[i].Method, calls[i].Path, r.Status, r.Body)
		}
	}
}

// TestOtherUserCannotControlTheKey: another local user can neither create
// the first password, nor log in, log out, change the password, start,
// watch or cancel a task, nor scan; the owner is unaffected, and can log in
// right after that user's failed attempts.
func TestOtherUserCannotControlTheKey(t *testing.T) {
	bin := strangerBinary(t)
	d := newDaemon(t, migFastKDF...)
	d.start()
	const theirs = "the stranger's password"

	// A fresh daemon: plain status is open, everything else refused,
	// starting with the first login that would create the password.
	calls := []httpCall{
		postJSON("/api/system/login", `{"password":"`+theirs+`"}`),
		postJSON("/api/system/login", `{"password":"`+theirs+`"}`),
		get("/api/system/encryption-status?scan=true"),
		get("/api/system/logout"),
		post("/api/system/encrypt_existing_files"),
		postJSON("/api/system/change_password", `{"old_password":"x","new_password":"`+theirs+`"}`),
	}
	res := d.strangerCalls(bin, append([]httpCall{get("/api/system/encryption-status")}, calls...)...)
	if res[0].Status != 200 || !strings.Contains(res[0].Body, `"password_set":false`) {
		t.Fatalf("other user's plain status: %d %s", res[0].Status, res[0].Body)
	}
	wantForbidden(t, calls, res[1:])
	if _, err := os.Stat(filepath.Join(d.data, "auth", "verifier.bin")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("another user's login created a verifier: %v", err)
	}
	if st := d.status(false); st["password_set"] != false || st["key_set"] != false {
		t.Fatalf("status after the other user's attempts: %v", st)
	}

	// The owner creates the password, writes a file, runs a task.
	if r := d.login(password); r.Status != 200 || r.JSON["created"] != true {
		t.Fatalf("owner's first login: %d %s", r.Status, r.Raw)
	}
	secretPath := filepath.Join(d.mnt, "secret.bin")
	if err := os.WriteFile(secretPath, []byte("owner's data"), 0o600); err != nil {
		t.Fatal(err)
	}
	verifier := fileHash(t, filepath.Join(d.data, "auth", "verifier.bin"))
	r := d.do("POST", "/api/system/encrypt_existing_files", "", "")
	task, _ := r.JSON["task"].(map[string]any)
	taskID, _ := task["id"].(string)
	if r.Status != 202 || taskID == "" {
		t.Fatalf("owner's task: %d %s", r.Status, r.Raw)
	}
	refused := len(calls)

	// Logged in: the other user tries everything, the right password
	// included (which it might have seen over a shoulder).
	calls = []httpCall{
		get("/api/system/logout"),
		post("/api/system/logout"),
		postJSON("/api/system/login", `{"password":"`+password+`"}`),
		postJSON("/api/system/change_password", `{"old_password":"`+password+`","new_password":"`+theirs+`"}`),
		get("/api/system/encrypt_existing_files"),
		post("/api/system/encrypt_existing_files"),
		get("/api/system/tasks/" + taskID),
		post("/api/system/tasks/" + taskID + "/cancel"),
		get("/api/system/encryption-status?scan=true"),
		get("/api/system/nope/../logout"),
		get("/api/system/tasks"),
	}
	for range 8 {
		calls = append(calls, postJSON("/api/system/login", `{"password":"guess"}`))
	}
	res = d.strangerCalls(bin, calls...)
	// A path that is no route is 404 for everyone; the rest is 403.
	if res[9].Status != 404 {
		t.Errorf("unknown path: %d", res[9].Status)
	}
	wantForbidden(t, append(calls[:9:9], calls[10:]...), append(res[:9:9], res[10:]...))
	refused += len(calls) - 1

	// The owner is unaffected: still logged in, same password, no backoff.
	if got, err := os.ReadFile(secretPath); err != nil || string(got) != "owner's data" {
		t.Fatalf("owner's file after the other user's logout: %q %v", got, err)
	}
	if fileHash(t, filepath.Join(d.data, "auth", "verifier.bin")) != verifier {
		t.Fatal("the verifier changed")
	}
	if r := d.login(password); r.Status != 200 || r.JSON["already_set"] != true {
		t.Fatalf("owner's login right after the other user's failures: %d %s", r.Status, r.Raw)
	}
	if r := d.logout(); r.Status != 200 || string(r.Raw) != seedLogoutBody {
		t.Fatalf("owner's logout: %d %s", r.Status, r.Raw)
	}
	d.mustLogin(password)

	out := d.out.String()
	if n := strings.Count(out, "request refused: this user may not control the key"); n != refused {
		t.Errorf("%d refusals logged, want %d", n, refused)
	}
	if !strings.Contains(out, "uid=65534") {
		t.Error("the refusals are not logged with the uid")
	}
	for _, pw := range []string{password, theirs} {
		if strings.Contains(out, pw) {
			t.Fatalf("a password in the daemon's output")
		}
	}
}

// TestAllowedUsersBackoffSeparately: a user given with --allow-uid may
// log out (the seed's reply, byte for byte) and log in; its failed logins
// lock only itself, after exactly the count docs/API.md gives.
func TestAllowedUsersBackoffSeparately(t *testing.T) {
	bin := strangerBinary(t)
	d := newDaemon(t, append([]string{"--allow-uid", strconv.Itoa(strangerUID)}, migFastKDF...)...)
	d.start()
	d.mustLogin(password)

	calls := []httpCall{get("/api/system/logout")}
	for range 6 {
		calls = append(calls, postJSON("/api/system/login", `{"password":"wrong"}`))
	}
	res := d.strangerCalls(bin, calls...)
	if res[0].Status != 200 || res[0].Body != seedLogoutBody {
		t.Fatalf("allowed user's logout: %d %s", res[0].Status, res[0].Body)
	}
	for i, r := range res[1:6] {
		if r.Status != 401 {
			t.Fatalf("allowed user's failure %d: %d %s", i+1, r.Status, r.Body)
		}
	}
	if res[6].Status != 429 {
		t.Fatalf("allowed user's 6th attempt: %d %s", res[6].Status, res[6].Body)
	}
	// The owner's count is its own.
	if r := d.login(password); r.Status != 200 {
		t.Fatalf("owner while the allowed user is locked out: %d %s", r.Status, r.Raw)
	}
}

// TestUnixSocketCallers: over a unix socket the caller is SO_PEERCRED's.
// With --allow-uid the socket is 0666 and the check decides: a user not
// allowed is refused, an allowed one may create the first password.
func TestUnixSocketCallers(t *testing.T) {
	bin := strangerBinary(t)
	dir, err := os.MkdirTemp("", "mountd-sock-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)

	d := newDaemon(t, "--allow-uid", "12345")
	d.listenUnix(filepath.Join(dir, "a.sock"))
	d.start()
	if fi, err := os.Stat(filepath.Join(dir, "a.sock")); err != nil || fi.Mode().Perm() != 0o666 {
		t.Fatalf("socket with --allow-uid: %v %v", fi.Mode(), err)
	}
	calls := []httpCall{get("/api/system/logout"), postJSON("/api/system/login", `{"password":"x"}`)}
	res := d.strangerCalls(bin, append(calls, get("/api/system/encryption-status"))...)
	wantForbidden(t, calls, res[:2])
	if res[2].Status != 200 {
		t.Fatalf("status over the socket: %d", res[2].Status)
	}

	d2 := newDaemon(t, append([]string{"--allow-uid", "nobody"}, migFastKDF...)...)
	d2.listenUnix(filepath.Join(dir, "b.sock"))
	d2.start()
	res = d2.strangerCalls(bin, postJSON("/api/system/login", `{"password":"`+password+`"}`), get("/api/system/logout"))
	if res[0].Status != 200 || !strings.Contains(res[0].Body, `"created":true`) || res[1].Body != seedLogoutBody {
		t.Fatalf("allowed user over the socket: %+v", res)
	}
	if !strings.Contains(d.out.String(), "uid=65534") {
		t.Error("refusal not logged with the uid")
	}
}

// squatter is a listener run by uid 65534 on an address a client might
// take for the daemon's.
type squatter struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
}

func startSquatter(t *testing.T, bin, addr string) *squatter {
	t.Helper()
	cmd := asStranger(bin, "listen", addr)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &squatter{cmd: cmd, stdin: stdin, lines: make(chan string, 100)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
		close(s.lines)
	}()
	t.Cleanup(func() { stdin.Close(); cmd.Wait() })
	select {
	case l := <-s.lines:
		if l != "listening" {
			t.Fatalf("squatter: %q", l)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("squatter did not start")
	}
	return s
}

// received stops the squatter and returns what each connection received.
func (s *squatter) received(t *testing.T) []string {
	t.Helper()
	s.stdin.Close()
	var got []string
	for l := range s.lines {
		n, q, ok := strings.Cut(strings.TrimPrefix(l, "conn "), " ")
		data, err := strconv.Unquote(q)
		if !ok || err != nil || strconv.Itoa(len(data)) != n {
			t.Fatalf("squatter line %q", l)
		}
		got = append(got, data)
	}
	if err := s.cmd.Wait(); err != nil {
		t.Fatalf("squatter: %v", err)
	}
	return got
}

// TestClientRefusesOtherUsersListener: while another user listens on the
// daemon's address (say, while the daemon restarts), mountd login, passwd,
// status, logout and encrypt-existing refuse it and send it nothing: no
// password, no token, not even a status request.
func TestClientRefusesOtherUsersListener(t *testing.T) {
	bin := strangerBinary(t)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	sq := startSquatter(t, bin, addr)
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte("0123456789abcdef-token\n"), 0o600)

	run := func(stdin string, args ...string) (string, int) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, mountdBin, args...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return string(out), ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}
	for _, c := range []struct {
		stdin string
		args  []string
	}{
		{password + "\n", []string{"login"}},
		{password + "\nnew\nnew\n", []string{"passwd"}},
		{"", []string{"status"}},
		{"", []string{"logout"}},
		{"", []string{"encrypt-existing", "--no-wait"}},
		{password + "\n", []string{"login", "--token-file", tokenFile}},
	} {
		out, code := run(c.stdin, append(c.args, "--addr", addr)...)
		if code != 3 || !strings.Contains(out, "refusing to talk to "+addr) || !strings.Contains(out, "uid 65534") ||
			!strings.Contains(out, "Nothing was sent") {
			t.Errorf("mountd %v: exit %d:\n%s", c.args, code, out)
		}
	}
	// Control: trusting that user, the client does send (and the squatter
	// records it), so the silence above is the client's doing.
	out, code := run("", "status", "--addr", addr, "--daemon-uid", strconv.Itoa(strangerUID))
	if code == 0 || code == 3 {
		t.Errorf("status trusting the squatter: exit %d:\n%s", code, out)
	}
	got := sq.received(t)
	sent := 0
	for _, data := range got {
		switch {
		case data == "":
		case strings.HasPrefix(data, "GET /api/system/encryption-status HTTP/1.1\r\n") && !strings.Contains(data, "token"):
			sent++
		default:
			t.Errorf("the other user's listener received %q", data)
		}
	}
	if sent != 1 || len(got) < 7 {
		t.Fatalf("connections: %q (want one request, from the control)", got)
	}

	// A unix socket file of another user is refused before connecting.
	dir, _ := os.MkdirTemp("", "mountd-squat-")
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o777)
	sock := filepath.Join(dir, "ctl.sock")
	usq := startSquatter(t, bin, "unix:"+sock)
	out, code = run(password+"\n", "login", "--addr", "unix:"+sock)
	if code != 3 || !strings.Contains(out, "socket file belongs to uid 65534") {
		t.Errorf("login to another user's unix socket: exit %d:\n%s", code, out)
	}
	if got := usq.received(t); len(got) != 0 {
		t.Errorf("the other user's unix listener got connections: %q", got)
	}
}

// unmountIfRefusalFailed detaches a mount left by a daemon that should
// have refused to start (and was killed by runExpectingFailure's timeout).
func unmountIfRefusalFailed(t *testing.T, mnt string) {
	t.Cleanup(func() {
		if isMounted(mnt) {
			exec.Command("umount", "-l", mnt).Run()
		}
	})
}

// TestTokenFileModes: a token file other users could read or replace is
// refused at start, with what to do; a private one works.
func TestTokenFileModes(t *testing.T) {
	requireFUSE(t)
	root := t.TempDir()
	unmountIfRefusalFailed(t, filepath.Join(root, "m"))
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	const token = "0123456789abcdef0123456789abcdef"
	for _, c := range []struct {
		name string
		mode os.FileMode
		uid  int
		want string
	}{
		{"world-readable", 0o644, 0, "has mode 0644"},
		{"group-readable", 0o640, 0, "has mode 0640"},
		{"world-writable", 0o602, 0, "has mode 0602"},
		{"another user's", 0o600, strangerUID, "belongs to uid 65534"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := filepath.Join(root, c.name)
			os.WriteFile(f, []byte(token+"\n"), 0o600)
			os.Chmod(f, c.mode)
			if c.uid != 0 {
				if err := os.Chown(f, c.uid, c.uid); err != nil {
					t.Skip(err)
				}
			}
			runExpectingFailure(t, c.want, "--data", filepath.Join(root, "d"), "--mount", filepath.Join(root, "m"),
				"--listen", listen, "--token-file", f)
			if isMounted(filepath.Join(root, "m")) {
				t.Fatal("mounted despite the refusal")
			}
		})
	}
	runExpectingFailure(t, "not a regular file", "--data", filepath.Join(root, "d"), "--mount", filepath.Join(root, "m"),
		"--listen", listen, "--token-file", root)

	f := filepath.Join(root, "good")
	os.WriteFile(f, []byte(token+"\n"), 0o600)
	d := newDaemon(t, "--token-file", f)
	d.token = token
	d.start()
	d.mustLogin(password)
	d.token = ""
	if r := d.logout(); r.Status != 401 {
		t.Fatalf("logout without the token: %d", r.Status)
	}
}

// TestListenBeyondLoopback: --listen on an address other hosts can reach
// is refused without a token, saying why; with one it works, and local
// callers still need to be allowed users (the token does not replace
// the caller check).
func TestListenBeyondLoopback(t *testing.T) {
	bin := strangerBinary(t)
	requireFUSE(t)
	root := t.TempDir()
	unmountIfRefusalFailed(t, filepath.Join(root, "m"))
	port := freePort(t)
	for _, addr := range []string{fmt.Sprintf("0.0.0.0:%d", port), fmt.Sprintf("[::]:%d", port)} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, mountdBin, "--data", filepath.Join(root, "d"), "--mount", filepath.Join(root, "m"),
			"--listen", addr).CombinedOutput()
		cancel()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 64 || !strings.Contains(string(out), "not a loopback address") ||
			!strings.Contains(string(out), "--token-file") {
			t.Fatalf("--listen %s: %v\n%s", addr, err, out)
		}
	}
	if isMounted(filepath.Join(root, "m")) {
		t.Fatal("mounted despite the refusal")
	}

	const token = "0123456789abcdef0123456789abcdef"
	f := filepath.Join(root, "token")
	os.WriteFile(f, []byte(token+"\n"), 0o600)
	d := newDaemon(t, "--token-file", f)
	d.extraFlags = append(d.extraFlags, "--listen", fmt.Sprintf("0.0.0.0:%d", port)) // the last --listen wins
	d.addr = fmt.Sprintf("127.0.0.1:%d", port)
	d.token = token
	d.start()
	d.mustLogin(password)
	bearer := map[string]string{"Authorization": "Bearer " + token}
	calls := []httpCall{{Method: "GET", Path: "/api/system/logout", Header: bearer}}
	res := d.strangerCalls(bin, append(calls, httpCall{Method: "GET", Path: "/api/system/encryption-status", Header: bearer})...)
	wantForbidden(t, calls, res[:1])
	if res[1].Status != 200 || !strings.Contains(res[1].Body, `"key_set":true`) {
		t.Fatalf("status with the token: %d %s", res[1].Status, res[1].Body)
	}
}

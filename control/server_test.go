package control

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/mountd/mountd/crypto"
)

const logoutBody = `{"command":"logout","success":true,"message":"File encryption key cleared","key_set":false}`

func TestLogoutBodyIsByteExact(t *testing.T) {
	s := newTestServer(t, Options{})
	s.fake.keySet = true
	for i, m := range []string{"GET", "POST", "GET", "POST"} {
		res := do(t, s, req(m, PathLogout, ""))
		if res.status != http.StatusOK {
			t.Fatalf("%s logout: status %d", m, res.status)
		}
		if string(res.body) != logoutBody {
			t.Fatalf("%s logout body:\n got %s\nwant %s", m, res.body, logoutBody)
		}
		if got := s.fake.logouts.Load(); got != int32(i+1) {
			t.Fatalf("backend Logout called %d times after %d requests", got, i+1)
		}
		if s.fake.keySet {
			t.Fatal("key still set after logout")
		}
	}
	// Curl sends neither Origin nor Sec-Fetch-Site; a browser's address
	// bar sends Sec-Fetch-Site: none. Both are allowed.
	res := do(t, s, req("GET", PathLogout, "", "Sec-Fetch-Site", "none", "User-Agent", "Mozilla/5.0"))
	if res.status != 200 || string(res.body) != logoutBody {
		t.Fatalf("address-bar logout: %d %s", res.status, res.body)
	}
}

func TestLoginFlow(t *testing.T) {
	s := newTestServer(t, Options{})
	login := func(pw string) result {
		return do(t, s, jsonReq("POST", PathLogin, `{"password":`+pw+`}`))
	}

	res := login(`"correct horse"`)
	if res.status != 200 || res.env["created"] != true || res.env["key_set"] != true || res.env["already_set"] != false {
		t.Fatalf("first login: %d %s", res.status, res.body)
	}
	if !strings.Contains(res.env["message"].(string), "created") {
		t.Errorf("first login message does not say the password was created: %s", res.body)
	}

	res = login(`"correct horse"`)
	if res.status != 200 || res.env["created"] != false || res.env["already_set"] != true {
		t.Fatalf("login while logged in: %d %s", res.status, res.body)
	}

	res = login(`"wrong"`)
	if res.status != 401 || res.code() != CodeInvalidPassword || res.env["command"] != "login" {
		t.Fatalf("wrong password: %d %s", res.status, res.body)
	}
	if !s.fake.keySet {
		t.Fatal("a wrong password cleared the key")
	}

	do(t, s, req("POST", PathLogout, ""))
	res = login(`"correct horse"`)
	if res.status != 200 || res.env["created"] != false || res.env["already_set"] != false || !s.fake.keySet {
		t.Fatalf("login after logout: %d %s", res.status, res.body)
	}
	wantBody := `{"command":"login","success":true,"message":"File encryption key set","key_set":true,"created":false,"already_set":false}`
	if string(res.body) != wantBody {
		t.Errorf("login body\n got %s\nwant %s", res.body, wantBody)
	}
}

func TestLoginRefusedWhenEncryptedFilesButNoVerifier(t *testing.T) {
	s := newTestServer(t, Options{}, "verifier is missing")
	s.fake.encryptedWithoutVerifier = true
	res := do(t, s, jsonReq("POST", PathLogin, `{"password":"x"}`))
	if res.status != http.StatusConflict || res.code() != CodeEncryptedFilesWithoutVerifier {
		t.Fatalf("got %d %s", res.status, res.body)
	}
	if !strings.Contains(res.env["message"].(string), "verifier") {
		t.Errorf("message is not clear: %s", res.body)
	}
	if s.fake.keySet || s.fake.password != nil {
		t.Fatal("a verifier was created")
	}
}

func TestChangePassword(t *testing.T) {
	s := newTestServer(t, Options{})
	cp := func(body string) result { return do(t, s, jsonReq("POST", PathChangePassword, body)) }

	res := cp(`{"old_password":"a","new_password":"b"}`)
	if res.status != 409 || res.code() != CodePasswordNotSet {
		t.Fatalf("change before any password: %d %s", res.status, res.body)
	}
	do(t, s, jsonReq("POST", PathLogin, `{"password":"a"}`))
	res = cp(`{"old_password":"nope","new_password":"b"}`)
	if res.status != 401 || res.code() != CodeInvalidPassword {
		t.Fatalf("wrong old password: %d %s", res.status, res.body)
	}
	res = cp(`{"old_password":"a","new_password":"b"}`)
	if res.status != 200 || string(res.body) != `{"command":"change_password","success":true,"message":"Password changed"}` {
		t.Fatalf("change: %d %s", res.status, res.body)
	}
	if string(s.fake.password) != "b" {
		t.Fatal("password not changed in backend")
	}
	for _, body := range []string{
		`{"old_password":"b"}`,
		`{"old_password":"b","new_password":""}`,
		`{"old_password":"b","new_password":"c","extra":1}`,
		`{"old_password":"b","new_password":7}`,
	} {
		if res := cp(body); res.status != 400 || res.code() != CodeBadRequest {
			t.Errorf("%s: %d %s", body, res.status, res.body)
		}
	}
}

func TestStatus(t *testing.T) {
	s := newTestServer(t, Options{})
	res := do(t, s, req("GET", PathStatus, ""))
	want := `{"command":"encryption-status","success":true,"message":"File encryption key is not set",` +
		`"key_set":false,"password_set":false,"recovery_key_set":false,"cipher":"AES-256-GCM",` +
		`"kdf":{"name":"argon2id","time":3,"memory_kib":65536,"threads":4},"protect":["*.bin"],"task":null,` +
		`"auto_lock":{"idle":{"state":"off","after_s":0},"suspend":{"state":"off"},"session_lock":{"state":"off"}},"last_lock":null,"pending_encryption":0}`
	if res.status != 200 || string(res.body) != want {
		t.Fatalf("status\n got %d %s\nwant %s", res.status, res.body, want)
	}
	res = do(t, s, req("GET", PathStatus+"?scan=true", ""))
	files, _ := res.env["files"].(map[string]any)
	if files["encrypted"] != 3.0 || files["plaintext"] != 4.0 {
		t.Fatalf("scan: %s", res.body)
	}
	if res := do(t, s, req("GET", PathStatus+"?scan=perhaps", "")); res.status != 400 {
		t.Fatalf("bad scan value: %d", res.status)
	}
	if res := do(t, s, req("GET", PathStatus+"?scan=0&_=123", "")); res.status != 200 || res.env["files"] != nil {
		t.Fatalf("scan=0: %d %s", res.status, res.body)
	}
}

func TestTaskEndpoints(t *testing.T) {
	s := newTestServer(t, Options{})
	res := do(t, s, req("POST", PathEncryptExisting, ""))
	if res.status != 409 || res.code() != CodeKeyNotSet {
		t.Fatalf("start while locked: %d %s", res.status, res.body)
	}
	s.fake.keySet = true
	res = do(t, s, req("GET", PathEncryptExisting, ""))
	if res.status != 202 || res.env["started"] != true {
		t.Fatalf("start: %d %s", res.status, res.body)
	}
	tk := res.env["task"].(map[string]any)
	id := tk["id"].(string)
	if tk["finished_at"] != nil || tk["started_at"] != "2025-01-02T02:04:05Z" || tk["state"] != "running" {
		t.Fatalf("running tk: %s", res.body)
	}
	for _, k := range []string{"id", "kind", "state", "files_total", "files_done", "files_skipped", "files_failed",
		"files_busy", "files_left_plaintext", "bytes_total", "bytes_done", "started_at", "finished_at", "error"} {
		if _, ok := tk[k]; !ok {
			t.Errorf("tk lacks %q: %s", k, res.body)
		}
	}

	res = do(t, s, req("POST", PathEncryptExisting, ""))
	if res.status != 200 || res.env["started"] != false || res.env["task"].(map[string]any)["id"] != id {
		t.Fatalf("second start: %d %s", res.status, res.body)
	}

	res = do(t, s, req("GET", "/api/system/tasks/"+id, ""))
	if res.status != 200 || res.env["command"] != "task" || res.env["task"].(map[string]any)["id"] != id {
		t.Fatalf("get tk: %d %s", res.status, res.body)
	}
	if _, ok := res.env["started"]; ok {
		t.Errorf("tk GET carries started: %s", res.body)
	}
	st := do(t, s, req("GET", PathStatus, ""))
	if st.env["task"].(map[string]any)["id"] != id {
		t.Fatalf("status lacks the current tk: %s", st.body)
	}

	res = do(t, s, req("POST", "/api/system/tasks/"+id+"/cancel", ""))
	if res.status != 200 || res.env["command"] != "cancel_task" || res.env["message"] != "Cancellation requested" {
		t.Fatalf("cancel: %d %s", res.status, res.body)
	}
	res = do(t, s, req("GET", "/api/system/tasks/"+id, ""))
	tk = res.env["task"].(map[string]any)
	if tk["state"] != "cancelled" || tk["finished_at"] != "2025-01-02T02:05:35Z" {
		t.Fatalf("after cancel: %s", res.body)
	}
	res = do(t, s, req("POST", "/api/system/tasks/"+id+"/cancel", ""))
	if res.status != 200 || res.env["message"] != "Task already cancelled" {
		t.Fatalf("second cancel: %d %s", res.status, res.body)
	}
	res = do(t, s, req("POST", PathEncryptExisting, ""))
	if res.status != 202 || res.env["task"].(map[string]any)["id"] == id {
		t.Fatalf("restart after cancel: %d %s", res.status, res.body)
	}
	id2 := res.env["task"].(map[string]any)["id"]

	// The list, newest first.
	res = do(t, s, req("GET", PathTasks, ""))
	list, _ := res.env["tasks"].([]any)
	if res.status != 200 || res.env["command"] != "tasks" || res.env["message"] != "2 tasks" || len(list) != 2 ||
		list[0].(map[string]any)["id"] != id2 || list[1].(map[string]any)["id"] != id ||
		list[1].(map[string]any)["state"] != "cancelled" {
		t.Fatalf("task list: %d %s", res.status, res.body)
	}

	for _, p := range []string{"/api/system/tasks/nope", "/api/system/tasks/nope/cancel", "/api/system/tasks/a.b"} {
		m := "GET"
		if strings.HasSuffix(p, "/cancel") {
			m = "POST"
		}
		if res := do(t, s, req(m, p, "")); res.status != 404 || res.code() != CodeNotFound {
			t.Errorf("%s %s: %d %s", m, p, res.status, res.body)
		}
	}
}

func TestInternalErrorsCarryNoInternals(t *testing.T) {
	s := newTestServer(t, Options{}, "request failed")
	s.fake.statusErr = fmt.Errorf("reading /secret/internal/path: %w", errors.New("disk on fire"))
	res := do(t, s, req("GET", PathStatus, ""))
	want := `{"command":"encryption-status","success":false,"message":"Internal error","error":"RESULT_INTERNAL"}`
	if res.status != 500 || string(res.body) != want {
		t.Fatalf("got %d %s", res.status, res.body)
	}
	// The cause is in the log, at Error, for the operator.
	found := false
	for _, e := range s.hook.AllEntries() {
		if err, ok := e.Data["error"].(error); ok && strings.Contains(err.Error(), "disk on fire") && e.Level.String() == "error" {
			found = true
		}
	}
	if !found {
		t.Error("internal error cause not logged at Error")
	}

	s.fake.statusErr = nil
	s.fake.panicOnStatus = true
	res = do(t, s, req("GET", PathStatus, ""))
	if res.status != 500 || string(res.body) != want {
		t.Fatalf("panic: got %d %s", res.status, res.body)
	}
}

// TestBadVerifierLogged: a corrupt verifier is RESULT_BAD_VERIFIER for the
// client, with a fixed message, and its cause is logged at Error.
func TestBadVerifierLogged(t *testing.T) {
	s := newTestServer(t, Options{}, "request failed")
	s.fake.statusErr = fmt.Errorf("control: status: %w: kdf memory 1 TiB out of range", crypto.ErrBadVerifier)
	res := do(t, s, req("GET", PathStatus, ""))
	if res.status != 500 || res.code() != CodeBadVerifier || strings.Contains(string(res.body), "TiB") {
		t.Fatalf("got %d %s", res.status, res.body)
	}
	found := false
	for _, e := range s.hook.AllEntries() {
		if err, ok := e.Data["error"].(error); ok && e.Level == logrus.ErrorLevel && e.Data[fieldCode] == CodeBadVerifier &&
			strings.Contains(err.Error(), "kdf memory 1 TiB out of range") {
			found = true
		}
	}
	if !found {
		t.Error("the bad verifier's cause is not logged at Error")
	}
}

func TestLoginBackoff(t *testing.T) {
	s := newTestServer(t, Options{})
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	s.backoff.now = clk.Now
	do(t, s, jsonReq("POST", PathLogin, `{"password":"right"}`))
	do(t, s, req("POST", PathLogout, ""))

	wrong := func() result { return do(t, s, jsonReq("POST", PathLogin, `{"password":"wrong"}`)) }
	for i := range 5 {
		if res := wrong(); res.status != 401 {
			t.Fatalf("free failure %d: %d %s", i+1, res.status, res.body)
		}
	}
	var first []byte
	for _, wantWait := range []string{"1", "2", "4", "8", "16", "32", "60", "60"} {
		// Locked: wrong and right passwords alike get the same 429 body,
		// and the backend is not asked.
		calls := s.fake.kdfCalls.Load()
		for _, body := range []string{`{"password":"wrong"}`, `{"password":"right"}`} {
			res := do(t, s, jsonReq("POST", PathLogin, body))
			if res.status != 429 || res.code() != CodeTooManyAttempts || res.header.Get("Retry-After") != wantWait {
				t.Fatalf("locked (want wait %s): %d Retry-After=%q %s", wantWait, res.status, res.header.Get("Retry-After"), res.body)
			}
			if first == nil {
				first = res.body
			} else if string(res.body) != string(first) {
				t.Fatalf("429 bodies differ:\n%s\n%s", first, res.body)
			}
		}
		// change_password is the same oracle and shares the lock.
		res := do(t, s, jsonReq("POST", PathChangePassword, `{"old_password":"right","new_password":"x"}`))
		if res.status != 429 || res.code() != CodeTooManyAttempts || res.header.Get("Retry-After") != wantWait {
			t.Fatalf("change_password while locked: %d %s", res.status, res.body)
		}
		if s.fake.kdfCalls.Load() != calls {
			t.Fatal("the backend checked a password during the backoff")
		}
		clk.Advance(time.Duration(mustAtoi(t, wantWait)) * time.Second)
		if res := wrong(); res.status != 401 {
			t.Fatalf("after waiting %ss: %d %s", wantWait, res.status, res.body)
		}
	}
	// Wait out the lock; a success resets everything.
	clk.Advance(time.Minute)
	if res := do(t, s, jsonReq("POST", PathLogin, `{"password":"right"}`)); res.status != 200 {
		t.Fatalf("right password after the lock: %d %s", res.status, res.body)
	}
	for i := range 5 {
		if res := wrong(); res.status != 401 {
			t.Fatalf("after a success, failure %d: %d", i+1, res.status)
		}
	}
	if res := wrong(); res.status != 429 || res.header.Get("Retry-After") != "1" {
		t.Fatalf("6th failure after reset: %d %s", res.status, res.header.Get("Retry-After"))
	}
	// A wrong old password on change_password counts too.
	clk.Advance(time.Hour)
	for range 5 {
		do(t, s, jsonReq("POST", PathChangePassword, `{"old_password":"wrong","new_password":"x"}`))
	}
	if res := do(t, s, jsonReq("POST", PathLogin, `{"password":"right"}`)); res.status != 429 {
		t.Fatalf("change_password failures did not count: %d", res.status)
	}
}

func mustAtoi(t *testing.T, s string) int {
	var n int
	if _, err := fmt.Sscan(s, &n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestKDFBound floods login with 40 concurrent requests: the backend never
// runs two password checks at once, and once the free failures are used
// up the queued requests are refused without a check.
func TestKDFBound(t *testing.T) {
	s := newTestServer(t, Options{})
	do(t, s, jsonReq("POST", PathLogin, `{"password":"right"}`))
	s.fake.loginDelay = 10 * time.Millisecond
	s.fake.kdfCalls.Store(0)

	const n = 40
	var wg sync.WaitGroup
	counts := map[int]int{}
	var mu sync.Mutex
	for i := range n {
		wg.Go(func() {
			pw := "wrong"
			if i%10 == 0 {
				pw = "right"
			}
			res := do(t, s, jsonReq("POST", PathLogin, `{"password":"`+pw+`"}`))
			mu.Lock()
			counts[res.status]++
			mu.Unlock()
		})
	}
	wg.Wait()
	if m := s.fake.maxIn.Load(); m != 1 {
		t.Fatalf("%d password checks ran at once", m)
	}
	for st := range counts {
		if st != 200 && st != 401 && st != 429 {
			t.Errorf("unexpected status %d", st)
		}
	}
	if counts[200]+counts[401]+counts[429] != n || counts[429] == 0 {
		t.Fatalf("statuses %v", counts)
	}
	// Each success resets the count, so at most 5 failures per success
	// (4 successes) plus 5 reach the backend.
	if c := int(s.fake.kdfCalls.Load()); c > 4*6+5 || c != counts[200]+counts[401] {
		t.Fatalf("backend checked %d passwords; statuses %v", c, counts)
	}
}

// TestKDFWaitersBounded: beyond maxWaiting queued checks, logins get 503
// at once instead of piling up.
func TestKDFWaitersBounded(t *testing.T) {
	s := newTestServer(t, Options{})
	s.gate.maxWaiting = 3
	s.fake.loginDelay = 50 * time.Millisecond
	var wg sync.WaitGroup
	var mu sync.Mutex
	counts := map[int]int{}
	for range 20 {
		wg.Go(func() {
			res := do(t, s, jsonReq("POST", PathLogin, `{"password":"pw"}`))
			mu.Lock()
			counts[res.status]++
			mu.Unlock()
			if res.status == 503 && (res.code() != CodeBusy || res.header.Get("Retry-After") != "1") {
				t.Errorf("503 without busy code or Retry-After: %s", res.body)
			}
		})
	}
	wg.Wait()
	if counts[503] == 0 || counts[200] == 0 || counts[200]+counts[503] != 20 {
		t.Fatalf("statuses %v", counts)
	}
	if m := s.fake.maxIn.Load(); m != 1 {
		t.Fatalf("%d checks at once", m)
	}
}

func TestBearerToken(t *testing.T) {
	s := newTestServer(t, Options{Token: []byte("s3cr3t-token")})
	cases := []struct {
		name   string
		hdr    []string
		status int
	}{
		{"none", nil, 401},
		{"wrong", []string{"Authorization", "Bearer s3cr3t-tokeX"}, 401},
		{"prefix", []string{"Authorization", "Bearer s3cr3t"}, 401},
		{"basic", []string{"Authorization", "Basic czNjcjN0LXRva2Vu"}, 401},
		{"no scheme", []string{"Authorization", "s3cr3t-token"}, 401},
		{"twice", []string{"Authorization", "Bearer s3cr3t-token", "Authorization", "Bearer s3cr3t-token"}, 401},
		{"right", []string{"Authorization", "Bearer s3cr3t-token"}, 200},
		{"scheme case", []string{"Authorization", "bearer s3cr3t-token"}, 200},
	}
	for _, c := range cases {
		for _, p := range []string{PathStatus, PathLogout, "/nowhere"} {
			m := "GET"
			want := c.status
			if p == "/nowhere" && want == 200 {
				want = 404
			}
			res := do(t, s, req(m, p, "", c.hdr...))
			if res.status != want {
				t.Errorf("%s %s: %d %s", c.name, p, res.status, res.body)
			}
			if want == 401 && (res.code() != CodeUnauthorized || res.header.Get("WWW-Authenticate") == "") {
				t.Errorf("%s %s: %s %v", c.name, p, res.body, res.header)
			}
		}
	}
	if s.fake.logouts.Load() != 2 {
		t.Fatalf("logout ran %d times, want 2 (the authorized calls only)", s.fake.logouts.Load())
	}
}

func TestMatchPattern(t *testing.T) {
	s := newTestServer(t, Options{})
	for path, want := range map[string]string{
		"/api/system/logout":         "logout",
		"/api/system/logout/":        "unknown",
		"/api/system/tasks/abc":      "task",
		"/api/system/tasks/":         "unknown",
		"/api/system/tasks/a/cancel": "cancel_task",
		"/api/system/tasks//cancel":  "unknown",
		"/":                          "unknown",
		"":                           "unknown",
	} {
		if got := s.commandFor(path); got != want {
			t.Errorf("commandFor(%q) = %q, want %q", path, got, want)
		}
	}
}

func TestResetPassword(t *testing.T) {
	s := newTestServer(t, Options{})
	reset := func(body string) result { return do(t, s, jsonReq("POST", PathResetPassword, body)) }
	body := func(rk, pw string) string { return `{"recovery_key":"` + rk + `","new_password":"` + pw + `"}` }

	if res := reset(body(fakeRecoveryKey, "b")); res.status != 409 || res.code() != CodePasswordNotSet {
		t.Fatalf("reset before any password: %d %s", res.status, res.body)
	}
	do(t, s, jsonReq("POST", PathLogin, `{"password":"a"}`))
	if res := reset(body(fakeRecoveryKey, "b")); res.status != 409 || res.code() != CodeRecoveryKeyNotSet {
		t.Fatalf("reset without a recovery slot: %d %s", res.status, res.body)
	}
	s.fake.mu.Lock()
	s.fake.recovery = []byte(fakeRecoveryKey)
	s.fake.mu.Unlock()
	if res := reset(body("RK-wrong", "b")); res.status != 401 || res.code() != CodeInvalidRecoveryKey ||
		string(res.body) != `{"command":"reset_password","success":false,"message":"Invalid recovery key","error":"RESULT_INVALID_RECOVERY_KEY"}` {
		t.Fatalf("wrong recovery key: %d %s", res.status, res.body)
	}
	if res := reset(body("typo", "b")); res.status != 400 || res.code() != CodeBadRequest || !strings.Contains(string(res.body), "Malformed recovery key") {
		t.Fatalf("malformed recovery key: %d %s", res.status, res.body)
	}
	res := reset(body(fakeRecoveryKey, "b"))
	if res.status != 200 || string(res.body) != `{"command":"reset_password","success":true,"message":"Password reset"}` {
		t.Fatalf("reset: %d %s", res.status, res.body)
	}
	if string(s.fake.password) != "b" || !s.fake.keySet {
		t.Fatalf("backend after reset: password %q, key set %v", s.fake.password, s.fake.keySet)
	}
	for _, b := range []string{
		`{"recovery_key":"RK-right"}`,
		`{"recovery_key":"","new_password":"x"}`,
		`{"recovery_key":"RK-right","new_password":""}`,
		`{"recovery_key":"RK-right","new_password":"c","old_password":"b"}`,
		`{"recovery_key":7,"new_password":"c"}`,
	} {
		if res := reset(b); res.status != 400 || res.code() != CodeBadRequest {
			t.Errorf("%s: %d %s", b, res.status, res.body)
		}
	}
	for _, r := range []*http.Request{
		req("GET", PathResetPassword, ""),
		req("POST", PathResetPassword, body(fakeRecoveryKey, "x"), "Content-Type", "text/plain"),
		jsonReq("POST", PathResetPassword+"?recovery_key=x", body(fakeRecoveryKey, "x")),
		jsonReq("POST", PathResetPassword, body(fakeRecoveryKey, "x"), "Origin", "http://evil.example"),
		jsonReq("POST", PathResetPassword, body(fakeRecoveryKey, "x"), "Sec-Fetch-Site", "cross-site"),
		jsonReq("POST", PathResetPassword, body(fakeRecoveryKey, "x"), "Host", "evil.example:8080"),
	} {
		res := do(t, s, r)
		if res.status < 400 || res.env["command"] != "reset_password" {
			t.Errorf("%s %s %v: %d %s", r.Method, r.URL, r.Header, res.status, res.body)
		}
	}
	if string(s.fake.password) != "b" {
		t.Fatal("a refused request changed the password")
	}
	// Every secret the backend saw is zeroed after its request.
	s.fake.mu.Lock()
	defer s.fake.mu.Unlock()
	for i, b := range s.fake.received {
		if len(b) != 0 && !allZero(b) {
			t.Errorf("secret %d not zeroed after the request: %q", i, b)
		}
	}
}

// TestResetPasswordBackoff: wrong recovery keys count as failed logins
// (the same backoff, shared with login and change_password); while it
// holds, even the right recovery key gets 429 without a check; a malformed
// key (a typo caught by the checksum) tells nothing about the key and does
// not count.
func TestResetPasswordBackoff(t *testing.T) {
	s := newTestServer(t, Options{})
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	s.backoff.now = clk.Now
	do(t, s, jsonReq("POST", PathLogin, `{"password":"right"}`))
	s.fake.recovery = []byte(fakeRecoveryKey)
	reset := func(rk string) result {
		return do(t, s, jsonReq("POST", PathResetPassword, `{"recovery_key":"`+rk+`","new_password":"x"}`))
	}
	for range 10 {
		if res := reset("typo"); res.status != 400 {
			t.Fatalf("malformed: %d %s", res.status, res.body)
		}
	}
	for i := range 5 {
		if res := reset("RK-wrong"); res.status != 401 {
			t.Fatalf("free failure %d: %d %s", i+1, res.status, res.body)
		}
	}
	calls := s.fake.kdfCalls.Load()
	for _, r := range []*http.Request{
		jsonReq("POST", PathResetPassword, `{"recovery_key":"`+fakeRecoveryKey+`","new_password":"x"}`),
		jsonReq("POST", PathLogin, `{"password":"right"}`),
	} {
		res := do(t, s, r)
		if res.status != 429 || res.code() != CodeTooManyAttempts || res.header.Get("Retry-After") != "1" {
			t.Fatalf("%s while locked: %d %s", r.URL.Path, res.status, res.body)
		}
	}
	if s.fake.kdfCalls.Load() != calls {
		t.Fatal("the backend checked a secret during the backoff")
	}
	clk.Advance(time.Second)
	if res := reset(fakeRecoveryKey); res.status != 200 {
		t.Fatalf("right recovery key after the wait: %d %s", res.status, res.body)
	}
	// The success reset the count: five free failures again.
	for i := range 5 {
		if res := do(t, s, jsonReq("POST", PathLogin, `{"password":"wrong"}`)); res.status != 401 {
			t.Fatalf("after a reset, failure %d: %d", i+1, res.status)
		}
	}
}

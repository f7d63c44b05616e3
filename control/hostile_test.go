package control

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestHostileInput: every request a hostile page or a broken client can
// make gets a JSON envelope with the right status and code.
func TestHostileInput(t *testing.T) {
	big := `{"password":"` + strings.Repeat("a", maxBody) + `"}`
	chunked := func(r *http.Request) *http.Request { r.ContentLength = -1; return r }
	login := func(body string, hdr ...string) *http.Request { return jsonReq("POST", PathLogin, body, hdr...) }

	cases := []struct {
		name   string
		r      *http.Request
		status int
		code   string
		cmd    string
	}{
		// Methods and paths.
		{"PUT logout", req("PUT", PathLogout, ""), 405, CodeMethodNotAllowed, "logout"},
		{"GET login", req("GET", PathLogin, ""), 405, CodeMethodNotAllowed, "login"},
		{"GET login with query password", req("GET", PathLogin+"?password=hunter2", ""), 405, CodeMethodNotAllowed, "login"},
		{"DELETE status", req("DELETE", PathStatus, ""), 405, CodeMethodNotAllowed, "encryption-status"},
		{"HEAD status", req("HEAD", PathStatus, ""), 405, CodeMethodNotAllowed, "encryption-status"},
		{"OPTIONS login (preflight)", req("OPTIONS", PathLogin, "", "Origin", "http://evil.example",
			"Access-Control-Request-Method", "POST"), 405, CodeMethodNotAllowed, "login"},
		{"GET change_password", req("GET", PathChangePassword, ""), 405, CodeMethodNotAllowed, "change_password"},
		{"GET cancel", req("GET", "/api/system/tasks/t1/cancel", ""), 405, CodeMethodNotAllowed, "cancel_task"},
		{"unknown path", req("GET", "/api/system/nope", ""), 404, CodeNotFound, "unknown"},
		{"root", req("GET", "/", ""), 404, CodeNotFound, "unknown"},
		{"trailing slash", req("GET", PathLogout+"/", ""), 404, CodeNotFound, "unknown"},
		{"case", req("GET", "/API/system/logout", ""), 404, CodeNotFound, "unknown"},
		{"dot segment", req("GET", "/api/system/../system/logout", ""), 404, CodeNotFound, "unknown"},

		// Content types.
		{"login text/plain", req("POST", PathLogin, `{"password":"x"}`, "Content-Type", "text/plain"), 415, CodeUnsupportedMediaType, "login"},
		{"login form", req("POST", PathLogin, `password=x`, "Content-Type", "application/x-www-form-urlencoded"), 415, CodeUnsupportedMediaType, "login"},
		{"login multipart", req("POST", PathLogin, "--b--", "Content-Type", "multipart/form-data; boundary=b"), 415, CodeUnsupportedMediaType, "login"},
		{"login no content type", req("POST", PathLogin, `{"password":"x"}`), 415, CodeUnsupportedMediaType, "login"},
		{"login json latin1", req("POST", PathLogin, `{"password":"x"}`, "Content-Type", "application/json; charset=iso-8859-1"), 415, CodeUnsupportedMediaType, "login"},
		{"login json+junk param", req("POST", PathLogin, `{"password":"x"}`, "Content-Type", "application/json; x=y"), 415, CodeUnsupportedMediaType, "login"},
		{"login json charset ok", req("POST", PathLogin, `{"password":"x"}`, "Content-Type", "Application/JSON; charset=UTF-8"), 200, "", "login"},
		{"change text/plain", req("POST", PathChangePassword, `{}`, "Content-Type", "text/plain"), 415, CodeUnsupportedMediaType, "change_password"},

		// Passwords never come from the URL.
		{"query password", jsonReq("POST", PathLogin+"?password=x", ""), 400, CodeBadRequest, "login"},
		{"query and body", jsonReq("POST", PathLogin+"?password=hunter2", `{"password":"x"}`), 400, CodeBadRequest, "login"},
		{"any query", jsonReq("POST", PathLogin+"?x=1", `{"password":"x"}`), 400, CodeBadRequest, "login"},
		{"query on change", jsonReq("POST", PathChangePassword+"?old_password=x", `{"old_password":"x","new_password":"y"}`), 400, CodeBadRequest, "change_password"},

		// Sizes.
		{"too large", login(big), 413, CodeTooLarge, "login"},
		{"too large chunked", chunked(login(big)), 413, CodeTooLarge, "login"},
		{"exactly the limit", login(`{"password":"` + strings.Repeat("b", maxBody-16) + `"}`), 401, CodeInvalidPassword, "login"},

		// Malformed bodies.
		{"empty body", login(""), 400, CodeBadRequest, "login"},
		{"truncated", login(`{"password":`), 400, CodeBadRequest, "login"},
		{"trailing garbage", login(`{"password":"x"} x`), 400, CodeBadRequest, "login"},
		{"two objects", login(`{"password":"x"}{"password":"x"}`), 400, CodeBadRequest, "login"},
		{"array", login(`["x"]`), 400, CodeBadRequest, "login"},
		{"null", login(`null`), 400, CodeBadRequest, "login"},
		{"string", login(`"x"`), 400, CodeBadRequest, "login"},
		{"unknown field", login(`{"password":"x","admin":true}`), 400, CodeBadRequest, "login"},
		{"wrong case field", login(`{"Password":"x"}`), 400, CodeBadRequest, "login"},
		{"missing field", login(`{}`), 400, CodeBadRequest, "login"},
		{"number", login(`{"password":123}`), 400, CodeBadRequest, "login"},
		{"json null password", login(`{"password":null}`), 400, CodeBadRequest, "login"},
		{"object password", login(`{"password":{"a":1}}`), 400, CodeBadRequest, "login"},
		{"empty password", login(`{"password":""}`), 400, CodeBadRequest, "login"},
		{"invalid utf-8", login("{\"password\":\"\xff\xfe\"}"), 400, CodeBadRequest, "login"},
		{"lone surrogate", login(`{"password":"\ud800"}`), 400, CodeBadRequest, "login"},
		{"reversed surrogates", login(`{"password":"\udc00\ud800"}`), 400, CodeBadRequest, "login"},
		{"raw control char", login("{\"password\":\"a\x01\"}"), 400, CodeBadRequest, "login"},
		{"bad escape", login(`{"password":"\q"}`), 400, CodeBadRequest, "login"},
		{"deep nesting", login(strings.Repeat("[", 20000)), 400, CodeBadRequest, "login"},

		// Host (DNS rebinding): on every path, read-only ones included.
		{"evil host", req("GET", PathStatus, "", "Host", "evil.example:8080"), 403, CodeForbidden, "encryption-status"},
		{"evil host logout", req("GET", PathLogout, "", "Host", "evil.example"), 403, CodeForbidden, "logout"},
		{"evil host 404", req("GET", "/x", "", "Host", "evil.example"), 403, CodeForbidden, "unknown"},
		{"no port", req("GET", PathStatus, "", "Host", "localhost"), 403, CodeForbidden, "encryption-status"},
		{"wrong port", req("GET", PathStatus, "", "Host", "127.0.0.1:9999"), 403, CodeForbidden, "encryption-status"},
		{"empty port", req("GET", PathStatus, "", "Host", "localhost:"), 403, CodeForbidden, "encryption-status"},
		{"fqdn localhost", req("GET", PathStatus, "", "Host", "localhost.:8080"), 403, CodeForbidden, "encryption-status"},
		{"subdomain", req("GET", PathStatus, "", "Host", "a.localhost:8080"), 403, CodeForbidden, "encryption-status"},
		{"other loopback ip", req("GET", PathStatus, "", "Host", "127.0.0.2:8080"), 403, CodeForbidden, "encryption-status"},
		{"decimal ip", req("GET", PathStatus, "", "Host", "2130706433:8080"), 403, CodeForbidden, "encryption-status"},
		{"bracketed name", req("GET", PathStatus, "", "Host", "[localhost]:8080"), 403, CodeForbidden, "encryption-status"},
		{"ipv6 unbracketed", req("GET", PathStatus, "", "Host", "::1:8080"), 403, CodeForbidden, "encryption-status"},
		{"empty host", req("GET", PathStatus, "", "Host", ""), 403, CodeForbidden, "encryption-status"},
		{"localhost ok", req("GET", PathStatus, "", "Host", "localhost:8080"), 200, "", "encryption-status"},
		{"LOCALHOST ok", req("GET", PathStatus, "", "Host", "LOCALHOST:8080"), 200, "", "encryption-status"},
		{"ipv6 ok", req("GET", PathStatus, "", "Host", "[::1]:8080"), 200, "", "encryption-status"},

		// Origin and Sec-Fetch-Site on state-changing calls (GET logout is one).
		{"img logout", req("GET", PathLogout, "", "Sec-Fetch-Site", "cross-site", "Sec-Fetch-Dest", "image"), 403, CodeForbidden, "logout"},
		{"same-site logout", req("GET", PathLogout, "", "Sec-Fetch-Site", "same-site"), 403, CodeForbidden, "logout"},
		{"foreign origin logout", req("POST", PathLogout, "", "Origin", "http://evil.example"), 403, CodeForbidden, "logout"},
		{"null origin", req("POST", PathLogout, "", "Origin", "null"), 403, CodeForbidden, "logout"},
		{"https origin", req("POST", PathLogout, "", "Origin", "https://localhost:8080"), 403, CodeForbidden, "logout"},
		{"other local port origin", req("POST", PathLogout, "", "Origin", "http://localhost:3000"), 403, CodeForbidden, "logout"},
		{"origin with path", req("POST", PathLogout, "", "Origin", "http://localhost:8080/x"), 403, CodeForbidden, "logout"},
		{"two origins", req("POST", PathLogout, "", "Origin", "http://localhost:8080", "Origin", "http://evil.example"), 403, CodeForbidden, "logout"},
		{"foreign origin login", login(`{"password":"x"}`, "Origin", "http://evil.example"), 403, CodeForbidden, "login"},
		{"cross-site login", login(`{"password":"x"}`, "Sec-Fetch-Site", "cross-site"), 403, CodeForbidden, "login"},
		{"cross-site encrypt", req("GET", PathEncryptExisting, "", "Sec-Fetch-Site", "cross-site"), 403, CodeForbidden, "encrypt_existing_files"},
		{"cross-site cancel", req("POST", "/api/system/tasks/t1/cancel", "", "Sec-Fetch-Site", "cross-site"), 403, CodeForbidden, "cancel_task"},
		{"cross-site change", jsonReq("POST", PathChangePassword, `{}`, "Origin", "http://evil.example"), 403, CodeForbidden, "change_password"},
		{"own origin logout", req("POST", PathLogout, "", "Origin", "http://localhost:8080", "Sec-Fetch-Site", "same-origin"), 200, "", "logout"},
		{"own origin ipv6", req("POST", PathLogout, "", "Origin", "http://[::1]:8080"), 200, "", "logout"},
		{"address bar logout", req("GET", PathLogout, "", "Sec-Fetch-Site", "none"), 200, "", "logout"},
		{"old browser img logout", req("GET", PathLogout, "", "Referer", "http://evil.example/page"), 403, CodeForbidden, "logout"},
		{"https referer", req("GET", PathLogout, "", "Referer", "https://localhost:8080/"), 403, CodeForbidden, "logout"},
		{"referer userinfo trick", req("GET", PathLogout, "", "Referer", "http://localhost:8080@evil.example/"), 403, CodeForbidden, "logout"},
		{"own referer", req("GET", PathLogout, "", "Referer", "http://localhost:8080/api/system/encryption-status?x=1"), 200, "", "logout"},
		{"own referer bare", req("GET", PathLogout, "", "Referer", "http://127.0.0.1:8080"), 200, "", "logout"},
		// Reads are not state-changing: a foreign page cannot read the
		// answer anyway (no CORS headers, and the Host check stops rebinding).
		{"cross-site status", req("GET", PathStatus, "", "Sec-Fetch-Site", "cross-site", "Origin", "http://evil.example"), 200, "", "encryption-status"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newTestServer(t, Options{})
			s.fake.password = []byte("x") // a verifier exists; "x" is right
			res := do(t, s, c.r)
			if res.status != c.status || res.code() != c.code || res.env["command"] != c.cmd {
				t.Fatalf("got %d %q %q, want %d %q %q: %s", res.status, res.code(), res.env["command"],
					c.status, c.code, c.cmd, res.body)
			}
			if c.status == 405 {
				// Allow lists exactly the methods that work: each answers
				// something else than 405, and OPTIONS is not among them.
				allow := res.header.Get("Allow")
				if allow == "" || strings.Contains(allow, "OPTIONS") {
					t.Errorf("405 with Allow %q", allow)
				}
				for _, m := range strings.Split(allow, ", ") {
					if r := do(t, s, req(m, c.r.URL.Path, "")); r.status == 405 {
						t.Errorf("Allow lists %s, which answers 405", m)
					}
				}
			}
			if c.status >= 400 && c.status != 401 && s.fake.kdfCalls.Load() != 0 {
				t.Error("a rejected request reached the password check")
			}
			if c.status == 403 && s.fake.logouts.Load() != 0 {
				t.Error("a refused logout cleared the key")
			}
		})
	}
}

// TestPasswordBytes: unicode, NUL and escapes reach the backend as the
// exact UTF-8 bytes; every copy is zeroed when the request is done.
func TestPasswordBytes(t *testing.T) {
	s := newTestServer(t, Options{})
	want := "pä\x00ss🔑\"\\/\n\u2028"
	res := do(t, s, jsonReq("POST", PathLogin, `{"password":"p\u00e4\u0000ss\ud83d\udd11\"\\\/\n`+"\u2028"+`"}`))
	if res.status != 200 || string(s.fake.password) != want {
		t.Fatalf("first login: %d %s; backend got %q", res.status, res.body, s.fake.password)
	}
	do(t, s, req("POST", PathLogout, ""))
	// The same password spelled differently in JSON is the same password.
	raw, _ := json.Marshal(want)
	res = do(t, s, jsonReq("POST", PathLogin, `{"password":`+string(raw)+`}`))
	if res.status != 200 || !s.fake.keySet {
		t.Fatalf("same password, other spelling: %d %s", res.status, res.body)
	}
	do(t, s, jsonReq("POST", PathChangePassword, `{"old_password":`+string(raw)+`,"new_password":"\u0000"}`))
	if string(s.fake.password) != "\x00" {
		t.Fatalf("change to NUL: %q", s.fake.password)
	}
	s.fake.mu.Lock()
	defer s.fake.mu.Unlock()
	if len(s.fake.received) != 4 {
		t.Fatalf("backend saw %d passwords", len(s.fake.received))
	}
	for i, b := range s.fake.received {
		if len(b) != 0 && !allZero(b) {
			t.Errorf("password %d not zeroed after the request: %q", i, b)
		}
	}
}

func TestSecretDecoding(t *testing.T) {
	for _, in := range []string{"", "a", "ä", "\x00", "🔑", "\u2028", "\"\\/\b\f\n\r\t", "\uffff", "\U0010ffff", "\ufffd",
		strings.Repeat("ß", 100)} {
		lit, _ := json.Marshal(in)
		var s secret
		if err := json.Unmarshal(lit, &s); err != nil || string(s) != in {
			t.Errorf("%q: got %q, %v", in, s, err)
		}
	}
	for _, lit := range []string{`"a"b"`, `"\u12"`, `"\ud800\u0041"`, `"\udfff"`, "\"\xc3\"", "\"\xed\xa0\x80\"", `"\x"`} {
		var s secret
		if err := s.UnmarshalJSON([]byte(lit)); err == nil {
			t.Errorf("%q decoded to %q", lit, s)
		}
	}
}

// FuzzSecret: the decoder never panics, and agrees with encoding/json on
// every literal it accepts.
func FuzzSecret(f *testing.F) {
	for _, s := range []string{`"a"`, `"\u00e4\ud83d\udd11"`, `"\""`, "\"\xff\"", `"\ud800"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, lit []byte) {
		var s secret
		if err := s.UnmarshalJSON(lit); err != nil {
			return
		}
		var want string
		if err := json.Unmarshal(lit, &want); err != nil {
			t.Fatalf("accepted %q that encoding/json rejects: %v", lit, err)
		}
		if !utf8.Valid(s) || string(s) != want {
			t.Fatalf("%q: got %q, encoding/json %q", lit, s, want)
		}
	})
}

// TestManyParallelRequests: 1000 requests at once through the handler, each
// gets its own correct JSON reply.
func TestManyParallelRequests(t *testing.T) {
	s := newTestServer(t, Options{})
	s.fake.password = []byte("x")
	type c struct {
		mk     func() *http.Request
		status int
	}
	kinds := []c{
		{func() *http.Request { return req("GET", PathStatus, "") }, 200},
		{func() *http.Request { return req("GET", PathLogout, "") }, 200},
		{func() *http.Request { return req("GET", "/nope", "") }, 404},
		{func() *http.Request { return req("PUT", PathLogin, "") }, 405},
		{func() *http.Request { return req("GET", PathStatus, "", "Host", "evil.example") }, 403},
		{func() *http.Request { return req("POST", PathLogin, `{}`, "Content-Type", "text/plain") }, 415},
		{func() *http.Request { return jsonReq("POST", PathLogin, `{"password":1}`) }, 400},
	}
	errs := make(chan string, 1000)
	done := make(chan struct{})
	for i := range 1000 {
		go func() {
			defer func() { done <- struct{}{} }()
			k := kinds[i%len(kinds)]
			w := httptest.NewRecorder()
			s.ServeHTTP(w, k.mk())
			var env map[string]any
			if w.Code != k.status || json.Unmarshal(w.Body.Bytes(), &env) != nil || env["command"] == nil {
				errs <- w.Body.String()
			}
		}()
	}
	for range 1000 {
		<-done
	}
	close(errs)
	for e := range errs {
		t.Errorf("bad reply: %s", e)
	}
}

// Make sure a body read error that is not a size problem is a 400 too.
func TestBodyReadError(t *testing.T) {
	s := newTestServer(t, Options{})
	r := jsonReq("POST", PathLogin, "")
	r.Body = io.NopCloser(io.MultiReader(bytes.NewReader([]byte(`{"pass`)), errReader{}))
	r.ContentLength = -1
	res := do(t, s, r)
	if res.status != 400 || res.code() != CodeBadRequest {
		t.Fatalf("got %d %s", res.status, res.body)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, io.ErrClosedPipe }

package integration

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// seedLogoutBody is the response of /api/system/logout, byte for byte as
// the seed document gives it.
const seedLogoutBody = `{"command":"logout","success":true,"message":"File encryption key cleared","key_set":false}`

const password = "correct horse battery staple"

func fileHash(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// TestSeedLogout checks every statement of the seed page for
// /api/system/logout against the real daemon.
func TestSeedLogout(t *testing.T) {
	d := newDaemon(t)
	d.start()
	d.mustLogin(password)

	secret := bytes.Repeat([]byte("TOP-SECRET-PAYLOAD "), 500)
	encPath := filepath.Join(d.mnt, "dir", "secret.bin")
	os.MkdirAll(filepath.Dir(encPath), 0o755)
	if err := os.WriteFile(encPath, secret, 0o644); err != nil {
		t.Fatal(err)
	}
	plainPath := filepath.Join(d.mnt, "notes.txt")
	if err := os.WriteFile(plainPath, []byte("plain text"), 0o644); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(d.data, "dir", "secret.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte("TOP-SECRET")) || !bytes.HasPrefix(raw, []byte("MTDENC")) {
		t.Fatal("a .bin file written while logged in is not encrypted on disk")
	}
	verifier := filepath.Join(d.data, "auth", "verifier.bin")
	vBefore := fileHash(t, verifier)

	// An fd opened before logout.
	early, err := os.Open(encPath)
	if err != nil {
		t.Fatal(err)
	}
	defer early.Close()
	buf := make([]byte, 64)
	if _, err := early.ReadAt(buf, 0); err != nil || !bytes.HasPrefix(buf, []byte("TOP-SECRET")) {
		t.Fatalf("read before logout: %v %q", err, buf)
	}

	for _, method := range []string{"GET", "POST", "GET"} { // idempotent, both methods
		r := d.do(method, "/api/system/logout", "", "")
		if r.Status != 200 || string(bytes.TrimSpace(r.Raw)) != seedLogoutBody {
			t.Fatalf("%s logout: %d %q, want 200 %s", method, r.Status, r.Raw, seedLogoutBody)
		}
		if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Fatalf("Content-Type %q", ct)
		}
	}

	// "Encrypted .bin files can no longer be decrypted."
	if _, err := os.ReadFile(encPath); !errors.Is(err, syscall.EACCES) {
		t.Fatalf("read after logout: %v, want EACCES", err)
	}
	if n, err := early.ReadAt(buf, 0); !errors.Is(err, syscall.EACCES) {
		t.Fatalf("read on an fd opened before logout: %d bytes, %v; want EACCES", n, err)
	}
	// stat still shows the plaintext size.
	if fi, err := os.Stat(encPath); err != nil || fi.Size() != int64(len(secret)) {
		t.Fatalf("stat after logout: %v, %v", fi, err)
	}
	// "New .bin writes go out plaintext."
	newBin := filepath.Join(d.mnt, "new.bin")
	if err := os.WriteFile(newBin, []byte("written while logged out"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(d.data, "new.bin")); string(got) != "written while logged out" {
		t.Fatalf("new .bin while logged out is not plaintext on disk: %q", got)
	}
	// Writing into an encrypted file fails and changes nothing.
	encBefore := fileHash(t, filepath.Join(d.data, "dir", "secret.bin"))
	if f, err := os.OpenFile(encPath, os.O_WRONLY, 0); err == nil {
		_, werr := f.WriteAt([]byte("x"), 0)
		f.Close()
		if !errors.Is(werr, syscall.EACCES) {
			t.Fatalf("write to an encrypted file while logged out: %v", werr)
		}
	} else if !errors.Is(err, syscall.EACCES) {
		t.Fatalf("open for write while logged out: %v", err)
	}
	if fileHash(t, filepath.Join(d.data, "dir", "secret.bin")) != encBefore {
		t.Fatal("encrypted file changed on disk while logged out")
	}
	// "Files that were already plaintext on disk continue to work."
	if got, err := os.ReadFile(plainPath); err != nil || string(got) != "plain text" {
		t.Fatalf("plaintext file after logout: %q %v", got, err)
	}
	if err := os.WriteFile(plainPath, []byte("still works"), 0o644); err != nil {
		t.Fatal(err)
	}
	// "No file on disk is modified or deleted": the verifier is untouched.
	if fileHash(t, verifier) != vBefore {
		t.Fatal("logout modified the verifier")
	}
	if st := d.status(false); st["key_set"] != false || st["password_set"] != true {
		t.Fatalf("status after logout: %v", st)
	}

	// "The next login with the same password will succeed normally."
	d.mustLogin(password)
	if got, err := os.ReadFile(encPath); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("read after re-login: %v", err)
	}
	if _, err := early.ReadAt(buf, 0); err != nil {
		t.Fatalf("old fd after re-login: %v", err)
	}
	if st := d.status(false); st["key_set"] != true {
		t.Fatalf("status after login: %v", st)
	}
	if strings.Contains(d.out.String(), password) {
		t.Fatal("the password appears in the daemon's output")
	}
}

func TestLoginErrorsAndRestart(t *testing.T) {
	d := newDaemon(t)
	d.start()
	r := d.login(password)
	if r.Status != 200 || r.JSON["created"] != true {
		t.Fatalf("first login: %d %s", r.Status, r.Raw)
	}
	if err := os.WriteFile(filepath.Join(d.mnt, "a.bin"), []byte("alpha"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := d.login("wrong password"); r.Status != 401 || r.JSON["error"] != "RESULT_INVALID_PASSWORD" {
		t.Fatalf("wrong password: %d %s", r.Status, r.Raw)
	}
	if st := d.status(false); st["key_set"] != true {
		t.Fatal("a wrong password cleared the key")
	}
	if r := d.login(password); r.Status != 200 {
		t.Fatalf("login again: %d %s", r.Status, r.Raw)
	}

	// SIGTERM: exit 0, mount gone, then restart with the same password.
	if err := d.stop(); err != nil {
		t.Fatalf("SIGTERM exit: %v\n%s", err, d.out.String())
	}
	if isMounted(d.mnt) {
		t.Fatal("mount left after SIGTERM")
	}
	if strings.Contains(d.out.String(), password) {
		t.Fatal("the password appears in the daemon's output")
	}
	d.start()
	if st := d.status(false); st["key_set"] != false || st["password_set"] != true {
		t.Fatalf("status after restart: %v", st)
	}
	if _, err := os.ReadFile(filepath.Join(d.mnt, "a.bin")); !errors.Is(err, syscall.EACCES) {
		t.Fatalf("read before login after restart: %v", err)
	}
	if r := d.login(password); r.Status != 200 || r.JSON["created"] == true {
		t.Fatalf("login after restart: %d %s", r.Status, r.Raw)
	}
	if got, err := os.ReadFile(filepath.Join(d.mnt, "a.bin")); err != nil || string(got) != "alpha" {
		t.Fatalf("read after restart: %q %v", got, err)
	}
}

// TestLostVerifier: encrypted files but no verifier → first login refused.
func TestLostVerifier(t *testing.T) {
	d := newDaemon(t)
	d.start()
	d.mustLogin(password)
	os.WriteFile(filepath.Join(d.mnt, "x.bin"), []byte("data"), 0o600)
	d.stop()
	if err := os.Remove(filepath.Join(d.data, "auth", "verifier.bin")); err != nil {
		t.Fatal(err)
	}
	d.start()
	if r := d.login("another password"); r.Status != 409 {
		t.Fatalf("login with encrypted files but no verifier: %d %s", r.Status, r.Raw)
	}
	if _, err := os.Stat(filepath.Join(d.data, "auth", "verifier.bin")); err == nil {
		t.Fatal("a new verifier was created over orphaned encrypted files")
	}
}

func TestGuards(t *testing.T) {
	d := newDaemon(t)
	d.start()
	cases := []struct {
		name        string
		method      string
		path        string
		contentType string
		body        string
		hdr         []string
		status      int
	}{
		{"foreign host", "GET", "/api/system/encryption-status", "", "", []string{"Host", "evil.example:8080"}, 403},
		{"rebinding host on logout", "GET", "/api/system/logout", "", "", []string{"Host", "attacker.test"}, 403},
		{"foreign origin logout", "GET", "/api/system/logout", "", "", []string{"Origin", "http://evil.example"}, 403},
		{"cross-site fetch", "POST", "/api/system/login", "application/json", `{"password":"x"}`, []string{"Sec-Fetch-Site", "cross-site"}, 403},
		{"form post login", "POST", "/api/system/login", "application/x-www-form-urlencoded", "password=x", nil, 415},
		{"text/plain login", "POST", "/api/system/login", "text/plain", `{"password":"x"}`, nil, 415},
		{"password in query", "POST", "/api/system/login?password=x", "application/json", `{}`, nil, 400},
		{"GET login", "GET", "/api/system/login", "", "", nil, 405},
		{"unknown path", "GET", "/api/system/nope", "", "", nil, 404},
		{"oversized body", "POST", "/api/system/login", "application/json", `{"password":"` + strings.Repeat("a", 70000) + `"}`, nil, 413},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := d.do(tc.method, tc.path, tc.contentType, tc.body, tc.hdr...)
			if r.Status != tc.status {
				t.Fatalf("status %d, want %d: %s", r.Status, tc.status, r.Raw)
			}
			if r.JSON["success"] != false || r.JSON["error"] == nil {
				t.Fatalf("error body lacks success=false/error: %s", r.Raw)
			}
		})
	}
	if st := d.status(false); st["password_set"] != false {
		t.Fatal("a refused request set a password")
	}
}

package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/crypto"
	"github.com/mountd/mountd/datadir"
)

// cheapKDF are the flags for the cheapest Argon2id parameters allowed.
var cheapKDF = []string{"--kdf-time", "2", "--kdf-memory", "19", "--kdf-threads", "1"}

// mountd runs the command line with stdin and returns exit code, stdout
// and stderr.
func mountd(t testing.TB, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

var recoveryKeyRE = regexp.MustCompile(`^([0-9A-Z]{4}-){14}[0-9A-Z]{4}\n$`)

// initData runs mountd init on a new data directory and returns it with
// the recovery key.
func initData(t testing.TB, password string) (data, rk string) {
	t.Helper()
	data = filepath.Join(t.TempDir(), "data")
	code, out, errs := mountd(t, password+"\n", append([]string{"init", "--data", data}, cheapKDF...)...)
	if code != 0 || !recoveryKeyRE.MatchString(out) {
		t.Fatalf("init: exit %d, stdout %q, stderr %s", code, out, errs)
	}
	if !strings.Contains(errs, "shown only this once") || !strings.Contains(errs, "offline") {
		t.Fatalf("init: no store-offline notice: %s", errs)
	}
	return data, strings.TrimSpace(out)
}

// keyring unlocks the data directory's verifier with password.
func keyring(t testing.TB, data, password string) *crypto.Keyring {
	t.Helper()
	v, err := crypto.ReadVerifier(crypto.VerifierPath(data))
	if err != nil {
		t.Fatal(err)
	}
	kr := crypto.NewKeyring()
	if err := kr.Unlock(v, []byte(password)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kr.Clear)
	return kr
}

// writeEncrypted stores plain encrypted at rel under data.
func writeEncrypted(t testing.TB, kr *crypto.Keyring, data, rel string, plain []byte) {
	t.Helper()
	p := filepath.Join(data, rel)
	os.MkdirAll(filepath.Dir(p), 0o755)
	b, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	f, err := crypto.CreateFile(kr, b)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(plain, 0); err != nil {
		t.Fatal(err)
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// TestRecoveryRoundTripCLI: init -> files written under the key -> the
// password is "forgotten" -> reset-password with the recovery key -> fsck
// and export with the new password read the old files; the old password
// is refused, the recovery key keeps working.
func TestRecoveryRoundTripCLI(t *testing.T) {
	data, rk := initData(t, "forgotten")
	content := randomBytes(3*crypto.BlockSize + 17)
	writeEncrypted(t, keyring(t, data, "forgotten"), data, "docs/a.bin", content)

	// A typo in the key is caught by its checksum and named.
	typo := []byte(rk)
	typo[6] = map[bool]byte{true: 'A', false: 'B'}[typo[6] != 'A']
	code, _, errs := mountd(t, string(typo)+"\nnew\n", "reset-password", "--data", data)
	if code != exitDenied || !strings.Contains(errs, "group 2 is probably mistyped") {
		t.Fatalf("reset with a typo: exit %d: %s", code, errs)
	}
	other := crypto.FormatRecoveryKey(randomBytes(crypto.RecoveryKeySize))
	code, _, errs = mountd(t, string(other)+"\nnew\n", "reset-password", "--data", data)
	if code != exitDenied || !strings.Contains(errs, "wrong recovery key") {
		t.Fatalf("reset with another key: exit %d: %s", code, errs)
	}
	code, out, errs := mountd(t, strings.ToLower(rk)+"\nnew password\n", append([]string{"reset-password", "--data", data}, cheapKDF...)...)
	if code != 0 || !strings.Contains(out, "Password reset") {
		t.Fatalf("reset: exit %d: %s %s", code, out, errs)
	}
	if code, _, errs := mountd(t, "forgotten\n", "fsck", "--data", data); code != exitDenied {
		t.Fatalf("fsck with the old password: exit %d: %s", code, errs)
	}
	if code, out, errs := mountd(t, "new password\n", "fsck", "--data", data); code != 0 || !strings.Contains(out, "clean") {
		t.Fatalf("fsck with the new password: exit %d: %s %s", code, out, errs)
	}
	if code, out, errs := mountd(t, rk+"\n", "fsck", "--recovery", "--data", data); code != 0 {
		t.Fatalf("fsck with the recovery key: exit %d: %s %s", code, out, errs)
	}
	out2 := filepath.Join(t.TempDir(), "out")
	if code, out, errs := mountd(t, "new password\n", "export", "--data", data, "--out", out2); code != 0 {
		t.Fatalf("export: exit %d: %s %s", code, out, errs)
	}
	if got, err := os.ReadFile(filepath.Join(out2, "docs/a.bin")); err != nil || !bytes.Equal(got, content) {
		t.Fatalf("exported content differs (%d bytes, %v)", len(got), err)
	}
}

func TestInitRefusals(t *testing.T) {
	data, _ := initData(t, "pw")
	before, _ := os.ReadFile(crypto.VerifierPath(data))
	code, _, errs := mountd(t, "other\n", append([]string{"init", "--data", data}, cheapKDF...)...)
	if code != exitError || !strings.Contains(errs, "already has a password") {
		t.Fatalf("second init: exit %d: %s", code, errs)
	}
	if after, _ := os.ReadFile(crypto.VerifierPath(data)); !bytes.Equal(before, after) {
		t.Fatal("a refused init changed the verifier")
	}
	// Encrypted files without a verifier: a new key could not read them.
	kr := keyring(t, data, "pw")
	writeEncrypted(t, kr, data, "deep/er/x.bin", []byte("x"))
	os.Remove(crypto.VerifierPath(data))
	code, _, errs = mountd(t, "pw\n", append([]string{"init", "--data", data}, cheapKDF...)...)
	if code != exitError || !strings.Contains(errs, "deep/er/x.bin") || !strings.Contains(errs, "restore auth/verifier.bin") {
		t.Fatalf("init over encrypted files: exit %d: %s", code, errs)
	}
	if _, err := os.Stat(crypto.VerifierPath(data)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("a verifier was created")
	}
	// Empty password; bad KDF flags (checked before anything is made).
	fresh := filepath.Join(t.TempDir(), "fresh")
	if code, _, errs := mountd(t, "\n", append([]string{"init", "--data", fresh}, cheapKDF...)...); code == 0 || !strings.Contains(errs, "empty") {
		t.Fatalf("empty password: exit %d: %s", code, errs)
	}
	if code, _, _ := mountd(t, "pw\n", "init", "--data", fresh+"2", "--kdf-memory", "4"); code != exitUsage {
		t.Fatalf("weak KDF: exit %d", code)
	}
	if _, err := os.Stat(fresh + "2"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("init with bad flags created the data directory")
	}
}

func TestInitWithoutRecoveryKeyThenRecoveryKey(t *testing.T) {
	data := filepath.Join(t.TempDir(), "d")
	code, out, errs := mountd(t, "pw\n", append([]string{"init", "--data", data, "--no-recovery-key"}, cheapKDF...)...)
	if code != 0 || out != "" || !strings.Contains(errs, "No recovery key") {
		t.Fatalf("init --no-recovery-key: exit %d, stdout %q: %s", code, out, errs)
	}
	code, out, _ = mountd(t, "", "info", "--data", data, "--json")
	var rep infoReport
	if code != 0 || json.Unmarshal([]byte(out), &rep) != nil || rep.Verifier == nil || !slices.Equal(rep.Verifier.Slots, []string{"password"}) {
		t.Fatalf("info: exit %d: %s", code, out)
	}
	rk := crypto.FormatRecoveryKey(randomBytes(crypto.RecoveryKeySize))
	if code, _, errs := mountd(t, string(rk)+"\nnew\n", "reset-password", "--data", data); code != exitDenied || !strings.Contains(errs, "no recovery key") {
		t.Fatalf("reset without a recovery slot: exit %d: %s", code, errs)
	}
	if code, _, errs := mountd(t, "wrong\n", "recovery-key", "--data", data); code != exitDenied {
		t.Fatalf("recovery-key with a wrong password: exit %d: %s", code, errs)
	}
	code, rk1, errs := mountd(t, "pw\n", "recovery-key", "--data", data)
	if code != 0 || !recoveryKeyRE.MatchString(rk1) || strings.Contains(errs, "replaces") {
		t.Fatalf("recovery-key: exit %d %q: %s", code, rk1, errs)
	}
	code, rk2, errs := mountd(t, "pw\n", "recovery-key", "--data", data)
	if code != 0 || !recoveryKeyRE.MatchString(rk2) || rk1 == rk2 || !strings.Contains(errs, "no longer works") {
		t.Fatalf("second recovery-key: exit %d %q: %s", code, rk2, errs)
	}
	if code, _, _ := mountd(t, rk1, "fsck", "--recovery", "--data", data); code != exitDenied {
		t.Fatalf("the replaced recovery key still works: exit %d", code)
	}
	if code, _, errs := mountd(t, rk2, "fsck", "--recovery", "--data", data); code != 0 {
		t.Fatalf("the new recovery key: exit %d: %s", code, errs)
	}
}

// TestRecoveryKeyUpgradesV1: a version 1 verifier (the checked-in vector)
// gets a recovery slot, becoming version 2, and keeps its password.
func TestRecoveryKeyUpgradesV1(t *testing.T) {
	data := t.TempDir()
	v1, err := os.ReadFile("../../crypto/testdata/kat-verifier.bin")
	if err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(data, "auth"), 0o700)
	os.WriteFile(crypto.VerifierPath(data), v1, 0o600)
	const pw = "mountd known-answer password ü"
	code, rk, errs := mountd(t, pw+"\n", "recovery-key", "--data", data)
	if code != 0 {
		t.Fatalf("recovery-key on v1: exit %d: %s", code, errs)
	}
	v, _ := crypto.ReadVerifier(crypto.VerifierPath(data))
	if v.Version != 2 || !v.Recovery {
		t.Fatalf("after recovery-key: version %d, recovery %v", v.Version, v.Recovery)
	}
	keyring(t, data, pw)
	if code, _, errs := mountd(t, rk, "fsck", "--recovery", "--data", data); code != 0 {
		t.Fatalf("fsck with the new recovery key: %d %s", code, errs)
	}
}

func TestPasswordFile(t *testing.T) {
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "pw")
	os.WriteFile(pwFile, []byte("from a file\n"), 0o600)
	args := func(d string) []string {
		return append([]string{"init", "--data", d, "--password-file", pwFile, "--no-recovery-key"}, cheapKDF...)
	}
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o660, 0o602, 0o620} {
		os.Chmod(pwFile, mode)
		d := filepath.Join(dir, fmt.Sprintf("d%o", mode))
		code, _, errs := mountd(t, "", args(d)...)
		if code == 0 || !strings.Contains(errs, fmt.Sprintf("mode %04o", mode)) || !strings.Contains(errs, "chmod 600") {
			t.Errorf("mode %o: exit %d: %s", mode, code, errs)
		}
		if _, err := os.Stat(crypto.VerifierPath(d)); err == nil {
			t.Errorf("mode %o: a verifier was written", mode)
		}
	}
	os.Chmod(pwFile, 0o600)
	link := filepath.Join(dir, "link")
	os.Symlink(pwFile, link)
	code, _, errs := mountd(t, "", append([]string{"init", "--data", filepath.Join(dir, "l"), "--password-file", link}, cheapKDF...)...)
	if code == 0 || !strings.Contains(errs, "symbolic link") {
		t.Errorf("symlink: exit %d: %s", code, errs)
	}
	code, _, errs = mountd(t, "", append([]string{"init", "--data", filepath.Join(dir, "dd"), "--password-file", dir}, cheapKDF...)...)
	if code == 0 || !strings.Contains(errs, "not a regular file") {
		t.Errorf("directory: exit %d: %s", code, errs)
	}
	for _, mode := range []os.FileMode{0o600, 0o400} {
		os.Chmod(pwFile, mode)
		d := filepath.Join(dir, fmt.Sprintf("ok%o", mode))
		if code, _, errs := mountd(t, "ignored stdin\n", args(d)...); code != 0 {
			t.Fatalf("mode %o: exit %d: %s", mode, code, errs)
		}
		keyring(t, d, "from a file") // the trailing newline is not part of it
	}
	// fsck and export read it too (stdin is ignored then).
	os.Chmod(pwFile, 0o600)
	d := filepath.Join(dir, "ok600")
	if code, _, errs := mountd(t, "wrong\n", "fsck", "--data", d, "--password-file", pwFile); code != 0 {
		t.Fatalf("fsck --password-file: exit %d: %s", code, errs)
	}
	if code, _, errs := mountd(t, "wrong\n", "export", "--data", d, "--out", filepath.Join(dir, "exp"), "--password-file", pwFile); code != 0 {
		t.Fatalf("export --password-file: exit %d: %s", code, errs)
	}
	os.Chmod(pwFile, 0o644)
	if code, _, errs := mountd(t, "from a file\n", "fsck", "--data", d, "--password-file", pwFile); code == 0 || !strings.Contains(errs, "mode 0644") {
		t.Fatalf("fsck with a 0644 password file: exit %d: %s", code, errs)
	}
	os.Chmod(pwFile, 0o600)
	// Two secrets from one file: the recovery key, then the new password.
	data, rk := initData(t, "old")
	os.WriteFile(pwFile, []byte(rk+"\r\nnew one\r\n"), 0o600)
	if code, _, errs := mountd(t, "", append([]string{"reset-password", "--data", data, "--password-file", pwFile}, cheapKDF...)...); code != 0 {
		t.Fatalf("reset from a file: exit %d: %s", code, errs)
	}
	keyring(t, data, "new one")
	// Too few lines.
	os.WriteFile(pwFile, []byte(rk+"\n"), 0o600)
	if code, _, errs := mountd(t, "", "reset-password", "--data", data, "--password-file", pwFile); code == 0 || !strings.Contains(errs, "ended before every secret was read") {
		t.Fatalf("reset from a short file: exit %d: %s", code, errs)
	}
}

// TestLongSecrets: a 10 000-byte password through stdin works (bufio's
// 4096-byte buffer used to fail with "buffer full"), up to the limit, and
// one byte more is refused, not cut.
func TestLongSecrets(t *testing.T) {
	for _, n := range []int{10_000, maxSecret} {
		pw := bytes.Repeat([]byte("0123456789abcdef"), n/16+1)[:n]
		data := filepath.Join(t.TempDir(), "d")
		code, _, errs := mountd(t, string(pw)+"\n", append([]string{"init", "--data", data, "--no-recovery-key"}, cheapKDF...)...)
		if code != 0 {
			t.Fatalf("%d-byte password: exit %d: %s", n, code, errs)
		}
		keyring(t, data, string(pw))
	}
	pw := bytes.Repeat([]byte("x"), maxSecret+1)
	data := filepath.Join(t.TempDir(), "d")
	code, _, errs := mountd(t, string(pw)+"\n", append([]string{"init", "--data", data, "--no-recovery-key"}, cheapKDF...)...)
	if code == 0 || !strings.Contains(errs, "longer than") {
		t.Fatalf("%d-byte password: exit %d: %s", len(pw), code, errs)
	}
	// The secret source hands out consecutive long lines intact.
	a, b := bytes.Repeat([]byte("a"), 9000), bytes.Repeat([]byte("b"), 20000)
	src, err := openSecrets(stdio{in: bytes.NewReader(slices.Concat(a, []byte("\r\n"), b)), err: io.Discard}, nil)
	if err != nil {
		t.Fatal(err)
	}
	got1, err1 := src.next("1")
	got2, err2 := src.next("2")
	if err1 != nil || err2 != nil || !bytes.Equal(got1, a) || !bytes.Equal(got2, b) {
		t.Fatalf("lines: %d %v, %d %v", len(got1), err1, len(got2), err2)
	}
	src.close()
	if !allZero(src.buf) {
		t.Fatal("the secret buffer was not zeroed")
	}
}

func allZero(b []byte) bool { return len(bytes.Trim(b, "\x00")) == 0 }

// TestOfflineRefusedWhileServed: every offline command refuses a data
// directory whose lock a daemon holds, names the holder, exits 6, and
// changes nothing.
func TestOfflineRefusedWhileServed(t *testing.T) {
	data, rk := initData(t, "pw")
	lock, err := datadir.Acquire(data, datadir.Holder{Command: "serve", Mount: "/some/mnt"})
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Release()
	before, _ := os.ReadFile(crypto.VerifierPath(data))
	out := filepath.Join(t.TempDir(), "out")
	for _, c := range []struct {
		stdin string
		args  []string
	}{
		{"pw\n", []string{"init", "--data", data}},
		{"pw\n", []string{"recovery-key", "--data", data}},
		{rk + "\nx\n", []string{"reset-password", "--data", data}},
		{"", []string{"info", "--data", data}},
		{"pw\n", []string{"fsck", "--data", data}},
		{"pw\n", []string{"export", "--data", data, "--out", out}},
	} {
		code, stdout, errs := mountd(t, c.stdin, c.args...)
		if code != exitInUse || !strings.Contains(errs, fmt.Sprintf("served by mountd pid %d (mounted at /some/mnt)", os.Getpid())) || stdout != "" {
			t.Errorf("%s: exit %d, stdout %q: %s", c.args[0], code, stdout, errs)
		}
	}
	if after, _ := os.ReadFile(crypto.VerifierPath(data)); !bytes.Equal(before, after) {
		t.Fatal("the verifier changed")
	}
	if _, err := os.Stat(out); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("export created its output")
	}
}

// treeState is a snapshot of a tree for "nothing changed" checks: per
// path, the lstat fields that any change touches (access time included)
// and a content hash, read with O_NOATIME so that taking it changes
// nothing.
func treeState(t *testing.T, root string, skip ...string) map[string]string {
	t.Helper()
	m := map[string]string{}
	var walk func(rel string)
	walk = func(rel string) {
		p := filepath.Join(root, rel)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Fatal(err)
		}
		s := fmt.Sprintf("mode=%o size=%d mtime=%d.%d ctime=%d.%d atime=%d.%d", st.Mode, st.Size,
			st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec, st.Atim.Sec, st.Atim.Nsec)
		var names []string
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG, unix.S_IFDIR:
			fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOATIME|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			f := os.NewFile(uintptr(fd), p)
			if st.Mode&unix.S_IFMT == unix.S_IFDIR {
				names, _ = f.Readdirnames(-1)
			} else {
				h := sha256.New()
				io.Copy(h, f)
				s += fmt.Sprintf(" sha=%x", h.Sum(nil))
			}
			f.Close()
		}
		if !slices.Contains(skip, rel) {
			m[rel] = s
		}
		for _, n := range names {
			walk(filepath.Join(rel, n))
		}
	}
	walk(".")
	return m
}

// setAtimesOld moves every access time back a day, so that any read that
// updates it shows (relatime would otherwise hide a second read).
func setAtimesOld(t *testing.T, root string) {
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		var st unix.Stat_t
		unix.Lstat(p, &st)
		ts := []unix.Timespec{{Sec: st.Atim.Sec - 86400}, st.Mtim}
		unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
		return nil
	})
}

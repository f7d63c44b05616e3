package fs

import (
	"bytes"
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/crypto"
)

// mustBeCiphertext fails unless the backing file of name is encrypted and
// holds no marker plaintext.
func (e *testEnv) mustBeCiphertext(name, when string) {
	e.t.Helper()
	b := e.backingBytes(name)
	if !crypto.HasMagic(b) || bytes.Contains(b, marker) {
		e.t.Fatalf("%s: backing %s is not ciphertext (magic %v, plaintext marker %v)", when, name, crypto.HasMagic(b), bytes.Contains(b, marker))
	}
}

// warningsWith returns the Warn entries whose message contains s.
func (e *testEnv) warningsWith(s string) []string {
	var out []string
	for _, en := range e.warnings() {
		if strings.Contains(en.Message, s) {
			p, _ := en.Data["path"].(string)
			out = append(out, p)
		}
	}
	return out
}

// TestProtectedTempsEncryptedFromFirstByte: the temporaries that saving
// programs write beside a protected file are ciphertext on disk from their
// first write: after the temp's fsync, right after the rename onto the
// protected name (nothing is left to convert), and after a logout and a
// login.
func TestProtectedTempsEncryptedFromFirstByte(t *testing.T) {
	e := newEnv(t, envOpts{})
	a := e.recordAttempts()
	temps := []string{
		"doc.bin.tmp", "doc.bin.new", "doc.bin.Xy12Zq", // NAME.*: GLib, Go tempfile patterns, editors
		".doc.bin.Xy12Zq", ".doc.bin.swp", // .NAME.*: rsync, vim
		"doc.bin~", "#doc.bin#", // backups, Emacs auto-save
		"doc.bin123456", ".doc.bin123456", // os.CreateTemp(dir, NAME), renameio
		"doc.bin-journal", "doc.bin.~1~",
	}
	var last []byte
	for i, tmp := range temps {
		data := append(markerData(9000+i), byte(i))
		f, err := os.OpenFile(e.m(tmp), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		e.mustBeCiphertext(tmp, "after the temp's fsync")
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(e.m(tmp), e.m("doc.bin")); err != nil {
			t.Fatal(err)
		}
		e.mustBeCiphertext("doc.bin", tmp+": right after the rename")
		if got := mustRead(t, e.m("doc.bin")); !bytes.Equal(got, data) {
			t.Fatalf("%s: content differs after the rename", tmp)
		}
		last = data
	}
	if n := e.root.PendingEncryption(); n != 0 {
		t.Errorf("%d files pending: a temporary was plaintext", n)
	}
	if rels := a.rels(); len(rels) != 0 {
		t.Errorf("the background conversion had work: %v", rels)
	}
	e.logout()
	e.mustBeCiphertext("doc.bin", "after logout")
	if _, err := os.ReadFile(e.m("doc.bin")); !errors.Is(err, syscall.EACCES) {
		t.Errorf("read while logged out: %v, want EACCES", err)
	}
	e.login()
	e.mustBeCiphertext("doc.bin", "after login")
	if got := mustRead(t, e.m("doc.bin")); !bytes.Equal(got, last) {
		t.Error("content differs after logout and login")
	}
}

// TestTempPatternsConfigurable: an empty set turns temporaries off (an
// atomic save is then encrypted after its rename); a custom pattern is
// honoured and replaces the defaults.
func TestTempPatternsConfigurable(t *testing.T) {
	e := newEnv(t, envOpts{tempPatterns: []string{"{}.part"}})
	mustWrite(t, e.m("doc.bin.part"), markerData(3000))
	e.mustBeCiphertext("doc.bin.part", "custom pattern")
	mustWrite(t, e.m("doc.bin.tmp"), markerData(3000))
	if !bytes.Contains(e.backingBytes("doc.bin.tmp"), marker) {
		t.Error("doc.bin.tmp encrypted although the default patterns were replaced")
	}

	e2 := newEnv(t, envOpts{tempPatterns: []string{}})
	mustWrite(t, e2.m("doc.bin.tmp"), markerData(3000))
	if e2.isEncrypted("doc.bin.tmp") {
		t.Error("doc.bin.tmp encrypted with no temp patterns")
	}
	if err := os.Rename(e2.m("doc.bin.tmp"), e2.m("doc.bin")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "doc.bin to be encrypted after the rename", func() bool { return e2.isEncrypted("doc.bin") })

	for _, bad := range []string{"nobraces", "{}{}", "*{}", "a/{}", "{}"} {
		if err := ParseTempPattern(bad); err == nil {
			t.Errorf("ParseTempPattern(%q) accepted", bad)
		}
	}
}

// TestTmpfileLinkat: an O_TMPFILE file is encrypted from its first byte
// and can be linked under a protected name, with linkat(AT_EMPTY_PATH) or
// through its /proc link; the name then holds ciphertext at once.
func TestTmpfileLinkat(t *testing.T) {
	e := newEnv(t, envOpts{})
	a := e.recordAttempts()
	for i, how := range []string{"AT_EMPTY_PATH", "/proc"} {
		name := map[string]string{"AT_EMPTY_PATH": "linkedE.bin", "/proc": "linkedP.bin"}[how]
		fd, err := unix.Open(e.mnt, unix.O_TMPFILE|unix.O_RDWR, 0o600)
		if err != nil {
			t.Fatalf("O_TMPFILE: %v", err)
		}
		data := append(markerData(7000), byte(i))
		if _, err := unix.Write(fd, data); err != nil {
			t.Fatal(err)
		}
		if err := unix.Fsync(fd); err != nil {
			t.Fatal(err)
		}
		if how == "AT_EMPTY_PATH" {
			err = unix.Linkat(fd, "", unix.AT_FDCWD, e.m(name), unix.AT_EMPTY_PATH)
		} else {
			err = unix.Linkat(unix.AT_FDCWD, "/proc/self/fd/"+itoa(fd), unix.AT_FDCWD, e.m(name), unix.AT_SYMLINK_FOLLOW)
		}
		unix.Close(fd)
		if err != nil {
			t.Fatalf("linkat (%s): %v", how, err)
		}
		e.mustBeCiphertext(name, "right after linkat ("+how+")")
		if got := mustRead(t, e.m(name)); !bytes.Equal(got, data) {
			t.Fatalf("%s: content differs", name)
		}
	}
	if rels := a.rels(); len(rels) != 0 {
		t.Errorf("the background conversion had work: %v", rels)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// TestLoggedOutWriteEncryptedAfterLogin: protected files created or
// written, and plaintext renamed onto a protected name, while logged out
// are recorded and encrypted after the next login; later appends are
// encrypted.
func TestLoggedOutWriteEncryptedAfterLogin(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.logout()
	first := markerData(5000)
	mustWrite(t, e.m("doc.bin"), first)
	mustWrite(t, e.m("tmp1234"), first)
	if err := os.Rename(e.m("tmp1234"), e.m("saved.bin")); err != nil {
		t.Fatal(err)
	}
	if n := e.root.PendingEncryption(); n != 2 {
		t.Fatalf("%d pending, want 2", n)
	}
	rec, err := os.ReadFile(e.b("auth/" + pendingLogName))
	if err != nil || !bytes.Contains(rec, []byte("doc.bin")) || !bytes.Contains(rec, []byte("saved.bin")) {
		t.Fatalf("the durable record does not name both files (%v)", err)
	}
	e.login()
	for _, name := range []string{"doc.bin", "saved.bin"} {
		waitFor(t, 30*time.Second, name+" to be encrypted after login", func() bool { return e.isEncrypted(name) })
		e.mustBeCiphertext(name, "after login")
	}
	waitFor(t, 30*time.Second, "nothing pending", func() bool { return e.root.PendingEncryption() == 0 })
	f, err := os.OpenFile(e.m("doc.bin"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	more := markerData(3000)
	if _, err := f.Write(more); err != nil {
		t.Fatal(err)
	}
	f.Close()
	e.mustBeCiphertext("doc.bin", "after an append")
	if got := mustRead(t, e.m("doc.bin")); !bytes.Equal(got, append(append([]byte{}, first...), more...)) {
		t.Error("content differs after the append")
	}
	if b, err := os.ReadFile(e.b("auth/" + pendingLogName)); err != nil || len(b) != 0 {
		t.Errorf("record not emptied once nothing is pending: %d bytes, %v", len(b), err)
	}
}

// TestNoEncryptAfterLogin: the switch turns it off.
func TestNoEncryptAfterLogin(t *testing.T) {
	e := newEnv(t, envOpts{noAfterLogin: true})
	e.logout()
	mustWrite(t, e.m("doc.bin"), markerData(5000))
	if n := e.root.PendingEncryption(); n != 0 {
		t.Fatalf("%d pending with NoEncryptAfterLogin", n)
	}
	if _, err := os.Stat(e.b("auth/" + pendingLogName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("record kept with NoEncryptAfterLogin: %v", err)
	}
}

// downgrade replaces the backing content of name in place (the inode
// stays): with plaintext, or by flipping a byte of the magic.
func (e *testEnv) downgrade(name string, flip bool, plain []byte) []byte {
	e.t.Helper()
	b := plain
	if flip {
		b = e.backingBytes(name)
		b[2] ^= 0x20
	}
	if err := os.WriteFile(e.b(name), b, 0o600); err != nil {
		e.t.Fatal(err)
	}
	return b
}

// TestDowngrade: someone with access to the disk replaces an encrypted
// file's content with plaintext, or flips a byte of its magic. The
// plaintext is served with one Warn, and the owner's later append and
// in-place write are encrypted (the file is converted first); the flipped
// magic is EIO (the header still names the key: a damaged encrypted
// file, never served raw). With RequireEncryption the plaintext is EIO
// too, logged once, and nothing is added to it.
func TestDowngrade(t *testing.T) {
	for _, require := range []bool{false, true} {
		t.Run(map[bool]string{false: "default", true: "require"}[require], func(t *testing.T) {
			e := newEnv(t, envOpts{require: require, allowWarn: true, cacheTimeout: -1})
			mustWrite(t, e.m("doc.bin"), markerData(6000))
			mustWrite(t, e.m("flip.bin"), markerData(6000))
			e.mustBeCiphertext("doc.bin", "before")
			plain := markerData(5000)
			e.waitIdle() // else an open may find the inode still known as encrypted
			e.downgrade("doc.bin", false, plain)
			flipped := e.downgrade("flip.bin", true, nil)

			if _, err := os.ReadFile(e.m("flip.bin")); !errors.Is(err, syscall.EIO) {
				t.Errorf("flipped magic: read %v, want EIO", err)
			}
			if _, err := os.OpenFile(e.m("flip.bin"), os.O_APPEND|os.O_WRONLY, 0); !errors.Is(err, syscall.EIO) {
				t.Errorf("flipped magic: open for append %v, want EIO", err)
			}
			if !bytes.Equal(e.backingBytes("flip.bin"), flipped) {
				t.Error("flipped file changed on disk")
			}

			got, err := os.ReadFile(e.m("doc.bin"))
			if require {
				if !errors.Is(err, syscall.EIO) {
					t.Fatalf("require: read %v, want EIO", err)
				}
				if _, err := os.OpenFile(e.m("doc.bin"), os.O_APPEND|os.O_WRONLY, 0); !errors.Is(err, syscall.EIO) {
					t.Errorf("require: open for append %v, want EIO", err)
				}
				if !bytes.Equal(e.backingBytes("doc.bin"), plain) {
					t.Error("require: the plaintext file changed on disk")
				}
				if w := e.warningsWith("require-encryption"); len(w) != 1 || w[0] != "doc.bin" {
					t.Errorf("require: warnings %v, want one for doc.bin", w)
				}
				return
			}
			if err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("plaintext not served: %v", err)
			}
			mustRead(t, e.m("doc.bin"))
			if w := e.warningsWith("plaintext on disk; run encrypt_existing_files"); len(w) != 1 || w[0] != "doc.bin" {
				t.Errorf("warnings %v, want one for doc.bin", w)
			}

			// An append, with a reader open: the file is converted
			// first and the reader follows it.
			r, err := os.Open(e.m("doc.bin"))
			if err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(e.m("doc.bin"), os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			more := markerData(2000)
			if _, err := f.Write(more); err != nil {
				t.Fatal(err)
			}
			e.mustBeCiphertext("doc.bin", "after the append")
			want := append(append([]byte{}, plain...), more...)
			buf := make([]byte, len(want))
			if n, err := r.ReadAt(buf, 0); n != len(want) || !bytes.Equal(buf, want) {
				t.Errorf("the reader open across the conversion read %d bytes (%v)", n, err)
			}
			f.Close()
			r.Close()

			// An in-place write.
			f, err = os.OpenFile(e.m("doc.bin"), os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt([]byte("REWRITTEN"), 100); err != nil {
				t.Fatal(err)
			}
			f.Close()
			copy(want[100:], "REWRITTEN")
			e.mustBeCiphertext("doc.bin", "after the in-place write")
			if got := mustRead(t, e.m("doc.bin")); !bytes.Equal(got, want) {
				t.Error("content differs after the writes")
			}

			// Downgraded again (closed: the daemon knows it only
			// as encrypted while it is open), then an in-place write
			// first.
			e.waitIdle()
			e.downgrade("doc.bin", false, plain)
			f, err = os.OpenFile(e.m("doc.bin"), os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt([]byte("AGAIN"), 10); err != nil {
				t.Fatal(err)
			}
			f.Close()
			e.mustBeCiphertext("doc.bin", "after an in-place write on plaintext")
		})
	}
}

// TestNonRegularNotCandidates: with every name protected, a FIFO, a
// socket and a character device renamed onto protected names are not
// queued for encryption (and log nothing).
func TestNonRegularNotCandidates(t *testing.T) {
	e := newEnv(t, envOpts{protect: []string{"*"}})
	if err := unix.Mkfifo(e.m("fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", e.m("sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := unix.Mknod(e.m("null"), unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"fifo", "sock", "null"} {
		if err := os.Rename(e.m(n), e.m(n+".bin")); err != nil {
			t.Fatal(err)
		}
		if p := e.root.PendingEncryption(); p != 0 {
			t.Fatalf("%s renamed onto a protected name: %d pending", n, p)
		}
	}
}

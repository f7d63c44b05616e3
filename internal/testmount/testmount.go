// Package testmount holds what the tests that mount a filesystem share
// (packages fs and migrate): temp directories, the watchdog, the cleanup
// and leftover-mount checks, the CI rule that a test which cannot mount
// fails, a keyring with a cheap verifier, and deterministic content. It
// imports neither fs nor go-fuse, so fs's own tests can use it. Only
// tests import it.
package testmount

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/crypto"
)

// Password is the tests' password; KDF the cheapest Argon2id setting
// crypto accepts.
var (
	Password = []byte("correct horse battery staple")
	KDF      = crypto.KDFParams{Time: 2, MemoryKiB: 19 * 1024, Threads: 1}
)

// mounted holds the mountpoints this test binary created.
var mounted sync.Map

// TempDir makes a directory whose name marks it as the package's test's,
// removed in t.Cleanup.
func TempDir(t testing.TB, pkg, name string) string {
	d, err := os.MkdirTemp("", "mountd-"+pkg+"-test-"+name+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// BackingDir makes a fresh backing directory for a test of pkg: inside
// under when it is set (a network filesystem's mount, for the tests that
// run a package's tests on one), else a TempDir. Removed in t.Cleanup.
func BackingDir(t testing.TB, pkg, under string) string {
	if under == "" {
		return TempDir(t, pkg, "backing")
	}
	d, err := os.MkdirTemp(under, "backing-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// Keyring returns a keyring with the key set and its verifier, created
// in backing's auth/.
func Keyring(t testing.TB, backing string) (*crypto.Keyring, *crypto.Verifier) {
	t.Helper()
	kr := crypto.NewKeyring()
	vpath := crypto.VerifierPath(backing)
	if err := kr.Create(vpath, Password, KDF); err != nil {
		t.Fatalf("create verifier: %v", err)
	}
	v, err := crypto.ReadVerifier(vpath)
	if err != nil {
		t.Fatalf("read verifier: %v", err)
	}
	return kr, v
}

// Failed reports that mounting failed: the test is skipped, or fails
// under CI=true.
func Failed(t testing.TB, err error) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("cannot mount FUSE (CI=true, so this fails): %v", err)
	}
	t.Skipf("cannot mount FUSE: %v", err)
}

// Watch records mnt as this binary's mount, aborts its FUSE connection
// and fails the test if the test still runs after timeout (so a hung
// request cannot hang the binary), and in t.Cleanup unmounts it with
// unmount (detaching it if that fails or leaves it mounted). Register it
// right after mounting.
func Watch(t testing.TB, mnt string, timeout time.Duration, unmount func() error) {
	mounted.Store(mnt, true)
	watchdog := time.AfterFunc(timeout, func() {
		t.Errorf("watchdog: test still running after %v; aborting the FUSE connection", timeout)
		// MNT_FORCE makes FUSE abort the connection: every pending and
		// future request fails with ENOTCONN. Then detach the mount.
		_ = unix.Unmount(mnt, unix.MNT_FORCE)
		_ = unix.Unmount(mnt, unix.MNT_DETACH)
	})
	t.Cleanup(func() {
		watchdog.Stop()
		if err := unmount(); err != nil {
			t.Errorf("unmount: %v; detaching", err)
			_ = unix.Unmount(mnt, unix.MNT_DETACH)
		}
		if IsMounted(mnt) {
			t.Errorf("%s still mounted after cleanup", mnt)
			_ = unix.Unmount(mnt, unix.MNT_DETACH)
		}
	})
}

// Main runs the tests and fails the binary if a mount of it is left.
func Main(m *testing.M) int {
	code := m.Run()
	if code == 0 {
		var left []string
		mounted.Range(func(k, _ any) bool {
			if IsMounted(k.(string)) {
				left = append(left, k.(string))
			}
			return true
		})
		if len(left) > 0 {
			fmt.Fprintf(os.Stderr, "FUSE mounts left behind: %v\n", left)
			code = 1
		}
	}
	return code
}

// IsMounted reports whether dir is a mountpoint of this mount namespace.
func IsMounted(dir string) bool {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[1] == dir {
			return true
		}
	}
	return false
}

// MustWrite writes data to path (mode 0644).
func MustWrite(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// MustRead reads path.
func MustRead(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Pattern returns n deterministic bytes that differ per seed.
func Pattern(seed byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31+int(seed)*7) ^ seed
	}
	return b
}

// V1Writer encodes files in content format version 1 (docs/FORMAT.md,
// section 2.2), which mountd reads but no longer creates, so that tests
// can make the files an older mountd left behind.
type V1Writer struct {
	kid     crypto.KeyID
	secrets *crypto.Secrets
}

// NewV1Writer returns a writer under the master key behind backing's
// verifier (made by Keyring, with Password), wiped at the test's end.
func NewV1Writer(t testing.TB, backing string) *V1Writer {
	t.Helper()
	w, err := V1WriterFor(backing, Password)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Wipe)
	return w
}

// ForeignV1Writer returns a writer under a random master key (another
// verifier's).
func ForeignV1Writer(t testing.TB) *V1Writer {
	t.Helper()
	w := &V1Writer{secrets: &crypto.Secrets{PRK: make([]byte, crypto.KeySize)}}
	if _, err := rand.Read(w.secrets.PRK); err != nil {
		t.Fatal(err)
	}
	if _, err := rand.Read(w.kid[:]); err != nil {
		t.Fatal(err)
	}
	return w
}

// V1WriterFor returns a writer under the master key behind the verifier
// of the data directory backing, opened with password; Wipe drops its
// secrets. (For callers without a testing.TB, e.g. the crash harness's
// workloads, which run off the test goroutine.)
func V1WriterFor(backing string, password []byte) (*V1Writer, error) {
	v, err := crypto.ReadVerifier(crypto.VerifierPath(backing))
	if err != nil {
		return nil, err
	}
	s, err := crypto.Inspect(crypto.VerifierPath(backing), password)
	if err != nil {
		return nil, err
	}
	return &V1Writer{kid: v.KeyID, secrets: s}, nil
}

// Wipe zeroes the writer's secrets.
func (w *V1Writer) Wipe() { w.secrets.Wipe() }

// Bytes returns plain (not empty) encrypted as a version 1 file with a
// fresh file-id.
func (w *V1Writer) Bytes(t testing.TB, plain []byte) []byte {
	t.Helper()
	out, err := w.Encode(plain)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Encode is Bytes for callers without a testing.TB.
func (w *V1Writer) Encode(plain []byte) ([]byte, error) {
	h := crypto.Header{Version: 1, KeyID: w.kid}
	if _, err := rand.Read(h.FileID[:]); err != nil {
		return nil, err
	}
	key := w.secrets.FileKey(h.FileID)
	defer clear(key)
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(b)
	if err != nil {
		return nil, err
	}
	hb := h.Marshal()
	out := append([]byte(nil), hb[:]...)
	for i := 0; i*crypto.BlockSize < len(plain); i++ {
		nonce := make([]byte, crypto.NonceSize)
		if _, err := rand.Read(nonce); err != nil {
			return nil, err
		}
		aad := binary.BigEndian.AppendUint64(hb[:], uint64(i))
		out = append(out, nonce...)
		out = aead.Seal(out, nonce, plain[i*crypto.BlockSize:min(len(plain), (i+1)*crypto.BlockSize)], aad)
	}
	return out, nil
}

// Write writes plain as a version 1 file at path (mode 0644).
func (w *V1Writer) Write(t testing.TB, path string, plain []byte) {
	t.Helper()
	MustWrite(t, path, w.Bytes(t, plain))
}

// Version returns the content format version in the header of the backing
// file at path (0 if it has none).
func Version(t testing.TB, path string) uint8 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h, err := crypto.ParseHeader(b)
	if err != nil {
		return 0
	}
	return h.Version
}

// Ino returns the inode number of the file at path.
func Ino(t testing.TB, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// TailPageHoldsData reports whether the version 2 encrypted file at path
// holds data, not a hole, in the page past its last slot (where its size
// goes on after the slots): a file that grew by write
// (crypto.File.SetNetworkBacking) does, one that grew by ftruncate does
// not. A size on a page boundary has no such page: an error.
func TailPageHoldsData(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	cs := fi.Size()
	page := cs / crypto.PageSize * crypto.PageSize
	if page == cs {
		return false, fmt.Errorf("%s: size %d ends on a page boundary", path, cs)
	}
	hole, err := unix.Seek(int(f.Fd()), page, unix.SEEK_HOLE)
	if err != nil {
		return false, err
	}
	return hole >= cs, nil
}

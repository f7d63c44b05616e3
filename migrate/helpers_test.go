package migrate

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/crypto"
	"github.com/mountd/mountd/fs"
)

// The tests of this package that need a kernel mount a real fs.Root
// (newEnv: root and /dev/fuse); the others run against fakeConverter
// (fake_test.go) and need neither.

func TestMain(m *testing.M) {
	// Tests read their own mount: leave room for the serving goroutines.
	if runtime.GOMAXPROCS(0) < 4 {
		runtime.GOMAXPROCS(4)
	}
	code := m.Run()
	if code == 0 {
		var left []string
		mounted.Range(func(k, _ any) bool {
			if isMounted(k.(string)) {
				left = append(left, k.(string))
			}
			return true
		})
		if len(left) > 0 {
			fmt.Fprintf(os.Stderr, "FUSE mounts left behind: %v\n", left)
			code = 1
		}
	}
	os.Exit(code)
}

// mounted holds the mountpoints this test binary created.
var mounted sync.Map

var (
	testPassword = []byte("correct horse battery staple")
	// testKDF is the cheapest Argon2id setting crypto accepts.
	testKDF = crypto.KDFParams{Time: 2, MemoryKiB: 19 * 1024, Threads: 1}
)

// What the tests know of fs's conversions: the temp files' prefix and
// the copy unit (progress comes in such chunks).
const (
	tempPrefix   = ".mountd-tmp-"
	convertChunk = 1 << 20
)

type envOpts struct {
	timeout time.Duration
}

// testEnv is one mount of a fresh backing directory, with the key set.
type testEnv struct {
	t        testing.TB
	backing  string
	mnt      string
	kr       *crypto.Keyring
	verifier *crypto.Verifier
	root     *fs.Root
	hook     *logtest.Hook
	log      *logrus.Entry // into hook
}

func tempDir(t testing.TB, name string) string {
	d, err := os.MkdirTemp("", "mountd-migrate-test-"+name+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// newEnv mounts a fresh backing directory with a verifier in auth/ and
// the key set. The mount goes away in t.Cleanup; a watchdog aborts the
// FUSE connection after o.timeout (default a minute). Without FUSE the
// test is skipped, or fails under CI=true. A Warn or worse in the log
// fails the test.
func newEnv(t testing.TB, o envOpts) *testEnv {
	t.Helper()
	e := &testEnv{t: t, backing: tempDir(t, "backing"), mnt: tempDir(t, "mnt")}
	e.kr = crypto.NewKeyring()
	vpath := crypto.VerifierPath(e.backing)
	if err := e.kr.Create(vpath, testPassword, testKDF); err != nil {
		t.Fatalf("create verifier: %v", err)
	}
	v, err := crypto.ReadVerifier(vpath)
	if err != nil {
		t.Fatalf("read verifier: %v", err)
	}
	e.verifier = v
	logger, hook := logtest.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	e.hook, e.log = hook, logrus.NewEntry(logger)
	srv, err := fs.Mount(e.mnt, fs.Options{Backing: e.backing, Keyring: e.kr, Log: e.log})
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("cannot mount FUSE (CI=true, so this fails): %v", err)
		}
		t.Skipf("cannot mount FUSE: %v", err)
	}
	e.root = srv.Root
	mounted.Store(e.mnt, true)
	timeout := o.timeout
	if timeout == 0 {
		timeout = time.Minute
	}
	watchdog := time.AfterFunc(timeout, func() {
		t.Errorf("watchdog: test still running after %v; aborting the FUSE connection", timeout)
		_ = unix.Unmount(e.mnt, unix.MNT_FORCE)
		_ = unix.Unmount(e.mnt, unix.MNT_DETACH)
	})
	t.Cleanup(func() {
		watchdog.Stop()
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmount: %v; detaching", err)
			_ = unix.Unmount(e.mnt, unix.MNT_DETACH)
		}
		for _, en := range hook.AllEntries() {
			if en.Level <= logrus.WarnLevel {
				t.Errorf("unexpected log %s: %s %v", en.Level, en.Message, en.Data)
			}
		}
	})
	return e
}

func isMounted(dir string) bool {
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

func (e *testEnv) m(name string) string { return filepath.Join(e.mnt, name) }
func (e *testEnv) b(name string) string { return filepath.Join(e.backing, name) }

func (e *testEnv) logout() { e.kr.Clear() }

func (e *testEnv) login() {
	e.t.Helper()
	if err := e.kr.Unlock(e.verifier, testPassword); err != nil {
		e.t.Fatalf("login: %v", err)
	}
}

// backingBytes reads the backing file of name.
func (e *testEnv) backingBytes(name string) []byte {
	e.t.Helper()
	b, err := os.ReadFile(e.b(name))
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

// isEncrypted reports whether the backing file of name carries the magic.
func (e *testEnv) isEncrypted(name string) bool {
	e.t.Helper()
	f, err := os.Open(e.b(name))
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	var b [crypto.MagicSize]byte
	n, _ := f.ReadAt(b[:], 0)
	return crypto.HasMagic(b[:n])
}

func mustWrite(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func mustRead(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// pattern returns n deterministic bytes that differ per seed.
func pattern(seed byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31+int(seed)*7) ^ seed
	}
	return b
}

// waitRequestInFlight waits until the kernel has a request of e's mount
// waiting for the daemon's reply (fusectl's waiting count): external
// state, polled with a deadline.
func (e *testEnv) waitRequestInFlight() {
	e.t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(e.mnt, &st); err != nil {
		e.t.Fatal(err)
	}
	p := fmt.Sprintf("/sys/fs/fuse/connections/%d/waiting", unix.Minor(st.Dev))
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := os.ReadFile(p)
		if err != nil {
			e.t.Fatalf("fusectl (mount -t fusectl none /sys/fs/fuse/connections): %v", err)
		}
		if n, _ := strconv.Atoi(strings.TrimSpace(string(b))); n > 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatal("no request of the mount reached the daemon")
		}
		time.Sleep(time.Millisecond)
	}
}

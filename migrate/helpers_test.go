package migrate

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/crypto"
	"github.com/mountd/mountd/fs"
	"github.com/mountd/mountd/internal/testmount"
)

// The tests of this package that need a kernel mount a real fs.Root
// (newEnv: root and /dev/fuse); the others run against fakeConverter
// (fake_test.go) and need neither.

func TestMain(m *testing.M) {
	// Tests read their own mount: leave room for the serving goroutines.
	if runtime.GOMAXPROCS(0) < 4 {
		runtime.GOMAXPROCS(4)
	}
	os.Exit(testmount.Main(m))
}

// What the tests know of fs's conversions: the temp files' prefix and
// the copy unit (progress comes in such chunks).
const (
	tempPrefix   = ".mountd-tmp-"
	convertChunk = 1 << 20
)

type envOpts struct {
	timeout time.Duration
	// warnOK are the Warn messages the test expects (by prefix).
	warnOK []string
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

func tempDir(t testing.TB, name string) string { return testmount.TempDir(t, "migrate", name) }

// netBacking, if set, is where newEnv makes its backing directories: a
// network filesystem (TestMigrateOnSSHFS sets it to its sshfs mount; set
// MOUNTD_MIGRATE_TEST_BACKING to run the package on a directory of
// yours).
var netBacking = os.Getenv("MOUNTD_MIGRATE_TEST_BACKING")

// backingDir makes a fresh backing directory, under netBacking if set.
func backingDir(t testing.TB) string { return testmount.BackingDir(t, "migrate", netBacking) }

// newEnv mounts a fresh backing directory with a verifier in auth/ and
// the key set. The mount goes away in t.Cleanup; a watchdog aborts the
// FUSE connection after o.timeout (default a minute). Without FUSE the
// test is skipped, or fails under CI=true. A Warn or worse in the log
// fails the test.
func newEnv(t testing.TB, o envOpts) *testEnv {
	t.Helper()
	e := &testEnv{t: t, backing: backingDir(t), mnt: tempDir(t, "mnt")}
	e.kr, e.verifier = testmount.Keyring(t, e.backing)
	logger, hook := logtest.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	e.hook, e.log = hook, logrus.NewEntry(logger)
	srv, err := fs.Mount(e.mnt, fs.Options{Backing: e.backing, Keyring: e.kr, Log: e.log})
	if err != nil {
		testmount.Failed(t, err)
	}
	e.root = srv.Root
	timeout := o.timeout
	if timeout == 0 {
		timeout = time.Minute
	}
	testmount.Watch(t, e.mnt, timeout, srv.Unmount)
	t.Cleanup(func() {
		for _, en := range hook.AllEntries() {
			// Reading a plaintext protected file through the mount
			// before the task converts it says so (issue 17).
			expected := strings.HasPrefix(en.Message, "protected file is plaintext on disk; run encrypt_existing_files")
			for _, p := range o.warnOK {
				expected = expected || en.Level == logrus.WarnLevel && strings.HasPrefix(en.Message, p)
			}
			if en.Level <= logrus.WarnLevel && !expected {
				t.Errorf("unexpected log %s: %s %v", en.Level, en.Message, en.Data)
			}
		}
	})
	return e
}

func (e *testEnv) m(name string) string { return filepath.Join(e.mnt, name) }
func (e *testEnv) b(name string) string { return filepath.Join(e.backing, name) }

func (e *testEnv) logout() { e.kr.Clear() }

func (e *testEnv) login() {
	e.t.Helper()
	if err := e.kr.Unlock(e.verifier, testmount.Password); err != nil {
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

var (
	mustWrite = testmount.MustWrite
	mustRead  = testmount.MustRead
	pattern   = testmount.Pattern
)

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

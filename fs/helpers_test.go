package fs

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/mountd/mountd/crypto"
	"github.com/mountd/mountd/internal/testmount"
)

func TestMain(m *testing.M) {
	if path := os.Getenv("MOUNTD_MMAP_HELPER"); path != "" {
		size, _ := strconv.Atoi(os.Getenv("MOUNTD_MMAP_SIZE"))
		os.Exit(mmapHelper(path, size))
	}
	if path := os.Getenv("MOUNTD_SAVELOOP_HELPER"); path != "" {
		n, _ := strconv.Atoi(os.Getenv("MOUNTD_SAVELOOP_N"))
		os.Exit(saveLoopHelper(path, n))
	}
	// Tests read their own mount: leave room for the serving goroutines.
	if runtime.GOMAXPROCS(0) < 4 {
		runtime.GOMAXPROCS(4)
	}
	os.Exit(testmount.Main(m))
}

var (
	testPassword = testmount.Password
	testKDF      = testmount.KDF
)

type envOpts struct {
	protect   []string // nil: the default
	loggedOut bool     // start without the key
	timeout   time.Duration
	allowWarn bool // corruption warnings are expected
	// plainWarn: the warning that a protected file read is plaintext on
	// disk is expected (the test reads such files on purpose).
	plainWarn bool
	loopback  bool // mount go-fuse's plain loopback instead (reference runs)
	activity  func()
	// cacheTimeout, if set, is the kernel's attribute and entry
	// timeout (default one second).
	cacheTimeout time.Duration
	// tempPatterns, noAfterLogin and require are Options.TempPatterns,
	// NoEncryptAfterLogin and RequireEncryption.
	tempPatterns []string
	noAfterLogin bool
	require      bool
}

// testEnv is one mount of a fresh backing directory.
type testEnv struct {
	t        testing.TB
	backing  string
	mnt      string
	kr       *crypto.Keyring
	verifier *crypto.Verifier
	root     *Root
	hook     *logtest.Hook
	unmount  func() error // what t.Cleanup unmounts with (tests may call it first)
}

// tempDir makes a directory whose path marks it as ours.
func tempDir(t testing.TB, name string) string { return testmount.TempDir(t, "fs", name) }

// netBacking, if set, is where newEnv makes its backing directories: a
// network filesystem (TestOnSSHFS sets it to its sshfs mount; set
// MOUNTD_FS_TEST_BACKING to run the whole package on a directory of
// yours).
var netBacking = os.Getenv("MOUNTD_FS_TEST_BACKING")

// backingDir makes a fresh backing directory, under netBacking if set.
func backingDir(t testing.TB) string { return testmount.BackingDir(t, "fs", netBacking) }

// newEnv mounts a fresh backing directory with a verifier in auth/ and
// the key set (unless o.loggedOut). The mount goes away in t.Cleanup,
// lazily if it is busy. A watchdog aborts the FUSE connection and fails
// the test if it runs longer than o.timeout, so a hung request cannot
// hang the test binary. If mounting is impossible the test is skipped,
// or fails under CI=true.
func newEnv(t testing.TB, o envOpts) *testEnv {
	t.Helper()
	e := &testEnv{t: t, backing: backingDir(t), mnt: tempDir(t, "mnt")}

	e.kr = crypto.NewKeyring()
	if !o.loopback {
		e.kr, e.verifier = testmount.Keyring(t, e.backing)
		if o.loggedOut {
			e.kr.Clear()
		}
	}

	logger, hook := logtest.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	e.hook = hook

	var srv *fuse.Server
	var unmount func() error
	if o.loopback {
		lr, err := gofs.NewLoopbackRoot(e.backing)
		if err != nil {
			t.Fatal(err)
		}
		sec := time.Second
		srv, err = gofs.Mount(e.mnt, lr, &gofs.Options{
			EntryTimeout: &sec,
			AttrTimeout:  &sec,
			MountOptions: fuse.MountOptions{
				DirectMount: true,
				FsName:      "loopback",
				Name:        "loopback",
				MaxWrite:    fuse.MAX_KERNEL_WRITE,
				EnableLocks: true, // as our mount does
			},
		})
		if err != nil {
			mountFailed(t, err)
		}
		unmount = srv.Unmount
	} else {
		s, err := Mount(e.mnt, Options{
			Backing:      e.backing,
			Protect:      o.protect,
			Keyring:      e.kr,
			Log:          logrus.NewEntry(logger),
			Activity:     o.activity,
			AttrTimeout:  o.cacheTimeout,
			EntryTimeout: o.cacheTimeout,

			TempPatterns:        o.tempPatterns,
			NoEncryptAfterLogin: o.noAfterLogin,
			RequireEncryption:   o.require,
		})
		if err != nil {
			mountFailed(t, err)
		}
		e.root = s.Root
		unmount = s.Unmount
		// MOUNTD_FS_FORCE_RENAME=1 runs every test with conversions
		// committing by rename, as on a filesystem without
		// RENAME_EXCHANGE (commit.go).
		e.root.conv.caps.forceRename = os.Getenv("MOUNTD_FS_FORCE_RENAME") == "1"
	}

	timeout := o.timeout
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	e.unmount = unmount
	testmount.Watch(t, e.mnt, timeout, unmount)
	t.Cleanup(func() {
		if !o.allowWarn {
			for _, en := range hook.AllEntries() {
				if en.Level <= logrus.WarnLevel && !(o.plainWarn && strings.HasPrefix(en.Message, "protected file is plaintext on disk")) {
					t.Errorf("unexpected log %s: %s %v", en.Level, en.Message, en.Data)
				}
			}
		}
	})
	return e
}

func mountFailed(t testing.TB, err error) { t.Helper(); testmount.Failed(t, err) }

func (e *testEnv) m(name string) string { return filepath.Join(e.mnt, name) }
func (e *testEnv) b(name string) string { return filepath.Join(e.backing, name) }

func (e *testEnv) logout() {
	e.t.Helper()
	e.kr.Clear()
}

func (e *testEnv) login() {
	e.t.Helper()
	if err := e.kr.Unlock(e.verifier, testPassword); err != nil {
		e.t.Fatalf("login: %v", err)
	}
	if e.root != nil {
		e.root.LoggedIn() // as the control plane's OnLogin does
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
	b := e.backingBytes(name)
	return crypto.HasMagic(b)
}

// warnings returns the Warn (or worse) log entries so far.
func (e *testEnv) warnings() []*logrus.Entry {
	var out []*logrus.Entry
	for _, en := range e.hook.AllEntries() {
		if en.Level <= logrus.WarnLevel {
			out = append(out, en)
		}
	}
	return out
}

// waitFor polls cond until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var (
	mustWrite = testmount.MustWrite
	mustRead  = testmount.MustRead
	pattern   = testmount.Pattern
)

func wantErrno(t testing.TB, err error, want syscall.Errno, what string) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: got %v, want %v", what, err, want)
	}
}

package fs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/crypto"
)

func TestMain(m *testing.M) {
	if path := os.Getenv("MOUNTD_MMAP_HELPER"); path != "" {
		size, _ := strconv.Atoi(os.Getenv("MOUNTD_MMAP_SIZE"))
		os.Exit(mmapHelper(path, size))
	}
	// Tests read their own mount: leave room for the serving goroutines.
	if runtime.GOMAXPROCS(0) < 4 {
		runtime.GOMAXPROCS(4)
	}
	code := m.Run()
	if code == 0 {
		if leftovers := ourMounts(); len(leftovers) > 0 {
			fmt.Fprintf(os.Stderr, "FUSE mounts left behind: %v\n", leftovers)
			code = 1
		}
	}
	os.Exit(code)
}

// mounted holds the mountpoints this test binary created.
var mounted sync.Map

// ourMounts lists the mountpoints of this test binary still mounted
// (other processes may run their own mounts meanwhile).
func ourMounts() []string {
	var out []string
	mounted.Range(func(k, _ any) bool {
		if isMounted(k.(string)) {
			out = append(out, k.(string))
		}
		return true
	})
	return out
}

var (
	testPassword = []byte("correct horse battery staple")
	// testKDF is the cheapest Argon2id setting crypto accepts.
	testKDF = crypto.KDFParams{Time: 2, MemoryKiB: 19 * 1024, Threads: 1}
)

type envOpts struct {
	protect   []string // nil: the default
	loggedOut bool     // start without the key
	timeout   time.Duration
	allowWarn bool // corruption warnings are expected
	loopback  bool // mount go-fuse's plain loopback instead (reference runs)
	activity  func()
	// cacheTimeout, if set, is the kernel's attribute and entry
	// timeout (default one second).
	cacheTimeout time.Duration
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
}

// tempDir makes a directory whose path marks it as ours, for the
// leftover-mount check.
func tempDir(t testing.TB, name string) string {
	d, err := os.MkdirTemp("", "mountd-fs-test-"+name+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// newEnv mounts a fresh backing directory with a verifier in auth/ and
// the key set (unless o.loggedOut). The mount goes away in t.Cleanup,
// lazily if it is busy. A watchdog aborts the FUSE connection and fails
// the test if it runs longer than o.timeout, so a hung request cannot
// hang the test binary. If mounting is impossible the test is skipped,
// or fails under CI=true.
func newEnv(t testing.TB, o envOpts) *testEnv {
	t.Helper()
	e := &testEnv{t: t, backing: tempDir(t, "backing"), mnt: tempDir(t, "mnt")}

	e.kr = crypto.NewKeyring()
	if !o.loopback {
		vpath := crypto.VerifierPath(e.backing)
		if err := e.kr.Create(vpath, testPassword, testKDF); err != nil {
			t.Fatalf("create verifier: %v", err)
		}
		v, err := crypto.ReadVerifier(vpath)
		if err != nil {
			t.Fatalf("read verifier: %v", err)
		}
		e.verifier = v
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
		})
		if err != nil {
			mountFailed(t, err)
		}
		e.root = s.Root
		unmount = s.Unmount
	}

	mounted.Store(e.mnt, true)
	timeout := o.timeout
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	watchdog := time.AfterFunc(timeout, func() {
		t.Errorf("watchdog: test still running after %v; aborting the FUSE connection", timeout)
		// MNT_FORCE makes FUSE abort the connection: every pending and
		// future request fails with ENOTCONN. Then detach the mount.
		_ = unix.Unmount(e.mnt, unix.MNT_FORCE)
		_ = unix.Unmount(e.mnt, unix.MNT_DETACH)
	})

	t.Cleanup(func() {
		watchdog.Stop()
		if err := unmount(); err != nil {
			t.Errorf("unmount: %v; detaching", err)
			_ = unix.Unmount(e.mnt, unix.MNT_DETACH)
		}
		if isMounted(e.mnt) {
			t.Errorf("%s still mounted after cleanup", e.mnt)
			_ = unix.Unmount(e.mnt, unix.MNT_DETACH)
		}
		if !o.allowWarn {
			for _, en := range hook.AllEntries() {
				if en.Level <= logrus.WarnLevel {
					t.Errorf("unexpected log %s: %s %v", en.Level, en.Message, en.Data)
				}
			}
		}
	})
	return e
}

func mountFailed(t testing.TB, err error) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("cannot mount FUSE (CI=true, so this fails): %v", err)
	}
	t.Skipf("cannot mount FUSE: %v", err)
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

func (e *testEnv) logout() {
	e.t.Helper()
	e.kr.Clear()
}

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

func wantErrno(t testing.TB, err error, want syscall.Errno, what string) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: got %v, want %v", what, err, want)
	}
}

// pattern returns n deterministic bytes that differ per seed.
func pattern(seed byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31+int(seed)*7) ^ seed
	}
	return b
}

package fs

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestLogoutCat: a file read before logout cannot be read after it, and
// is readable again after a new login.
func TestLogoutCat(t *testing.T) {
	e := newEnv(t, envOpts{})
	data := markerData(50000)
	mustWrite(t, e.m("x.bin"), data)
	for i := 0; i < 3; i++ {
		if got := mustRead(t, e.m("x.bin")); !bytes.Equal(got, data) {
			t.Fatal("read differs")
		}
	}
	e.logout()
	_, err := os.ReadFile(e.m("x.bin"))
	wantErrno(t, err, syscall.EACCES, "cat after logout")
	e.login()
	if got := mustRead(t, e.m("x.bin")); !bytes.Equal(got, data) {
		t.Fatal("read after re-login differs")
	}
}

// TestLogoutOpenFd: a descriptor opened (and read) before logout gets
// EACCES for reads and writes after it, changes nothing, and works again
// after a new login.
func TestLogoutOpenFd(t *testing.T) {
	e := newEnv(t, envOpts{})
	data := markerData(3*4096 + 10)
	mustWrite(t, e.m("x.bin"), data)
	f, err := os.OpenFile(e.m("x.bin"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, len(data))
	if _, err := f.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, data) {
		t.Fatalf("read before logout: %v", err)
	}
	before := e.backingBytes("x.bin")

	e.logout()
	_, err = f.ReadAt(buf[:100], 0)
	wantErrno(t, err, syscall.EACCES, "pread on old fd")
	_, err = f.WriteAt([]byte("x"), 5)
	wantErrno(t, err, syscall.EACCES, "pwrite on old fd")
	wantErrno(t, f.Truncate(1), syscall.EACCES, "ftruncate on old fd")
	wantErrno(t, unix.Fallocate(int(f.Fd()), 0, 0, 100000), syscall.EACCES, "fallocate on old fd")
	if !bytes.Equal(e.backingBytes("x.bin"), before) {
		t.Fatal("backing file changed while logged out")
	}
	if fi, err := f.Stat(); err != nil || fi.Size() != int64(len(data)) {
		t.Errorf("fstat logged out: %v size %d", err, fi.Size())
	}

	e.login()
	if _, err := f.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, data) {
		t.Fatalf("read on old fd after re-login: %v", err)
	}
}

// touch reads b[off] and reports whether that faulted (SIGBUS).
func touch(b []byte, off int) (v byte, faulted bool) {
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() {
		if r := recover(); r != nil {
			faulted = true
		}
	}()
	return b[off], false
}

// TestLogoutMmap: MAP_SHARED and MAP_PRIVATE mappings of an encrypted
// file work while logged in (reads and shared writes); after logout,
// touching them faults instead of yielding cached plaintext; after a new
// login they work again.
func TestLogoutMmap(t *testing.T) {
	e := newEnv(t, envOpts{})
	const size = 5 * 4096
	data := markerData(size)
	mustWrite(t, e.m("m.bin"), data)

	f, err := os.OpenFile(e.m("m.bin"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	shared, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatalf("mmap MAP_SHARED: %v", err)
	}
	defer unix.Munmap(shared)
	private, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_PRIVATE)
	if err != nil {
		t.Fatalf("mmap MAP_PRIVATE: %v", err)
	}
	defer unix.Munmap(private)

	if !bytes.Equal(shared, data) || !bytes.Equal(private, data) {
		t.Fatal("mapping content differs")
	}
	// Write through the shared mapping; it must reach the file encrypted.
	copy(shared[4096+10:], "WRITTEN-THROUGH-MMAP")
	if err := unix.Msync(shared, unix.MS_SYNC); err != nil {
		t.Fatalf("msync: %v", err)
	}
	want := append([]byte(nil), data...)
	copy(want[4096+10:], "WRITTEN-THROUGH-MMAP")
	if got := mustRead(t, e.m("m.bin")); !bytes.Equal(got, want) {
		t.Fatal("mmap write not visible through read")
	}
	raw := e.backingBytes("m.bin")
	if bytes.Contains(raw, []byte("WRITTEN-THROUGH-MMAP")) || bytes.Contains(raw, marker) {
		t.Fatal("plaintext in backing file after mmap write")
	}

	// Fault every page in right before logout, so both mappings hold
	// plaintext pages that only the logout invalidation can take away.
	time.Sleep(50 * time.Millisecond)
	if !bytes.Equal(shared, want) || !bytes.Equal(private, want) {
		t.Fatal("mappings differ before logout")
	}

	e.logout()
	for _, m := range []struct {
		name string
		b    []byte
	}{{"MAP_SHARED", shared}, {"MAP_PRIVATE", private}} {
		for _, off := range []int{0, 4096 + 10, size - 1} {
			if v, faulted := touch(m.b, off); !faulted {
				t.Errorf("%s: touching offset %d after logout gave %q, want a fault", m.name, off, v)
			}
		}
	}

	e.login()
	if v, faulted := touch(shared, 4096+10); faulted || v != 'W' {
		t.Errorf("MAP_SHARED after re-login: %q faulted=%v", v, faulted)
	}
	if v, faulted := touch(private, 0); faulted || v != data[0] {
		t.Errorf("MAP_PRIVATE after re-login: %q faulted=%v", v, faulted)
	}
}

// TestLogoutUnderReaders: logout while 8 goroutines read encrypted files
// finishes quickly, and every reader then sees EACCES (never garbage).
func TestLogoutUnderReaders(t *testing.T) {
	e := newEnv(t, envOpts{})
	const size = 1 << 20
	data := markerData(size)
	for i := 0; i < 2; i++ {
		mustWrite(t, e.m([]string{"r0.bin", "r1.bin"}[i]), data)
	}
	var reads atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	stop := make(chan struct{})
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			f, err := os.Open(e.m([]string{"r0.bin", "r1.bin"}[i%2]))
			if err != nil {
				errs <- err
				return
			}
			defer f.Close()
			rng := rand.New(rand.NewPCG(uint64(i), 1))
			buf := make([]byte, 128<<10)
			for {
				select {
				case <-stop:
					errs <- errors.New("reader never saw EACCES")
					return
				default:
				}
				off := rng.IntN(size - len(buf))
				n, err := f.ReadAt(buf, int64(off))
				if err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(buf[:n], data[off:off+n]) {
					errs <- errors.New("reader got wrong bytes")
					return
				}
				reads.Add(1)
			}
		}(i)
	}
	waitFor(t, 10*time.Second, "readers to get going", func() bool { return reads.Load() >= 64 })

	start := time.Now()
	e.logout()
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("logout under 8 readers took %v", d)
	} else {
		t.Logf("logout under 8 readers took %v (%d reads before)", d, reads.Load())
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		close(stop)
		<-done
	}
	close(errs)
	for err := range errs {
		if !errors.Is(err, syscall.EACCES) {
			t.Errorf("reader ended with %v, want EACCES", err)
		}
	}
}

// TestLogoutRace: logout and login racing readers, writers and
// truncates on encrypted files. Every operation either works on the right
// data or fails with EACCES; nothing else.
func TestLogoutRace(t *testing.T) {
	e := newEnv(t, envOpts{})
	const size = 64 << 10
	data := markerData(size)
	mustWrite(t, e.m("a.bin"), data)

	var wg sync.WaitGroup
	var bad atomic.Int64
	stop := make(chan struct{})
	work := func(i int) {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(uint64(i), 2))
		buf := make([]byte, 8192)
		for {
			select {
			case <-stop:
				return
			default:
			}
			f, err := os.OpenFile(e.m("a.bin"), os.O_RDWR, 0)
			if err != nil {
				if !errors.Is(err, syscall.EACCES) {
					t.Errorf("open: %v", err)
					bad.Add(1)
				}
				time.Sleep(time.Millisecond)
				continue
			}
			for j := 0; j < 20; j++ {
				off := rng.IntN(size - len(buf))
				var err error
				switch rng.IntN(3) {
				case 0:
					var n int
					n, err = f.ReadAt(buf, int64(off))
					if err == nil {
						// Content is data, or data overwritten by
						// writers with the same bytes.
						if !bytes.Equal(buf[:n], data[off:off+n]) {
							t.Errorf("read wrong bytes at %d", off)
							bad.Add(1)
						}
					}
				case 1:
					_, err = f.WriteAt(data[off:off+len(buf)], int64(off))
				case 2:
					err = f.Truncate(size)
				}
				if err != nil && !errors.Is(err, syscall.EACCES) {
					t.Errorf("op: %v", err)
					bad.Add(1)
				}
			}
			f.Close()
		}
	}
	for i := 0; i < 6; i++ {
		wg.Add(1)
		go work(i)
	}
	for i := 0; i < 20 && bad.Load() == 0; i++ {
		time.Sleep(20 * time.Millisecond)
		e.logout()
		time.Sleep(5 * time.Millisecond)
		e.login()
	}
	close(stop)
	wg.Wait()
	if got := mustRead(t, e.m("a.bin")); !bytes.Equal(got, data) {
		t.Error("final content differs")
	}
}

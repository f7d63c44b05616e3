package fs

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/logkey"
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

// mmapHelper runs in a child process (see TestMain): it maps the file at
// path MAP_SHARED (read-write) and MAP_PRIVATE (read-only) and answers
// commands on stdin. A process must not touch an mmap of a FUSE mount it
// serves itself: the faulting thread holds its P, and a garbage
// collection stopping the world then waits for it forever while the
// request it waits for is never served (go-fuse fs/api.go, "Deadlocks").
//
//	sum                  print "<sha256 of shared> <sha256 of private>"
//	write OFF TEXT       copy TEXT into the shared mapping at OFF, msync
//	dirty OFF TEXT       copy TEXT into the shared mapping at OFF, no msync
//	probe OFF            print "<shared byte or FAULT> <private byte or FAULT>"
//	fsync, msync         fsync the file, msync the shared mapping: "ok" or "failed ERR"
func mmapHelper(path string, size int) int {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	shared, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		fmt.Println("error mmap shared:", err)
		return 1
	}
	private, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_PRIVATE)
	if err != nil {
		fmt.Println("error mmap private:", err)
		return 1
	}
	show := func(b []byte, off int) string {
		if v, faulted := touch(b, off); !faulted {
			return strconv.Itoa(int(v))
		}
		return "FAULT"
	}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		w := strings.Fields(in.Text())
		switch w[0] {
		case "sum":
			fmt.Printf("%x %x\n", sha256.Sum256(shared), sha256.Sum256(private))
		case "write":
			off, _ := strconv.Atoi(w[1])
			copy(shared[off:], w[2])
			if err := unix.Msync(shared, unix.MS_SYNC); err != nil {
				fmt.Println("error msync:", err)
				continue
			}
			fmt.Println("ok")
		case "dirty":
			off, _ := strconv.Atoi(w[1])
			copy(shared[off:], w[2])
			fmt.Println("ok")
		case "probe":
			off, _ := strconv.Atoi(w[1])
			fmt.Println(show(shared, off), show(private, off))
		case "fsync", "msync":
			var err error
			if w[0] == "fsync" {
				err = f.Sync()
			} else {
				err = unix.Msync(shared, unix.MS_SYNC)
			}
			if err != nil {
				fmt.Println("failed", err)
				continue
			}
			fmt.Println("ok")
		}
	}
	return 0
}

// mapper talks to an mmapHelper process.
type mapper struct {
	t   *testing.T
	in  io.WriteCloser
	out *bufio.Scanner
	cmd *exec.Cmd
}

func startMapper(t *testing.T, path string, size int) *mapper {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "MOUNTD_MMAP_HELPER="+path, "MOUNTD_MMAP_SIZE="+strconv.Itoa(size))
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	outp, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m := &mapper{t: t, in: in, out: bufio.NewScanner(outp), cmd: cmd}
	t.Cleanup(func() {
		in.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	return m
}

func (m *mapper) do(cmd string) string {
	m.t.Helper()
	if _, err := fmt.Fprintln(m.in, cmd); err != nil {
		m.t.Fatalf("mmap helper: %v", err)
	}
	if !m.out.Scan() {
		m.t.Fatalf("mmap helper: no answer to %q: %v", cmd, m.out.Err())
	}
	reply := m.out.Text()
	if strings.HasPrefix(reply, "error") {
		m.t.Fatalf("mmap helper: %s", reply)
	}
	return reply
}

// TestLogoutMmap: MAP_SHARED and MAP_PRIVATE mappings of an encrypted
// file work while logged in (reads and shared writes); after logout,
// touching them faults instead of yielding cached plaintext; after a new
// login they work again. The mappings live in a child process.
func TestLogoutMmap(t *testing.T) {
	e := newEnv(t, envOpts{})
	const size = 5 * 4096
	data := markerData(size)
	mustWrite(t, e.m("m.bin"), data)

	m := startMapper(t, e.m("m.bin"), size)
	sum := fmt.Sprintf("%x", sha256.Sum256(data))
	if got := m.do("sum"); got != sum+" "+sum {
		t.Fatalf("mapping content differs: %s", got)
	}
	// Write through the shared mapping; it must reach the file encrypted.
	m.do("write 4106 WRITTEN-THROUGH-MMAP")
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
	wsum := fmt.Sprintf("%x", sha256.Sum256(want))
	if got := m.do("sum"); got != wsum+" "+wsum {
		t.Fatalf("mappings differ before logout: %s", got)
	}

	e.logout()
	for _, off := range []int{0, 4096 + 10, size - 1} {
		if got := m.do(fmt.Sprintf("probe %d", off)); got != "FAULT FAULT" {
			t.Errorf("offset %d after logout: shared, private = %s; want faults", off, got)
		}
	}

	e.login()
	if got, w := m.do("probe 4106"), fmt.Sprintf("%d %d", 'W', 'W'); got != w {
		t.Errorf("after re-login: %s, want %s", got, w)
	}
	if got, w := m.do("probe 0"), fmt.Sprintf("%d %d", data[0], data[0]); got != w {
		t.Errorf("after re-login: %s, want %s", got, w)
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

// TestLogoutDirtyMmap: flush, then lock. Pages of a shared mapping
// dirtied and not synced before logout are written back, encrypted, while
// the key is still set: after the logout the mapping faults (no plaintext
// served), fsync and msync succeed, the backing file holds the new bytes
// only encrypted, and after the next login the file has them.
func TestLogoutDirtyMmap(t *testing.T) {
	e := newEnv(t, envOpts{})
	const size = 5 * 4096
	data := markerData(size)
	mustWrite(t, e.m("m.bin"), data)
	m := startMapper(t, e.m("m.bin"), size)
	m.do("sum")
	const text = "DIRTY-UNSYNCED-PAGE"
	m.do("dirty 8200 " + text)
	m.do("dirty 100 " + text)
	before := e.backingBytes("m.bin")

	e.logout()
	if got := m.do("probe 8200"); got != "FAULT FAULT" {
		t.Errorf("dirty page after logout: %s, want faults", got)
	}
	if got := m.do("fsync"); got != "ok" {
		t.Errorf("fsync after logout: %s", got)
	}
	if got := m.do("msync"); got != "ok" {
		t.Errorf("msync after logout: %s", got)
	}
	raw := e.backingBytes("m.bin")
	if bytes.Equal(raw, before) {
		t.Error("the dirty pages were not written back before the lock")
	}
	if bytes.Contains(raw, []byte(text)) || bytes.Contains(raw, marker) {
		t.Error("plaintext in the backing file")
	}

	e.login()
	want := append([]byte(nil), data...)
	copy(want[8200:], text)
	copy(want[100:], text)
	got, err := os.ReadFile(e.m("m.bin"))
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("content after re-login: %v (dirty bytes kept: %v)", err, bytes.Contains(got, []byte(text)))
	}
	if w := e.warnings(); len(w) > 0 {
		t.Errorf("warnings: %v", w[0].Message)
	}
}

// fsImmutableFl is FS_IMMUTABLE_FL (linux/fs.h), which x/sys/unix lacks.
const fsImmutableFl = 0x10

// setImmutable sets or clears the immutable flag of the file at path
// (FS_IOC_SETFLAGS, as chattr +i does).
func setImmutable(t *testing.T, path string, on bool) {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	flags, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
	if err != nil {
		t.Skipf("no file flags here: %v", err)
	}
	if on {
		flags |= fsImmutableFl
	} else {
		flags &^= fsImmutableFl
	}
	if err := unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(flags)); err != nil {
		t.Skipf("cannot set the immutable flag: %v", err)
	}
}

// TestLogoutFailedWriteback: never a silent loss. When the write-back of
// a dirty mapped page fails at logout (here: the backing file was made
// immutable), the daemon logs an error naming the file, and the
// application's next fsync reports the failure.
func TestLogoutFailedWriteback(t *testing.T) {
	e := newEnv(t, envOpts{allowWarn: true})
	const size = 3 * 4096
	mustWrite(t, e.m("w.bin"), markerData(size))
	m := startMapper(t, e.m("w.bin"), size)
	m.do("sum")
	m.do("dirty 5000 CANNOT-BE-STORED")
	setImmutable(t, e.b("w.bin"), true)
	t.Cleanup(func() { setImmutable(t, e.b("w.bin"), false) })

	e.logout()
	if got := m.do("fsync"); !strings.HasPrefix(got, "failed") {
		t.Errorf("fsync after a failed write-back: %s, want the error", got)
	}
	logged := false
	for _, en := range e.hook.AllEntries() {
		if en.Level <= logrus.ErrorLevel && en.Data[logkey.Path] == "w.bin" && strings.Contains(en.Message, "write-back") {
			logged = true
		}
	}
	if !logged {
		t.Error("the failed write-back was not logged with the path")
	}
}

// TestUnmountReleasesLeftHandles: handles whose RELEASE the kernel never
// sends (an unmount aborts the connection, dropping a RELEASE still
// queued) are released when the server stops, so no descriptor of the
// backing directory stays open: with the backing directory on sshfs, one
// left open kept sshfs from unmounting (TestOnSSHFS's cleanup).
func TestUnmountReleasesLeftHandles(t *testing.T) {
	e := newEnv(t, envOpts{})
	mustWrite(t, e.m("a.bin"), markerData(10000)) // encrypted: a cryptFile
	mustWrite(t, e.m("b.txt"), []byte("plain"))   // a passthrough handle
	if err := os.Mkdir(e.m("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	var open []*os.File
	for _, n := range []string{"a.bin", "b.txt", "d"} {
		f, err := os.Open(e.m(n))
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, f)
	}
	if got := backingFds(t, e.backing); len(got) < 3 {
		t.Fatalf("descriptors of the backing directory while 3 files are open: %v", got)
	}
	// Abort the connection (MNT_FORCE; the mount stays, busy): the
	// RELEASEs of the closes below never reach the daemon.
	_ = unix.Unmount(e.mnt, unix.MNT_FORCE)
	for _, f := range open {
		_ = f.Close() // ENOTCONN is expected
	}
	if err := e.unmount(); err != nil {
		t.Fatal(err)
	}
	if got := backingFds(t, e.backing); len(got) > 0 {
		t.Errorf("descriptors of the backing directory left open after the unmount: %v", got)
	}
}

// backingFds lists this process's descriptors that point into dir.
func backingFds(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, en := range ents {
		l, err := os.Readlink("/proc/self/fd/" + en.Name())
		if err == nil && (l == dir || strings.HasPrefix(l, dir+"/")) {
			out = append(out, en.Name()+" -> "+l)
		}
	}
	return out
}

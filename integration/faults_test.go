package integration

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// pattern returns the deterministic content of a stream at [off, off+n):
// every 8 bytes hold their own offset, so any prefix can be checked.
func pattern(off int64, n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i++ {
		pos := off + int64(i)
		var w [8]byte
		binary.BigEndian.PutUint64(w[:], uint64(pos/8))
		b[i] = w[pos%8] ^ 0x5a
	}
	return b
}

// checkPrefix reads path through the mount and checks it is a prefix of
// pattern; it returns the length.
func checkPrefix(t *testing.T, path string) int64 {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading %s after the crash: %v", path, err)
	}
	if !bytes.Equal(got, pattern(0, len(got))) {
		t.Fatalf("%s: %d bytes, not a prefix of what was written", path, len(got))
	}
	return int64(len(got))
}

// checkAcked checks the file at path after a kill -9 of the daemon during
// a stream of writes of pattern(0, ...), of which the first acked bytes
// were acknowledged: those must read back exactly, without error. Past
// them the write in flight when the daemon died may have left its bytes,
// or a size that claims bytes its last slot never got (the daemon sets
// the size before it writes the slots: docs/FORMAT.md section 5), which
// read as EIO, never as other bytes. It returns how many bytes read back
// (at least acked).
func checkAcked(t *testing.T, path string, acked int64) int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("opening %s after the crash: %v", path, err)
	}
	defer f.Close()
	buf := make([]byte, acked)
	if n, err := f.ReadAt(buf, 0); int64(n) != acked {
		t.Fatalf("%s after the crash: %d of the %d acknowledged bytes read back (%v)", path, n, acked, err)
	}
	if !bytes.Equal(buf, pattern(0, int(acked))) {
		t.Fatalf("%s: the %d acknowledged bytes differ from what was written", path, acked)
	}
	got := acked
	for chunk := make([]byte, 4096); ; {
		n, err := f.ReadAt(chunk, got)
		if !bytes.Equal(chunk[:n], pattern(got, n)) {
			t.Fatalf("%s: bytes at %d past the acknowledged %d differ from what was written", path, got, acked)
		}
		got += int64(n)
		switch {
		case err == nil:
			continue
		case errors.Is(err, io.EOF):
		case errors.Is(err, syscall.EIO):
			t.Logf("%s: EIO at %d, past the %d acknowledged bytes (the write in flight at the kill)", path, got, acked)
		default:
			t.Fatalf("%s: reading past the acknowledged bytes at %d: %v", path, got, err)
		}
		return got
	}
}

// noTemps fails if a temp file is left anywhere in the backing dir.
func noTemps(t *testing.T, data string) {
	t.Helper()
	filepath.WalkDir(data, func(p string, e os.DirEntry, err error) error {
		if err == nil && (strings.HasPrefix(e.Name(), ".mountd-tmp-") || strings.HasPrefix(e.Name(), ".verifier.tmp-")) {
			t.Errorf("temp file left: %s", p)
		}
		return nil
	})
}

// TestKillDuringStreamingWrite: kill -9 while a large file is streamed in
// 1 MiB writes; after restart and login the file reads without error and
// holds a block-aligned prefix of what was written.
func TestKillDuringStreamingWrite(t *testing.T) {
	d := newDaemon(t)
	d.start()
	d.mustLogin(password)
	path := filepath.Join(d.mnt, "stream.bin")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	written := make(chan int64, 1)
	// The kill lands mid-stream: after 16 acknowledged writes, however
	// slow the machine.
	running := make(chan struct{})
	go func() {
		var off int64
		for {
			if _, err := f.WriteAt(pattern(off, 1<<20), off); err != nil {
				break
			}
			off += 1 << 20
			if off == 16<<20 {
				close(running)
			}
		}
		written <- off
	}()
	waitOrFail(t, running, written, "the stream")
	d.kill()
	n := <-written
	f.Close()
	d.start()
	d.mustLogin(password)
	if got := checkAcked(t, path, n); got > n+(1<<20) {
		t.Fatalf("file holds %d bytes; writer saw %d acknowledged and had at most 1 MiB more in flight", got, n)
	}
	noTemps(t, d.data)
}

// waitOrFail waits until a writer signals running; a writer that stops
// first (its result on written) fails the test.
func waitOrFail(t *testing.T, running <-chan struct{}, written <-chan int64, what string) {
	t.Helper()
	select {
	case <-running:
	case n := <-written:
		t.Fatalf("%s failed after %d bytes, before the kill", what, n)
	}
}

// TestKillDuringSmallWrites: kill -9 during many small sequential writes
// (each a read-modify-write of the last block).
func TestKillDuringSmallWrites(t *testing.T) {
	d := newDaemon(t)
	d.start()
	d.mustLogin(password)
	path := filepath.Join(d.mnt, "small.bin")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	written := make(chan int64, 1)
	running := make(chan struct{})
	go func() {
		var off int64
		for i := 0; ; i++ {
			n := 37 + int(off%500)
			if _, err := f.WriteAt(pattern(off, n), off); err != nil {
				break
			}
			off += int64(n)
			if i == 2000 {
				close(running)
			}
		}
		written <- off
	}()
	waitOrFail(t, running, written, "the small writes")
	d.kill()
	n := <-written
	f.Close()
	d.start()
	d.mustLogin(password)
	if got := checkAcked(t, path, n); got > n+600 {
		t.Fatalf("file holds %d bytes, writer had %d acknowledged and at most one write of < 600 in flight", got, n)
	}
}

// TestKillDuringPasswordChange: kill -9 while passwords are being
// changed back and forth; after restart exactly one of them works and the
// verifier is whole.
func TestKillDuringPasswordChange(t *testing.T) {
	d := newDaemon(t, "--kdf-time", "2", "--kdf-memory", "19", "--kdf-threads", "1")
	d.start()
	d.mustLogin("pw-A")
	os.WriteFile(filepath.Join(d.mnt, "keep.bin"), []byte("kept across password changes"), 0o600)
	var changes atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		pws := [2]string{"pw-A", "pw-B"}
		for i := 0; ; {
			body, _ := json.Marshal(map[string]string{"old_password": pws[i%2], "new_password": pws[(i+1)%2]})
			req, _ := newJSONRequest(d.addr, "/api/system/change_password", body)
			resp, err := d.client.Do(req)
			if err != nil {
				return // the daemon is gone
			}
			resp.Body.Close()
			if resp.StatusCode == 200 {
				i++
				changes.Add(1)
			}
		}
	}()
	// Let a few changes complete, then kill at a random moment.
	deadline := time.Now().Add(2 * time.Minute)
	for changes.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if changes.Load() < 2 {
		t.Fatal("fewer than 2 password changes completed in 2 minutes")
	}
	time.Sleep(time.Duration(rand.IntN(400)) * time.Millisecond)
	d.kill()
	<-done
	d.start()
	a, b := d.login("pw-A"), d.login("pw-B")
	if (a.Status == 200) == (b.Status == 200) {
		t.Fatalf("after the crash: pw-A %d, pw-B %d; want exactly one to work", a.Status, b.Status)
	}
	if got, err := os.ReadFile(filepath.Join(d.mnt, "keep.bin")); err != nil || string(got) != "kept across password changes" {
		t.Fatalf("data after crash: %q %v", got, err)
	}
	noTemps(t, d.data)
}

// TestDiskFull puts the backing dir on a 24 MiB tmpfs: writes fail with
// ENOSPC, nothing stored is damaged, a password change fails cleanly, and
// everything works again once space is freed.
func TestDiskFull(t *testing.T) {
	d := newDaemon(t)
	if err := os.MkdirAll(d.data, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", d.data).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", d.data).Run() })
	d.start()
	d.mustLogin(password)
	keep := pattern(0, 3<<20)
	if err := os.WriteFile(filepath.Join(d.mnt, "keep.bin"), keep, 0o600); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(d.mnt, "plain.txt"), []byte("plain"), 0o600)
	vBefore := fileHash(t, filepath.Join(d.data, "auth", "verifier.bin"))

	f, err := os.Create(filepath.Join(d.mnt, "fill.bin"))
	if err != nil {
		t.Fatal(err)
	}
	var off int64
	var werr error
	for off < 64<<20 {
		if _, werr = f.WriteAt(pattern(off, 1<<20), off); werr != nil {
			break
		}
		off += 1 << 20
	}
	f.Close()
	if !errors.Is(werr, syscall.ENOSPC) {
		t.Fatalf("filling the disk: %v after %d bytes, want ENOSPC", werr, off)
	}
	// Small writes fail too, with ENOSPC and not EIO.
	if err := os.WriteFile(filepath.Join(d.mnt, "more.bin"), pattern(0, 1<<20), 0o600); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write on a full disk: %v", err)
	}
	// Nothing stored is damaged.
	if got, err := os.ReadFile(filepath.Join(d.mnt, "keep.bin")); err != nil || !bytes.Equal(got, keep) {
		t.Fatalf("keep.bin after ENOSPC: %v", err)
	}
	checkPrefix(t, filepath.Join(d.mnt, "fill.bin"))
	// A password change on a full disk fails and leaves the verifier whole.
	body, _ := json.Marshal(map[string]string{"old_password": password, "new_password": "new-pw"})
	req, _ := newJSONRequest(d.addr, "/api/system/change_password", body)
	if resp, err := d.client.Do(req); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			// tmpfs may still find room for 104 bytes; then the new
			// password must be the one that works.
			d.do("GET", "/api/system/logout", "", "")
			d.mustLogin("new-pw")
			d.mustLogin("new-pw")
		} else if fileHash(t, filepath.Join(d.data, "auth", "verifier.bin")) != vBefore {
			t.Fatal("a failed password change modified the verifier")
		}
	}
	noTemps(t, d.data)
	// Free space: writing works again.
	if err := os.Remove(filepath.Join(d.mnt, "fill.bin")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d.mnt, "more.bin"), pattern(0, 1<<20), 0o600); err != nil {
		t.Fatalf("write after freeing space: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(d.mnt, "plain.txt")); err != nil || string(got) != "plain" {
		t.Fatalf("plain.txt: %q %v", got, err)
	}
}

// runExpectingFailure runs the daemon and expects it to exit non-zero
// quickly with a message containing want.
func runExpectingFailure(t *testing.T, want string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, mountdBin, args...).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("daemon %v: %v, want a non-zero exit\n%s", args, err, out)
	}
	if !strings.Contains(string(out), want) {
		t.Fatalf("daemon output lacks %q:\n%s", want, out)
	}
}

func TestBadBackingDir(t *testing.T) {
	requireFUSE(t)
	root := t.TempDir()
	mnt := filepath.Join(root, "mnt")
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	file := filepath.Join(root, "file")
	os.WriteFile(file, []byte("x"), 0o600)
	t.Run("data is a file", func(t *testing.T) {
		runExpectingFailure(t, "not a directory", "--data", file, "--mount", mnt, "--listen", listen)
	})
	t.Run("data is read-only", func(t *testing.T) {
		ro := filepath.Join(root, "ro")
		os.MkdirAll(ro, 0o700)
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", ro).CombinedOutput(); err != nil {
			t.Skipf("cannot mount a tmpfs: %v %s", err, out)
		}
		defer exec.Command("umount", "-l", ro).Run()
		runExpectingFailure(t, "not readable and writable", "--data", ro, "--mount", mnt, "--listen", listen)
	})
	t.Run("mountpoint not empty", func(t *testing.T) {
		full := filepath.Join(root, "full")
		os.MkdirAll(filepath.Join(full, "x"), 0o755)
		runExpectingFailure(t, "not empty", "--data", filepath.Join(root, "d"), "--create", "--mount", full, "--listen", listen)
	})
	t.Run("port taken", func(t *testing.T) {
		d := newDaemon(t)
		d.start()
		runExpectingFailure(t, "control plane", "--data", filepath.Join(root, "d2"), "--create", "--mount", filepath.Join(root, "m2"), "--listen", d.addr)
	})
	if isMounted(mnt) {
		t.Fatal("a failed start left a mount")
	}

	t.Run("data removed while running", func(t *testing.T) {
		d := newDaemon(t)
		d.start()
		d.mustLogin(password)
		os.WriteFile(filepath.Join(d.mnt, "a.bin"), []byte("a"), 0o600)
		if err := os.RemoveAll(d.data); err != nil {
			t.Fatal(err)
		}
		if _, err := os.ReadFile(filepath.Join(d.mnt, "a.bin")); err == nil {
			t.Fatal("read a file whose backing dir is gone")
		}
		if err := os.WriteFile(filepath.Join(d.mnt, "b.bin"), []byte("b"), 0o600); err == nil {
			t.Fatal("created a file in a removed backing dir")
		}
		if st := d.status(false); st["key_set"] != true {
			t.Fatalf("status: %v", st)
		}
		if err := d.stop(); err != nil {
			t.Fatalf("exit after the backing dir vanished: %v", err)
		}
	})
}

// TestBadVerifier: a corrupted, truncated or absurd verifier makes login
// fail with a clear error before any allocation; the daemon keeps running.
func TestBadVerifier(t *testing.T) {
	d := newDaemon(t)
	d.start()
	d.mustLogin(password)
	vpath := filepath.Join(d.data, "auth", "verifier.bin")
	good, err := os.ReadFile(vpath)
	if err != nil {
		t.Fatal(err)
	}
	d.logout()
	cases := map[string][]byte{
		"truncated": good[:50],
		"garbage":   bytes.Repeat([]byte{0xee}, len(good)),
		"4 GiB memory": func() []byte {
			b := append([]byte(nil), good...)
			binary.BigEndian.PutUint32(b[16:20], 4<<20)
			return b
		}(),
	}
	for name, content := range cases {
		t.Run(name, func(t *testing.T) {
			if err := os.WriteFile(vpath, content, 0o600); err != nil {
				t.Fatal(err)
			}
			r := d.login(password)
			if r.Status != 500 || r.JSON["error"] != "RESULT_BAD_VERIFIER" {
				t.Fatalf("login with a %s verifier: %d %s", name, r.Status, r.Raw)
			}
			if hwm := peakRSSMiB(t, d.cmd.Process.Pid); hwm > 400 {
				t.Fatalf("daemon peak RSS %d MiB: the bad parameters were used", hwm)
			}
		})
	}
	os.WriteFile(vpath, good, 0o600)
	d.mustLogin(password)
}

func peakRSSMiB(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb / 1024
		}
	}
	t.Fatal("no VmHWM")
	return 0
}

// TestSIGTERMWithOpenFiles: SIGTERM while files are open through the
// mount exits 0 and leaves no mount.
func TestSIGTERMWithOpenFiles(t *testing.T) {
	d := newDaemon(t)
	d.start()
	d.mustLogin(password)
	os.WriteFile(filepath.Join(d.mnt, "open.bin"), []byte("data"), 0o600)
	f, err := os.Open(filepath.Join(d.mnt, "open.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir, err := os.Open(d.mnt)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	if err := d.stop(); err != nil {
		t.Fatalf("exit status after SIGTERM with open files: %v\n%s", err, d.out.String())
	}
	if isMounted(d.mnt) {
		t.Fatal("mount still listed after SIGTERM")
	}
	if _, err := f.Read(make([]byte, 4)); err == nil {
		t.Fatal("an fd on the dead mount still reads data")
	}
}

// TestTamperThroughMount: flipped bits and swapped blocks read as EIO,
// are logged, and the daemon keeps serving other files.
func TestTamperThroughMount(t *testing.T) {
	d := newDaemon(t)
	d.start()
	d.mustLogin(password)
	content := pattern(0, 5*4096)
	for _, n := range []string{"flip.bin", "swap.bin", "ok.bin"} {
		if err := os.WriteFile(filepath.Join(d.mnt, n), content, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Content format version 2 (docs/FORMAT.md 2.1): block i >= 1 is the
	// whole page i; blocks 1 and 2 are full, so swapping their pages
	// leaves two well-formed slots at the wrong positions.
	const page = 4096
	b, _ := os.OpenFile(filepath.Join(d.data, "flip.bin"), os.O_RDWR, 0)
	var c [1]byte
	b.ReadAt(c[:], page+100)
	c[0] ^= 0x80
	b.WriteAt(c[:], page+100)
	b.Close()
	s, _ := os.OpenFile(filepath.Join(d.data, "swap.bin"), os.O_RDWR, 0)
	b0, b1 := make([]byte, page), make([]byte, page)
	s.ReadAt(b0, page)
	s.ReadAt(b1, 2*page)
	s.WriteAt(b1, page)
	s.WriteAt(b0, 2*page)
	s.Close()
	for _, n := range []string{"flip.bin", "swap.bin"} {
		f, err := os.Open(filepath.Join(d.mnt, n))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(f)
		f.Close()
		if !errors.Is(err, syscall.EIO) {
			t.Fatalf("%s: read %d bytes, err %v; want EIO", n, len(got), err)
		}
		if bytes.Contains(got, content[4096:8192]) && n == "swap.bin" && len(got) > 4096 {
			t.Fatalf("%s: tampered block served", n)
		}
	}
	if got, err := os.ReadFile(filepath.Join(d.mnt, "ok.bin")); err != nil || !bytes.Equal(got, content) {
		t.Fatalf("untampered file: %v", err)
	}
	if !strings.Contains(d.out.String(), "level=warning") {
		t.Fatal("authentication failure not logged as a warning")
	}
}

// TestMigrateDiskFull: the migration on a full backing filesystem fails
// cleanly (every file whole, no temp left), and a re-run after a little
// space is freed (less than all the copies need at once) finishes the job.
func TestMigrateDiskFull(t *testing.T) {
	d := newDaemon(t, migFastKDF...)
	if err := os.MkdirAll(d.data, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", d.data).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", d.data).Run() })
	// 6 plaintext files of 1.5 MiB before the first login, then a filler
	// that leaves no room for even one encrypted copy. (With room for a
	// few, the task commits what it has and goes on.)
	want := map[string][]byte{}
	for i := 0; i < 6; i++ {
		name := fmt.Sprintf("f%d.bin", i)
		want[name] = pattern(int64(i)<<32, 3<<19)
		if err := os.WriteFile(filepath.Join(d.data, name), want[name], 0o644); err != nil {
			t.Fatal(err)
		}
	}
	filler := filepath.Join(d.data, "filler.dat")
	if err := os.WriteFile(filler, make([]byte, 6<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	d.start()
	d.mustLogin(password)
	tk := migWait(t, d, migStart(t, d).ID, nil)
	if tk.State == "succeeded" && tk.FilesFailed == 0 {
		t.Fatalf("the migration did not run out of space: %v", tk.raw)
	}
	migNoTemps(t, d.data)
	check := func() {
		for name, data := range want {
			got, err := os.ReadFile(filepath.Join(d.mnt, name))
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("%s after the full-disk migration: %v", name, err)
			}
		}
	}
	check()
	// Free some space: room for two copies, not for all six at once. The
	// task must commit what it has and remove the old plaintexts to make
	// room, rather than fail.
	if err := os.WriteFile(filler, make([]byte, 3<<20+512<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	tk = migWait(t, d, migStart(t, d).ID, nil)
	if tk.State != "succeeded" || tk.FilesFailed != 0 {
		t.Fatalf("re-run after freeing space: %v", tk.raw)
	}
	migNoTemps(t, d.data)
	check()
	for name := range want {
		raw, _ := os.ReadFile(filepath.Join(d.data, name))
		if !bytes.HasPrefix(raw, []byte("MTDENC")) {
			t.Fatalf("%s not encrypted after the re-run", name)
		}
	}
}

// TestRestartRightAfterKill: a daemon started again at once after kill -9
// (a service manager restarting it) detaches the dead mount and serves:
// the kernel keeps answering a stat of the dead mount's root from cached
// attributes for a while, so a check by stat took it for a live mount
// served by someone else and refused to start.
func TestRestartRightAfterKill(t *testing.T) {
	d := newDaemon(t)
	d.start()
	d.mustLogin(password)
	if err := os.WriteFile(filepath.Join(d.mnt, "a.bin"), []byte("before the kill"), 0o600); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(d.mnt, &st); err != nil { // the root's attributes cached
		t.Fatal(err)
	}
	d.kill()
	d.start()
	d.mustLogin(password)
	got, err := os.ReadFile(filepath.Join(d.mnt, "a.bin"))
	if err != nil || string(got) != "before the kill" {
		t.Fatalf("after the restart: %q, %v", got, err)
	}
}

package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Operating the daemon: one daemon per data directory and mountpoint,
// stale mounts, systemd readiness, the command line's exit codes, help and
// JSON, the files encrypt-existing leaves plaintext, tasks and cancel.

// runMountd runs the binary with args (and env added to the environment)
// and returns its stdout, stderr and exit code. A daemon that does not
// exit within a minute is killed (the test then fails on its code).
func runMountd(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, mountdBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("mountd %q: %v", args, err)
	}
	return out.String(), errb.String(), cmd.ProcessState.ExitCode()
}

// mountsAt returns the file system types mounted at path, bottom first.
func mountsAt(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		for i := 6; i+1 < len(f); i++ {
			if f[i] == "-" && f[4] == path {
				types = append(types, f[i+1])
			}
		}
	}
	return types
}

// unmountAllAt unmounts (lazily) whatever a failed test stacked at path.
func unmountAllAt(t *testing.T, path string) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for range 10 {
			if len(mountsAt(t, path)) == 0 {
				return
			}
			exec.Command("umount", "-l", path).Run()
		}
	})
}

func freeAddr(t *testing.T) string { return fmt.Sprintf("127.0.0.1:%d", freePort(t)) }

// TestSecondDaemonRefused: a second daemon on a live mountpoint (directly
// or through a symlink) or on a served data directory is refused with a
// message naming the daemon that has it, exit 6, and no second mount.
func TestSecondDaemonRefused(t *testing.T) {
	d := newDaemon(t)
	d.start()
	unmountAllAt(t, d.mnt)
	pid := d.cmd.Process.Pid
	root := t.TempDir()
	link := filepath.Join(root, "link-to-mnt")
	if err := os.Symlink(d.mnt, link); err != nil {
		t.Fatal(err)
	}

	other := filepath.Join(root, "Other_Data")
	for _, mnt := range []string{d.mnt, link} {
		_, errs, code := runMountd(t, nil, "--data", other, "--create", "--mount", mnt, "--listen", freeAddr(t))
		want := fmt.Sprintf("is already a mountd mount of %s, served by pid %d", d.data, pid)
		if code != 6 || !strings.Contains(errs, want) || strings.Contains(errs, "not empty") {
			t.Errorf("second daemon on %s: exit %d, want 6 and %q:\n%s", mnt, code, want, errs)
		}
		if got := mountsAt(t, d.mnt); len(got) != 1 {
			t.Fatalf("mounts at %s: %v, want the first daemon's only", d.mnt, got)
		}
		if _, err := os.Stat(other); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the refused daemon created its data directory (%v)", err)
		}
	}

	mnt2 := filepath.Join(root, "mnt2")
	_, errs, code := runMountd(t, nil, "--data", d.data, "--mount", mnt2, "--listen", freeAddr(t))
	want := fmt.Sprintf("data directory %s is served by mountd pid %d (mounted at %s)", d.data, pid, d.mnt)
	if code != 6 || !strings.Contains(errs, want) {
		t.Errorf("second daemon on the data directory: exit %d, want 6 and %q:\n%s", code, want, errs)
	}
	if got := mountsAt(t, mnt2); len(got) != 0 {
		t.Errorf("mounts at %s: %v", mnt2, got)
	}
	if _, err := os.Stat(mnt2); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the refused daemon created its mountpoint (%v)", err)
	}

	// The first daemon is untouched: logout through it still locks.
	d.mustLogin(password)
	if err := os.WriteFile(filepath.Join(d.mnt, "s.bin"), []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	d.logout()
	if _, err := os.ReadFile(filepath.Join(d.mnt, "s.bin")); !errors.Is(err, os.ErrPermission) {
		t.Fatalf("read after logout: %v, want EACCES", err)
	}
}

// TestForeignMountRefused: a mountpoint that is another file system's
// mount is refused with its type, and left alone.
func TestForeignMountRefused(t *testing.T) {
	requireFUSE(t)
	root := t.TempDir()
	mnt := filepath.Join(root, "mnt")
	os.Mkdir(mnt, 0o755)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", mnt).Run() })
	unmountAllAt(t, mnt)
	_, errs, code := runMountd(t, nil, "--data", filepath.Join(root, "data"), "--create", "--mount", mnt, "--listen", freeAddr(t))
	if code != 6 || !strings.Contains(errs, "is already a tmpfs mount of tmpfs") {
		t.Errorf("exit %d, want 6 and the tmpfs named:\n%s", code, errs)
	}
	if got := mountsAt(t, mnt); len(got) != 1 || got[0] != "tmpfs" {
		t.Fatalf("mounts at %s: %v, want the tmpfs alone", mnt, got)
	}
}

// TestStaleMountDetached: the mount a killed daemon leaves is detached,
// and logged, by the next start.
func TestStaleMountDetached(t *testing.T) {
	d := newDaemon(t)
	d.start()
	d.mustLogin(password)
	if err := os.WriteFile(filepath.Join(d.mnt, "a.bin"), []byte("kept"), 0o600); err != nil {
		t.Fatal(err)
	}
	d.kill()
	var st unix.Stat_t
	if got := mountsAt(t, d.mnt); len(got) != 1 || unix.Stat(d.mnt, &st) != unix.ENOTCONN {
		t.Fatalf("after kill -9: mounts %v; want one dead mount (ENOTCONN)", got)
	}
	d.start()
	if !strings.Contains(d.out.String(), `msg="detached a dead mountd mount left by a daemon that was killed" mount=`+d.mnt) {
		t.Errorf("no log line for the detached mount:\n%s", d.out.String())
	}
	if got := mountsAt(t, d.mnt); len(got) != 1 {
		t.Errorf("mounts at %s: %v, want one", d.mnt, got)
	}
	d.mustLogin(password)
	if got, err := os.ReadFile(filepath.Join(d.mnt, "a.bin")); err != nil || string(got) != "kept" {
		t.Fatalf("after restart: %q %v", got, err)
	}
}

// TestDataDirNotCreatedByMistake: a --data that names nothing is refused
// unless --create, and nothing is created.
func TestDataDirNotCreatedByMistake(t *testing.T) {
	requireFUSE(t)
	root := t.TempDir()
	typo := filepath.Join(root, "Client_Dta")
	unmountAllAt(t, filepath.Join(root, "mnt"))
	_, errs, code := runMountd(t, nil, "--data", typo, "--mount", filepath.Join(root, "mnt"), "--listen", freeAddr(t))
	if code != 1 || !strings.Contains(errs, "data directory "+typo+" does not exist") || !strings.Contains(errs, "--create") {
		t.Errorf("exit %d:\n%s", code, errs)
	}
	for _, p := range []string{typo, filepath.Join(root, "mnt")} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s was created (%v)", p, err)
		}
	}
}

// TestNotifySocket: under systemd (Type=notify) the daemon sends READY=1
// once the mount and the control plane are up, STATUS= on login and
// logout, and STOPPING=1 at shutdown; the socket may be a path or an
// abstract name.
func TestNotifySocket(t *testing.T) {
	for _, abstract := range []bool{false, true} {
		t.Run(fmt.Sprintf("abstract=%v", abstract), func(t *testing.T) {
			name := filepath.Join(t.TempDir(), "notify.sock")
			if abstract {
				name = fmt.Sprintf("@mountd-test-%d-%d", os.Getpid(), time.Now().UnixNano())
			}
			conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			d := newDaemon(t)
			d.env = []string{"NOTIFY_SOCKET=" + name}

			msgs := make(chan string, 16)
			readyOK := make(chan error, 1)
			go func() {
				buf := make([]byte, 4096)
				for {
					conn.SetReadDeadline(time.Now().Add(2 * time.Minute))
					n, err := conn.Read(buf)
					if err != nil {
						close(msgs)
						return
					}
					m := string(buf[:n])
					if strings.Contains(m, "READY=1") {
						// At this moment the mount and the listener must be up.
						var err error
						if !isMounted(d.mnt) {
							err = errors.New("READY=1 before the mount")
						} else if c, derr := net.Dial("tcp", d.addr); derr != nil {
							err = fmt.Errorf("READY=1 before the listener: %v", derr)
						} else {
							c.Close()
						}
						readyOK <- err
					}
					msgs <- m
				}
			}()
			next := func(want string) string {
				t.Helper()
				for m := range msgs {
					if strings.Contains(m, want) {
						return m
					}
				}
				t.Fatalf("no notification with %q", want)
				return ""
			}
			d.start()
			ready := next("READY=1")
			if err := <-readyOK; err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(ready, "STATUS=locked") || !strings.Contains(ready, fmt.Sprintf("MAINPID=%d", d.cmd.Process.Pid)) {
				t.Errorf("READY message %q", ready)
			}
			d.mustLogin(password)
			next("STATUS=unlocked")
			d.logout()
			next("STATUS=locked")
			if err := d.stop(); err != nil {
				t.Fatal(err)
			}
			next("STOPPING=1")
		})
	}
}

// TestStatusExitCodesAndJSON: status exits 0 with the key set, 2 without,
// 3 refused, 4 unreachable, 1 on other errors, 64 on bad usage; --json is
// the status object without the envelope, with the daemon's details.
func TestStatusExitCodesAndJSON(t *testing.T) {
	d := newDaemon(t)
	d.start()
	out, errs, code := runMountd(t, nil, "status", "--json", "--addr", d.addr)
	if code != 2 || errs != "" {
		t.Fatalf("status --json, key not set: exit %d, stderr %q", code, errs)
	}
	var st map[string]any
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	for _, k := range []string{"command", "success", "message", "error"} {
		if _, ok := st[k]; ok {
			t.Errorf("--json carries the envelope field %q", k)
		}
	}
	daemon, _ := st["daemon"].(map[string]any)
	kdf, _ := st["kdf"].(map[string]any)
	if st["key_set"] != false || st["password_set"] != false || st["cipher"] != "AES-256-GCM" || kdf["name"] != "argon2id" ||
		fmt.Sprint(st["protect"]) != "[*.bin]" || st["task"] != nil || daemon == nil {
		t.Fatalf("status --json:\n%s", out)
	}
	if daemon["pid"] != float64(d.cmd.Process.Pid) || daemon["data_dir"] != d.data || daemon["mountpoint"] != d.mnt ||
		daemon["listen"] != d.addr || daemon["version"] == "" || daemon["uptime_s"] == nil || daemon["started_at"] == nil {
		t.Fatalf("status --json daemon: %v", daemon)
	}

	// The text form shows the same, and $MOUNTD_ADDR stands for --addr.
	out, _, code = runMountd(t, []string{"MOUNTD_ADDR=" + d.addr}, "status")
	for _, want := range []string{"key set:      no", "mountpoint:   " + d.mnt, "data:         " + d.data, "listen:       " + d.addr, "daemon:       pid "} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	if code != 2 {
		t.Errorf("status with MOUNTD_ADDR: exit %d, want 2", code)
	}

	d.mustLogin(password)
	if out, _, code = runMountd(t, nil, "status", "--json", "--addr", d.addr); code != 0 || !strings.Contains(out, `"key_set": true`) {
		t.Errorf("key set: exit %d\n%s", code, out)
	}
	if _, errs, code = runMountd(t, nil, "status", "--addr", "127.0.0.1:1"); code != 4 {
		t.Errorf("unreachable: exit %d %s", code, errs)
	}
	if _, errs, code = runMountd(t, nil, "status", "--addr", d.addr, "--token-file", filepath.Join(t.TempDir(), "none")); code != 1 {
		t.Errorf("missing token file: exit %d %s", code, errs)
	}
	if _, errs, code = runMountd(t, nil, "status", "--addr", d.addr, "extra"); code != 64 || strings.Count(errs, "\n") != 1 {
		t.Errorf("stray argument: exit %d %q", code, errs)
	}

	// A daemon with a token: without it 3, with it (from the environment) 2.
	tokenFile := filepath.Join(t.TempDir(), "token")
	dt := newDaemon(t, "--token-file", tokenFile)
	dt.start()
	if _, errs, code = runMountd(t, nil, "status", "--addr", dt.addr); code != 3 {
		t.Errorf("no token: exit %d %s", code, errs)
	}
	if _, errs, code = runMountd(t, []string{"MOUNTD_ADDR=" + dt.addr, "MOUNTD_TOKEN_FILE=" + tokenFile}, "status"); code != 2 {
		t.Errorf("token from MOUNTD_TOKEN_FILE: exit %d %s", code, errs)
	}
}

// TestHelpThroughBinary: help is on stdout with exit 0 and no error line;
// a bad flag is one line on stderr with exit 64.
func TestHelpThroughBinary(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"--help"}, {"help"}, {"help", "login"}, {"login", "-h"}, {"login", "--help"},
		{"serve", "-h"}, {"status", "-h"}, {"encrypt-existing", "--help"}, {"cancel", "-h"}} {
		out, errs, code := runMountd(t, nil, args...)
		if code != 0 || errs != "" || !strings.HasPrefix(out, "usage: mountd") {
			t.Errorf("%q: exit %d, stderr %q, stdout %.80q", args, code, errs, out)
		}
	}
	out, errs, code := runMountd(t, nil, "login", "-x")
	if code != 64 || out != "" || errs != "mountd login: flag provided but not defined: -x (see 'mountd login -h')\n" {
		t.Errorf("bad flag: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	out, errs, code = runMountd(t, nil, "--version")
	if code != 0 || errs != "" || !strings.HasPrefix(out, "mountd ") || !strings.Contains(out, "go1.") {
		t.Errorf("--version: exit %d %q %q", code, out, errs)
	}
}

// TestEncryptExistingNamesLeftPlaintext: the files the task cannot encrypt
// (empty, hard-linked, open through the mount) are named with their
// reason, and the command exits 5 while any stays plaintext.
func TestEncryptExistingNamesLeftPlaintext(t *testing.T) {
	d := newDaemon(t, migFastKDF...)
	if err := os.MkdirAll(d.data, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]string{"plain.bin": "convert me", "empty.bin": "", "one.bin": "linked", "busy.bin": "held open"} {
		if err := os.WriteFile(filepath.Join(d.data, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Link(filepath.Join(d.data, "one.bin"), filepath.Join(d.data, "two.bin")); err != nil {
		t.Fatal(err)
	}
	d.start()
	d.mustLogin(password)
	f, err := os.Open(filepath.Join(d.mnt, "busy.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	out, code := d.runCLI("", "encrypt-existing")
	if code != 5 {
		t.Fatalf("exit %d, want 5:\n%s", code, out)
	}
	for _, want := range []string{
		"4 protected files stay plaintext:\n",
		"  empty.bin  (empty: nothing to encrypt yet",
		"  one.bin  (hard-linked: ",
		"  two.bin  (hard-linked: ",
		"  busy.bin  (busy: open through the mount",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "plain.bin") || !isCipherFile(t, filepath.Join(d.data, "plain.bin")) {
		t.Errorf("plain.bin: not encrypted, or listed:\n%s", out)
	}
	f.Close()
	out, code = d.runCLI("", "encrypt-existing")
	if code != 5 || !strings.Contains(out, "3 protected files stay plaintext:\n") || strings.Contains(out, "busy.bin") ||
		!isCipherFile(t, filepath.Join(d.data, "busy.bin")) {
		t.Fatalf("second run: exit %d:\n%s", code, out)
	}
}

func isCipherFile(t *testing.T, path string) bool {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.HasPrefix(b, []byte("MTDENC\x00"))
}

// blockingFS is a FUSE file system with one file, x.bin, whose first read
// waits until release: mounted inside a data directory it holds the
// migration task running (it reads the first bytes of every protected
// file) for as long as a test needs, without any timing. The bytes it
// then returns start with the encrypted-file magic, so the task skips it.
type blockingFS struct {
	gofs.Inode
	reading, released chan struct{}
	readOnce, relOnce sync.Once
}

type blockingFile struct {
	gofs.Inode
	fs *blockingFS
}

var (
	_ = (gofs.NodeOnAdder)((*blockingFS)(nil))
	_ = (gofs.NodeGetattrer)((*blockingFile)(nil))
	_ = (gofs.NodeOpener)((*blockingFile)(nil))
	_ = (gofs.NodeReader)((*blockingFile)(nil))
)

func (b *blockingFS) OnAdd(ctx context.Context) {
	ch := b.NewPersistentInode(ctx, &blockingFile{fs: b}, gofs.StableAttr{Mode: syscall.S_IFREG})
	b.AddChild("x.bin", ch, false)
}

func (f *blockingFile) Getattr(_ context.Context, _ gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode, out.Size, out.Nlink = syscall.S_IFREG|0o644, 4096, 1
	return 0
}

func (f *blockingFile) Open(context.Context, uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	return nil, fuse.FOPEN_DIRECT_IO, 0
}

func (f *blockingFile) Read(_ context.Context, _ gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	f.fs.readOnce.Do(func() { close(f.fs.reading) })
	<-f.fs.released
	data := make([]byte, 4096)
	copy(data, "MTDENC\x00\x01")
	if off >= int64(len(data)) {
		return fuse.ReadResultData(nil), 0
	}
	return fuse.ReadResultData(data[off:min(off+int64(len(dest)), int64(len(data)))]), 0
}

func (b *blockingFS) release() { b.relOnce.Do(func() { close(b.released) }) }

// mountBlocking mounts a blockingFS at dir. Its cleanup releases the read
// and unmounts; register it after the daemon's start, so it runs before
// the daemon stops (whose shutdown waits for the task).
func mountBlocking(t *testing.T, dir string) *blockingFS {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b := &blockingFS{reading: make(chan struct{}), released: make(chan struct{})}
	srv, err := gofs.Mount(dir, b, &gofs.Options{MountOptions: fuse.MountOptions{Name: "blocktest", DirectMount: true}})
	if err != nil {
		t.Fatalf("mount the blocking file system: %v", err)
	}
	t.Cleanup(func() {
		b.release()
		if err := srv.Unmount(); err != nil {
			exec.Command("umount", "-l", dir).Run()
		}
	})
	return b
}

// waitClosed waits for ch, failing the test after a generous bound.
func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(2 * time.Minute):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// startCLI starts a client command and returns it with its stdout lines.
func (d *daemon) startCLI(stderr io.Writer, args ...string) (*exec.Cmd, *bufio.Scanner) {
	d.t.Helper()
	cmd := exec.Command(mountdBin, append(args, "--addr", d.addr)...)
	cmd.Stderr = stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		d.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	return cmd, bufio.NewScanner(out)
}

// TestTasksCancelAndInterrupt: Ctrl-C on encrypt-existing stops watching
// and says how to cancel, the task goes on; 'mountd tasks' lists it;
// 'mountd cancel' without an id stops the running task and waits for it.
func TestTasksCancelAndInterrupt(t *testing.T) {
	d := newDaemon(t, migFastKDF...)
	if err := os.MkdirAll(d.data, 0o700); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(d.data, "a.bin"), []byte("plain"), 0o600)
	d.start()
	d.mustLogin(password)
	out, code := d.runCLI("", "tasks")
	if code != 0 || out != "no task since the daemon started\n" {
		t.Fatalf("tasks before any: %d %q", code, out)
	}
	blk := mountBlocking(t, filepath.Join(d.data, "slow"))

	// Ctrl-C while watching.
	var errb bytes.Buffer
	cmd, lines := d.startCLI(&errb, "encrypt-existing")
	if !lines.Scan() || !strings.HasSuffix(lines.Text(), ": Task started") {
		t.Fatalf("first line %q", lines.Text())
	}
	id := strings.TrimSuffix(strings.TrimPrefix(lines.Text(), "task "), ": Task started")
	waitClosed(t, blk.reading, "the task to read the blocking file")
	cmd.Process.Signal(os.Interrupt)
	for lines.Scan() {
	}
	cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); code != 130 ||
		!strings.Contains(errb.String(), "task "+id+" goes on in the daemon") || !strings.Contains(errb.String(), "'mountd cancel "+id+"' stops it") {
		t.Fatalf("after Ctrl-C: exit %d, stderr %q", code, errb.String())
	}
	if r := d.do("GET", "/api/system/tasks/"+id, "", ""); r.JSON["task"].(map[string]any)["state"] != "running" {
		t.Fatalf("the task stopped with its watcher: %s", r.Raw)
	}

	// The list shows it, as text and as JSON.
	if out, code = d.runCLI("", "tasks"); code != 0 || !strings.HasPrefix(out, id+"  encrypt_existing_files  started ") || !strings.Contains(out, "running:") {
		t.Fatalf("tasks: %d %q", code, out)
	}
	out, code = d.runCLI("", "tasks", "--json")
	var list []map[string]any
	if err := json.Unmarshal([]byte(out), &list); err != nil || code != 0 || len(list) != 1 || list[0]["id"] != id || list[0]["state"] != "running" {
		t.Fatalf("tasks --json: %d %v %s", code, err, out)
	}

	// cancel without an id: asks the running task to stop, then waits
	// (the blocked read is released once it has asked).
	errb.Reset()
	cmd, lines = d.startCLI(&errb, "cancel")
	if !lines.Scan() || lines.Text() != "task "+id+": Cancellation requested" {
		t.Fatalf("cancel: first line %q, stderr %q", lines.Text(), errb.String())
	}
	blk.release()
	var rest strings.Builder
	for lines.Scan() {
		rest.WriteString(lines.Text() + "\n")
	}
	if err := cmd.Wait(); err != nil || !strings.HasPrefix(rest.String(), "cancelled: ") {
		t.Fatalf("cancel: %v, output %q, stderr %q", err, rest.String(), errb.String())
	}
	if r := d.do("GET", "/api/system/tasks/"+id, "", ""); r.JSON["task"].(map[string]any)["state"] != "cancelled" {
		t.Fatalf("after cancel: %s", r.Raw)
	}
	if out, code = d.runCLI("", "cancel"); code != 1 || !strings.Contains(out, "no task is running") {
		t.Errorf("cancel with nothing running: %d %q", code, out)
	}
	if out, code = d.runCLI("", "cancel", "nope"); code != 1 || !strings.Contains(out, "RESULT_NOT_FOUND") {
		t.Errorf("cancel of an unknown id: %d %q", code, out)
	}
}

// TestListenPortZero: --listen 127.0.0.1:0 serves on the port the kernel
// chose (it used to mount, then refuse the address and unmount); status
// names that port, and the Host check accepts it.
func TestListenPortZero(t *testing.T) {
	d := newDaemon(t)
	d.addr = "127.0.0.1:0"
	d.start()
	_, port, err := net.SplitHostPort(d.addr)
	if err != nil || port == "0" {
		t.Fatalf("daemon address %q", d.addr)
	}
	st := d.status(false)
	daemon, _ := st["daemon"].(map[string]any)
	if daemon["listen"] != d.addr {
		t.Fatalf("status says listen %v, the daemon logged %s", daemon["listen"], d.addr)
	}
	d.mustLogin(password)
	if r := d.logout(); r.Status != 200 {
		t.Fatalf("logout: %d %s", r.Status, r.Raw)
	}
}

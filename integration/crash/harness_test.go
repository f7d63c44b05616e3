// Package crash is the crash-state harness: workloads run through the real
// mountd on a disk whose writes and flushes are recorded, and every state a
// power cut could leave is rebuilt, mounted and checked (README.md). It
// holds only tests.
package crash

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// mountdBin is the daemon under test: built from this tree, or the binary
// named by MOUNTD_CRASH_BIN (to measure another version).
var mountdBin string

func TestMain(m *testing.M) {
	code := func() int {
		if bin := os.Getenv("MOUNTD_CRASH_BIN"); bin != "" {
			mountdBin = bin
			return m.Run()
		}
		dir, err := os.MkdirTemp("", "mountd-crash-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		mountdBin = filepath.Join(dir, "mountd")
		// No race detector: the daemon runs hundreds of times here, and
		// what is checked is what reaches the disk.
		build := exec.Command("go", "build", "-o", mountdBin, "github.com/mountd/mountd/cmd/mountd")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building mountd:", err)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

// config is what the environment asks for.
//
//	MOUNTD_CRASH=full            every crash state (up to a cap) of longer workloads; default: a short run
//	MOUNTD_CRASH_FS=ext4,xfs     backing file systems (default ext4; full: ext4,xfs)
//	MOUNTD_CRASH_SECTOR=4096,512 atomic write units (default 4096, the model mountd relies on:
//	                             FORMAT.md, section 5; 512 shows what torn 4 KiB writes cost)
//	MOUNTD_CRASH_STATES=N        at most N crash states per workload
//	MOUNTD_CRASH_BIN=path        test this mountd binary instead of building one
//	MOUNTD_CRASH_KEEP=dir        copy the images of violating states there
type config struct {
	full      bool
	fsTypes   []string
	sectors   []int
	maxStates int
	keep      string
}

func loadConfig(t *testing.T) config {
	c := config{full: os.Getenv("MOUNTD_CRASH") == "full", keep: os.Getenv("MOUNTD_CRASH_KEEP")}
	c.fsTypes = []string{"ext4"}
	c.sectors = []int{4096}
	c.maxStates = 24
	if c.full {
		c.fsTypes = []string{"ext4", "xfs"}
		c.maxStates = 1500
	}
	if v := os.Getenv("MOUNTD_CRASH_FS"); v != "" {
		c.fsTypes = strings.Split(v, ",")
	}
	if v := os.Getenv("MOUNTD_CRASH_SECTOR"); v != "" {
		c.sectors = nil
		for _, s := range strings.Split(v, ",") {
			n, err := strconv.Atoi(s)
			if err != nil || (n != 512 && n != 4096) {
				t.Fatalf("MOUNTD_CRASH_SECTOR: %q is not 512 or 4096", s)
			}
			c.sectors = append(c.sectors, n)
		}
	}
	if v := os.Getenv("MOUNTD_CRASH_STATES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("MOUNTD_CRASH_STATES: %q", v)
		}
		c.maxStates = n
	}
	return c
}

// requireTools skips (or, under CI=true, fails) when this machine cannot
// run the harness: it needs root, FUSE, loop devices and the file
// system's tools.
func requireTools(t *testing.T, fsType string) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		missing = append(missing, "/dev/fuse")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		missing = append(missing, "/dev/loop-control")
	}
	tools := []string{"losetup", "mount", "umount"}
	switch fsType {
	case "ext4":
		tools = append(tools, "mkfs.ext4", "e2fsck")
	case "xfs":
		tools = append(tools, "mkfs.xfs", "xfs_repair")
	default:
		t.Fatalf("unknown file system %q", fsType)
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("crash harness needs %s (CI=true)", strings.Join(missing, ", "))
	}
	t.Skipf("crash harness needs %s", strings.Join(missing, ", "))
}

// cmd runs a command with a deadline and returns its combined output.
func cmd(timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return strings.TrimSpace(string(out)), nil
}

func mustCmd(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := cmd(2*time.Minute, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// mkfs makes a file system of fsType on a new image file.
func mkfs(t *testing.T, fsType, path string) {
	t.Helper()
	switch fsType {
	case "ext4":
		// Inode tables and the journal zeroed now, so the mount starts no
		// background zeroing; no discard.
		mustCmd(t, "truncate", "-s", "256M", path)
		mustCmd(t, "mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard", path)
	case "xfs":
		mustCmd(t, "truncate", "-s", "320M", path)
		mustCmd(t, "mkfs.xfs", "-q", "-f", "-K", path)
	}
}

// fsck checks (and for ext4 repairs, as a boot would) the image at path,
// which must not be mounted. It returns a note when the file system needed
// more than a journal replay, and an error when it is beyond repair.
func fsck(fsType, path string) (string, error) {
	switch fsType {
	case "ext4":
		out, err := cmd(2*time.Minute, "e2fsck", "-fy", path)
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == 1 {
			return "e2fsck corrected errors: " + lastLines(out, 4), nil
		}
		return "", err
	case "xfs":
		_, err := cmd(2*time.Minute, "xfs_repair", "-n", path)
		return "", err
	}
	return "", fmt.Errorf("unknown file system %q", fsType)
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(l[max(0, len(l)-n):], " / ")
}

// mounted reports whether dir is a mount point.
func mounted(dir string) bool {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if fields := strings.Fields(s.Text()); len(fields) > 2 && fields[1] == dir {
			return true
		}
	}
	return false
}

// unmount unmounts dir, waiting out a busy mount for a while before
// detaching it lazily.
func unmount(dir string) error {
	var err error
	for i := 0; i < 50 && mounted(dir); i++ {
		if err = syscall.Unmount(dir, 0); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	if mounted(dir) {
		syscall.Unmount(dir, syscall.MNT_DETACH)
		return fmt.Errorf("unmount %s: %w (detached lazily)", dir, err)
	}
	return nil
}

// daemon is one mountd process. Its output goes to a file (readable from
// outside while a test hangs).
type daemon struct {
	data, mnt string
	addr      string
	cmd       *exec.Cmd
	out       *os.File
	exited    chan struct{}
	exitErr   error
	client    *http.Client
}

func (d *daemon) output() string {
	b, _ := os.ReadFile(d.out.Name())
	return string(b)
}

// waitLog waits until a line of the daemon's log holds every one of
// parts, woken by each write to the log file (inotify), for up to limit,
// and reports whether one did.
func (d *daemon) waitLog(limit time.Duration, parts ...string) bool {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	// Watched before the first read: no write falls between.
	if _, err := unix.InotifyAddWatch(fd, d.out.Name(), unix.IN_MODIFY); err != nil {
		return false
	}
	deadline := time.Now().Add(limit)
	events := make([]byte, 4096)
	for {
		for _, line := range strings.Split(d.output(), "\n") {
			if containsAll(line, parts) {
				return true
			}
		}
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, int(left/time.Millisecond)+1); err != nil && err != unix.EINTR {
			return false
		}
		for { // drain the events: the log is read again whole
			if _, err := unix.Read(fd, events); err != nil {
				break
			}
		}
	}
}

func containsAll(s string, parts []string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// startDaemon runs mountd on data, mounted at mnt, with its output in
// logPath, and waits until both the mount and the control plane answer.
// New passwords get the cheapest KDF the verifier accepts, so that every
// crash state logs in quickly. env is added to its environment.
func startDaemon(data, mnt, logPath string, env ...string) (*daemon, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	out, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	d := &daemon{data: data, mnt: mnt, addr: addr, out: out, exited: make(chan struct{}),
		client: &http.Client{Timeout: 60 * time.Second}}
	d.cmd = exec.Command(mountdBin, "--data", data, "--mount", mnt, "--listen", addr,
		"--kdf-time", "2", "--kdf-memory", "19", "--kdf-threads", "1", "--log-level", "info")
	d.cmd.Stdout, d.cmd.Stderr = out, out
	if len(env) > 0 {
		d.cmd.Env = append(os.Environ(), env...)
	}
	if err := d.cmd.Start(); err != nil {
		out.Close()
		return nil, err
	}
	go func() {
		d.exitErr = d.cmd.Wait()
		out.Close()
		close(d.exited)
	}()
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-d.exited:
			return nil, fmt.Errorf("mountd exited during start-up: %v\n%s", d.exitErr, d.output())
		default:
		}
		if mounted(mnt) {
			if resp, err := d.client.Get("http://" + addr + "/api/system/encryption-status"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					return d, nil
				}
			}
		}
		if time.Now().After(deadline) {
			d.stop()
			return nil, fmt.Errorf("mountd not ready after 60 s:\n%s", d.output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop sends SIGTERM, waits for the daemon to unmount and exit (killing it
// after a while), and makes sure the mount is gone.
func (d *daemon) stop() error {
	d.cmd.Process.Signal(syscall.SIGTERM)
	var err error
	select {
	case <-d.exited:
	case <-time.After(60 * time.Second):
		d.cmd.Process.Kill()
		<-d.exited
		err = fmt.Errorf("mountd did not exit within 60 s of SIGTERM")
	}
	if uerr := unmount(d.mnt); uerr != nil && err == nil {
		err = uerr
	}
	return err
}

// watch runs fn, and if it has not returned within limit (a deadlock in
// the daemon: a file operation waiting for a reply forever), it makes the
// daemon print its goroutines (SIGQUIT, into its log), aborts its FUSE
// connection so that fn's stuck call fails, and returns an error with the
// log.
func (d *daemon) watch(limit time.Duration, fn func() error) error {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-time.After(limit):
	}
	// Go's SIGQUIT handler writes every goroutine to the log and exits:
	// wait for that exit, bounded (a daemon stuck in the kernel cannot
	// exit until its connection is aborted).
	d.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
	}
	abortFUSE(d.mnt)
	var err error
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		err = errors.New("still stuck: mount fusectl on /sys/fs/fuse/connections so that a hung connection can be aborted")
	}
	return fmt.Errorf("hung for %v (then: %v); the daemon's goroutines:\n%s", limit, err, d.output())
}

// abortFUSE aborts the FUSE connection mounted at dir, if the fusectl file
// system is mounted (a daemon stuck in the kernel cannot even be killed).
func abortFUSE(dir string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == dir {
			if _, minor, ok := strings.Cut(f[2], ":"); ok {
				os.WriteFile("/sys/fs/fuse/connections/"+minor+"/abort", []byte("1"), 0)
			}
		}
	}
}

// call makes a control-plane request with a JSON body (nil: none).
func (d *daemon) call(method, path string, body any) (int, map[string]any, error) {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://"+d.addr+path, r)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return resp.StatusCode, nil, fmt.Errorf("%s %s: status %d, not JSON: %q", method, path, resp.StatusCode, raw)
	}
	return resp.StatusCode, m, nil
}

// login returns nil when password unlocks the key.
func (d *daemon) login(password string) error {
	st, m, err := d.call("POST", "/api/system/login", map[string]string{"password": password})
	if err != nil {
		return err
	}
	if st != 200 {
		return fmt.Errorf("login: %d %v", st, m)
	}
	return nil
}

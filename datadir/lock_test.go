package datadir

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestMain lets the test binary act as a lock holder in a child process
// (MOUNTD_DATADIR_HOLD=dir): it takes the lock, says so on stdout and
// waits to be killed.
func TestMain(m *testing.M) {
	if dir := os.Getenv("MOUNTD_DATADIR_HOLD"); dir != "" {
		if _, err := Acquire(dir, Holder{Command: "holder"}); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println("held")
		select {}
	}
	os.Exit(m.Run())
}

func TestAcquireExclusive(t *testing.T) {
	dir := t.TempDir()
	l, err := Acquire(dir, Holder{Command: "serve", Mount: "/m"})
	if err != nil {
		t.Fatal(err)
	}
	// A second open file description conflicts, even in this process.
	_, err = Acquire(dir, Holder{Command: "fsck"})
	var held *HeldError
	if !errors.As(err, &held) || !errors.Is(err, ErrHeld) {
		t.Fatalf("second Acquire: %v, want a HeldError", err)
	}
	if held.Holder.PID != os.Getpid() || held.Holder.Mount != "/m" {
		t.Errorf("holder %+v", held.Holder)
	}
	if !strings.Contains(err.Error(), "/m") {
		t.Errorf("message %q does not name the mountpoint", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "auth", LockName)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("lock file: %v %v", fi, err)
	}
	if h, held, err := Probe(dir); err != nil || !held || h.PID != os.Getpid() || h.Mount != "/m" {
		t.Fatalf("Probe while held: %+v %v %v", h, held, err)
	}
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(); err != nil {
		t.Fatal("second Release:", err)
	}
	if _, held, err := Probe(dir); err != nil || held {
		t.Fatalf("Probe after Release: %v %v", held, err)
	}
	if _, held, err := Probe(t.TempDir()); err != nil || held {
		t.Fatalf("Probe without a lock file: %v %v", held, err)
	}
	l2, err := Acquire(dir, Holder{Command: "fsck"})
	if err != nil {
		t.Fatalf("after Release: %v", err)
	}
	l2.Release()
}

// TestLockDiesWithProcess: a killed holder (kill -9) leaves no lock behind,
// and while it lives the refusal names it.
func TestLockDiesWithProcess(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "MOUNTD_DATADIR_HOLD="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "held\n" {
		t.Fatalf("holder said %q, %v", line, err)
	}
	_, err = Acquire(dir, Holder{Command: "serve"})
	var held *HeldError
	if !errors.As(err, &held) || held.Holder.PID != cmd.Process.Pid || held.Holder.Command != "holder" {
		t.Fatalf("while held: %v (%+v)", err, held)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait() // the process is gone, and with it its descriptors
	l, err := Acquire(dir, Holder{Command: "serve"})
	if err != nil {
		t.Fatalf("after the holder died: %v", err)
	}
	l.Release()
}

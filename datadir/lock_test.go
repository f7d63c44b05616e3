package datadir

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

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
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(); err != nil {
		t.Fatal("second Release:", err)
	}
	l2, err := Acquire(dir, Holder{Command: "fsck"})
	if err != nil {
		t.Fatalf("after Release: %v", err)
	}
	l2.Release()
}

// TestLockDiesWithProcess: a killed holder leaves no lock behind.
func TestLockDiesWithProcess(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "auth"), 0o700); err != nil {
		t.Fatal(err)
	}
	// flock(1) holds the lock file (-o: not inherited by its child); kill it.
	if _, err := exec.LookPath("flock"); err != nil {
		t.Skip("flock(1) not installed")
	}
	cmd := exec.Command("flock", "-o", "-x", filepath.Join(dir, "auth", LockName), "sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait until the child holds it.
	for {
		l, err := Acquire(dir, Holder{Command: "probe"})
		if err != nil {
			break
		}
		l.Release()
	}
	cmd.Process.Kill()
	cmd.Wait()
	l, err := Acquire(dir, Holder{Command: "serve"})
	if err != nil {
		t.Fatalf("after the holder died: %v", err)
	}
	l.Release()
}

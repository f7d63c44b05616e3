package integration

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// smallExt4 makes a size-byte ext4 file system in a file and mounts it at
// dir through a loop device (mount -o loop, which detaches the device at
// unmount). It skips, or fails under CI=true, without root or mkfs.ext4.
func smallExt4(t *testing.T, dir string, size int64) {
	t.Helper()
	if _, err := exec.LookPath("mkfs.ext4"); err != nil || os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatalf("a loop-mounted ext4 needs root and mkfs.ext4 (CI=true): %v", err)
		}
		t.Skipf("a loop-mounted ext4 needs root and mkfs.ext4: %v", err)
	}
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, dir).CombinedOutput(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("mount -o loop: %v %s", err, out)
		}
		t.Skipf("mount -o loop: %v %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s; detaching", dir, err, out)
			exec.Command("umount", "-l", dir).Run()
		}
	})
}

// TestExtensionLimits: through the real daemon with every file protected
// (--protect '*'), on a 64 MiB ext4 backing file system. An extension past
// the free space (truncate, ftruncate, fallocate, a write past the end)
// fails with ENOSPC before a block is written, and one past what ext4 can
// hold (pjdfstest truncate/12.t, ftruncate/12.t) with EFBIG; each leaves
// the file at its old size and content, and the space free as before.
func TestExtensionLimits(t *testing.T) {
	d := newDaemon(t, "--protect", "*")
	smallExt4(t, d.data, 64<<20)
	d.start()
	d.mustLogin(password)

	keep := bytes.Repeat([]byte("kept across a full disk. "), 100000)
	if err := os.WriteFile(filepath.Join(d.mnt, "keep"), keep, 0o600); err != nil {
		t.Fatal(err)
	}
	const initial = "hello world"
	path := filepath.Join(d.mnt, "n0")
	if err := os.WriteFile(path, []byte(initial), 0o644); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(d.data, "n0"))
	if err != nil || !bytes.HasPrefix(raw, []byte("MTDENC")) {
		t.Fatalf("n0 is not stored encrypted: %v", err)
	}
	var free0 unix.Statfs_t
	if err := unix.Statfs(d.data, &free0); err != nil {
		t.Fatal(err)
	}

	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const past = 200 << 20 // past the free space
	const big = 999999999999999
	for _, c := range []struct {
		what string
		want syscall.Errno
		do   func() error
	}{
		{"truncate past the free space", syscall.ENOSPC, func() error { return os.Truncate(path, past) }},
		{"ftruncate past the free space", syscall.ENOSPC, func() error { return f.Truncate(past) }},
		{"fallocate past the free space", syscall.ENOSPC, func() error { return unix.Fallocate(int(f.Fd()), 0, 0, past) }},
		{"write past the free space", syscall.ENOSPC, func() error { _, err := f.WriteAt([]byte("x"), past); return err }},
		{"truncate past ext4's maximum", syscall.EFBIG, func() error { return os.Truncate(path, big) }},
		{"ftruncate past ext4's maximum", syscall.EFBIG, func() error { return f.Truncate(big) }},
	} {
		if err := c.do(); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.what, err, c.want)
		}
		if got, err := os.ReadFile(path); err != nil || string(got) != initial {
			t.Errorf("after %s: %d bytes (%v), want %q", c.what, len(got), err, initial)
		}
		if fi, err := os.Stat(filepath.Join(d.data, "n0")); err != nil || fi.Size() != int64(len(raw)) {
			t.Errorf("after %s: backing size %d, was %d", c.what, fi.Size(), len(raw))
		}
		var free unix.Statfs_t
		if err := unix.Statfs(d.data, &free); err != nil {
			t.Fatal(err)
		}
		if free.Bfree+16 < free0.Bfree {
			t.Errorf("after %s: %d blocks free, %d before", c.what, free.Bfree, free0.Bfree)
		}
	}
	if got, err := os.ReadFile(filepath.Join(d.mnt, "keep")); err != nil || !bytes.Equal(got, keep) {
		t.Errorf("keep after the failed extensions: %v", err)
	}
	// A size that fits still works.
	if err := f.Truncate(1 << 20); err != nil {
		t.Fatalf("truncate to 1 MiB: %v", err)
	}
	if got, err := os.ReadFile(path); err != nil || len(got) != 1<<20 || string(got[:len(initial)]) != initial {
		t.Fatalf("after a truncate that fits: %d bytes, %v", len(got), err)
	}
}

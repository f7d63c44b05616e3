package main

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

var testTime = time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)

func TestParseMountInfo(t *testing.T) {
	const info = `22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
45 22 0:40 / /srv/app/mnt rw,nosuid,nodev,relatime shared:7 master:2 - fuse.mountd /srv/app/Client\040Data rw,user_id=0
46 22 0:41 / /tmp/with\011tab\134and\012nl rw - tmpfs tmpfs rw
47 45 0:42 /sub /srv/app/mnt rw - fuse.mountd mountd rw
`
	list, err := parseMountInfo(strings.NewReader(info))
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 4 {
		t.Fatalf("%d entries", len(list))
	}
	m := list[1]
	if m.ID != 45 || m.Parent != 22 || m.MountPoint != "/srv/app/mnt" || m.FSType != "fuse.mountd" ||
		m.Source != "/srv/app/Client Data" || !m.isMountd() || m.dataDir() != "/srv/app/Client Data" {
		t.Fatalf("entry %+v", m)
	}
	if got := m.describe(); got != "a mountd mount of /srv/app/Client Data" {
		t.Errorf("describe %q", got)
	}
	if list[2].MountPoint != "/tmp/with\ttab\\and\nnl" || list[2].isMountd() || list[2].describe() != "a tmpfs mount of tmpfs" {
		t.Errorf("escaped entry %+v %q", list[2], list[2].describe())
	}
	// The last mount at a path is the one on top; an old mountd's mount
	// (fsname "mountd") is mountd's, with no known data directory.
	top := topMount(list, "/srv/app/mnt")
	if top == nil || top.ID != 47 || !top.isMountd() || top.dataDir() != "" || top.describe() != "a mountd mount" {
		t.Fatalf("top %+v", top)
	}
	if topMount(list, "/srv/app") != nil {
		t.Error("a parent of a mount is not a mount")
	}
	for _, bad := range []string{"1 2 3\n", "x 1 0:1 / /m rw - t s o\n", "1 1 0:1 / /m rw shared:1 t s o\n"} {
		if _, err := parseMountInfo(strings.NewReader(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

// TestResolveMountpoint: a symlink to a mount is found as that mount, and
// a mount is found without looking at the mountpoint itself.
func TestResolveMountpoint(t *testing.T) {
	root, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(root, "real", "mnt")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("real", filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(mnt, filepath.Join(root, "mntlink")); err != nil {
		t.Fatal(err)
	}
	mounts := []mountEntry{{ID: 1, MountPoint: mnt, FSType: fuseType, Source: "/d"}}
	for _, in := range []string{mnt, filepath.Join(root, "link", "mnt"), filepath.Join(root, "mntlink"), filepath.Join(root, "link", "..", "real", "mnt")} {
		got, err := resolveMountpoint(filepath.Clean(in), mounts)
		if err != nil || got != mnt || topMount(mounts, got) == nil {
			t.Errorf("resolve %s = %q, %v; want %s", in, got, err, mnt)
		}
	}
	// A missing mountpoint resolves through its parent.
	if got, err := resolveMountpoint(filepath.Join(root, "link", "new"), nil); err != nil || got != filepath.Join(root, "real", "new") {
		t.Errorf("missing: %q %v", got, err)
	}
	// A symlink loop is an error, not a hang.
	os.Symlink("loop", filepath.Join(root, "loop"))
	if _, err := resolveMountpoint(filepath.Join(root, "loop"), nil); err == nil {
		t.Error("symlink loop resolved")
	}
}

// TestCheckMountpointDirectories covers the checks that need no mount:
// a plain empty directory passes, a missing one is created only with fix,
// a file and a non-empty directory are refused, and the message for a
// non-empty directory names entries and never tells to empty it.
func TestCheckMountpointDirectories(t *testing.T) {
	root := t.TempDir()
	l := logrus.New()
	l.SetOutput(io.Discard)
	log := logrus.NewEntry(l)
	check := func(dir string, fix bool) (string, error) {
		return checkMountpoint(mountpointCheck{dir: dir, data: filepath.Join(root, "data"), fix: fix, log: log})
	}
	empty := filepath.Join(root, "empty")
	os.Mkdir(empty, 0o755)
	if got, err := check(empty, true); err != nil || !strings.HasSuffix(got, "/empty") {
		t.Fatalf("empty dir: %q %v", got, err)
	}
	missing := filepath.Join(root, "missing")
	if _, err := check(missing, false); err != nil {
		t.Fatalf("missing, no fix: %v", err)
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("created without fix")
	}
	if _, err := check(missing, true); err != nil {
		t.Fatalf("missing, fix: %v", err)
	}
	if fi, err := os.Stat(missing); err != nil || !fi.IsDir() {
		t.Fatalf("not created: %v", err)
	}
	file := filepath.Join(root, "file")
	os.WriteFile(file, nil, 0o644)
	if _, err := check(file, true); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("file: %v", err)
	}
	full := filepath.Join(root, "full")
	for _, n := range []string{"a", "b", "c", "d"} {
		os.MkdirAll(filepath.Join(full, n), 0o755)
	}
	_, err := check(full, true)
	if err == nil || !strings.Contains(err.Error(), "4 entries of its own (a, b, c, ...)") ||
		strings.Contains(err.Error(), "empty it") || strings.Contains(err.Error(), "remove") || strings.Contains(err.Error(), "delete") {
		t.Fatalf("non-empty: %v", err)
	}
}

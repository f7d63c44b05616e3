package fs

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestClassifyKeepsAtime: classifying a file through a descriptor that
// updates atime (as a passthrough handle's does, for the kernel's reads)
// does not change its access time, even where relatime would (an atime
// older than a day). A Getattr through such a handle after the file
// changed (posixtest's FstatDeleted: unlink changes ctime) used to.
func TestClassifyKeepsAtime(t *testing.T) {
	e := newEnv(t, envOpts{})
	if err := os.WriteFile(e.m("f.dat"), pattern(1, 100), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(e.m("f.dat")); err != nil { // look it up
		t.Fatal(err)
	}
	ch := e.root.EmbeddedInode().GetChild("f.dat")
	if ch == nil {
		t.Fatal("f.dat not looked up")
	}
	n := nodeOf(ch)
	old := unix.Timespec{Sec: 1_000_000_000}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, e.b("f.dat"), []unix.Timespec{old, {Nsec: unix.UTIME_OMIT}}, 0); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(e.b("f.dat")) // no O_NOATIME
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var x unix.Statx_t
	if err := fstatx(int(f.Fd()), &x); err != nil {
		t.Fatal(err)
	}
	reads := e.root.stats.headerReads.Load()
	n.classify(&x, int(f.Fd()))
	if e.root.stats.headerReads.Load() == reads {
		t.Fatal("classify did not read the header")
	}
	if err := fstatx(int(f.Fd()), &x); err != nil {
		t.Fatal(err)
	}
	if x.Atime.Sec != old.Sec || x.Atime.Nsec != uint32(old.Nsec) {
		t.Fatalf("atime %d.%09d after classify, want %d", x.Atime.Sec, x.Atime.Nsec, old.Sec)
	}
}

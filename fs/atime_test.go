package fs

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestClassifyKeepsAtime: classifying a file again through an open
// passthrough handle (its ctime changed, here by unlink, so the cached
// class no longer applies) does not change its access time, even when
// relatime would (atime older than mtime).
func TestClassifyKeepsAtime(t *testing.T) {
	e := newEnv(t, envOpts{})
	if err := os.WriteFile(e.m("f.dat"), []byte("0123456789abcdef0123456789abcdef0123456789"), 0o644); err != nil {
		t.Fatal(err)
	}
	// An atime older than the mtime: relatime would update it on a read.
	old := unix.Timespec{Sec: 1_000_000_000}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, e.b("f.dat"), []unix.Timespec{old, {Sec: 0, Nsec: unix.UTIME_OMIT}}, 0); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(e.m("f.dat"), unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Unlink(e.m("f.dat")); err != nil {
		t.Fatal(err)
	}
	reads := e.root.stats.headerReads.Load()
	var st unix.Stat_t
	for range 3 {
		if err := unix.Fstat(fd, &st); err != nil {
			t.Fatal(err)
		}
	}
	if e.root.stats.headerReads.Load() == reads {
		t.Fatal("fstat after unlink did not classify the file again")
	}
	if st.Atim != old {
		t.Fatalf("atime %v after fstat, want %v", st.Atim, old)
	}
}

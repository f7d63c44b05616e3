package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/crypto"
)

// richFixture adds what export must keep to a fixture: modes, times,
// xattrs, hard links, a fifo, odd names, empty and deep directories.
func richFixture(t *testing.T) *fixture {
	t.Helper()
	fx := newFixture(t)
	d := fx.data
	fx.file(t, "odd names/with space & ünïcode\n.txt", []byte("odd"))
	fx.encrypted(t, "deep/a/b/c/d/e/f.bin", randomBytes(5000))
	os.MkdirAll(filepath.Join(d, "empty/dir"), 0o755)
	os.Link(filepath.Join(d, "enc/4097.bin"), filepath.Join(d, "deep/hard.bin"))
	os.Link(filepath.Join(d, "notes.txt"), filepath.Join(d, "deep/notes-link.txt"))
	fx.plain["deep/hard.bin"] = fx.plain["enc/4097.bin"]
	fx.plain["deep/notes-link.txt"] = fx.plain["notes.txt"]
	if err := unix.Mkfifo(filepath.Join(d, "deep/fifo"), 0o640); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(d, "enc/1.bin"), 0o751)
	os.Chmod(filepath.Join(d, "notes.txt"), 0o604)
	os.Chmod(filepath.Join(d, "deep/a"), 0o2750)
	if err := unix.Setxattr(filepath.Join(d, "enc/4096.bin"), "user.tag", []byte("kept"), 0); err != nil {
		t.Logf("no user xattrs here: %v", err)
	}
	unix.Setxattr(filepath.Join(d, "deep"), "user.dirtag", []byte("d"), 0)
	if os.Geteuid() == 0 { // owners are kept only by root
		os.Lchown(filepath.Join(d, "enc/4095.bin"), 1234, 5678)
		os.Lchown(filepath.Join(d, "enc/link"), 1234, 5678)
		os.Lchown(filepath.Join(d, "deep/a/b"), 4321, 8765)
	}
	// Distinct times everywhere, directories last (after their content).
	i := int64(0)
	filepath.Walk(d, func(p string, fi os.FileInfo, err error) error {
		if strings.Contains(p, "/auth") {
			return nil
		}
		i++
		ts := []unix.Timespec{{Sec: 1_600_000_000 + i, Nsec: 123 * i}, {Sec: 1_500_000_000 + i*7, Nsec: 456 * i}}
		unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
		return nil
	})
	return fx
}

// describeTree returns, per path, what export must reproduce: type, mode,
// times, size, link target, xattrs, hard-link group and content (files
// in plain that are stored encrypted are described by their plaintext).
// It reads with O_NOATIME, changing nothing; a symlink's access time is
// left out (reading the link sets it).
func describeTree(t *testing.T, root string, plain map[string][]byte) map[string]string {
	t.Helper()
	m := map[string]string{}
	inodes := map[uint64]string{}
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "auth" {
			return filepath.SkipDir
		}
		var st unix.Stat_t
		unix.Lstat(p, &st)
		s := fmt.Sprintf("mode=%o uid=%d gid=%d mtime=%d.%d", st.Mode, st.Uid, st.Gid, st.Mtim.Sec, st.Mtim.Nsec)
		if st.Mode&unix.S_IFMT != unix.S_IFDIR && st.Mode&unix.S_IFMT != unix.S_IFLNK {
			s += fmt.Sprintf(" atime=%d.%d", st.Atim.Sec, st.Atim.Nsec)
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFLNK:
			target, _ := os.Readlink(p)
			s += " -> " + target
		case unix.S_IFREG:
			b := readNoatime(t, p)
			if want, ok := plain[rel]; ok && !bytes.Equal(b, want) && crypto.HasMagic(b) {
				b = want // the data directory holds it encrypted
			}
			s += fmt.Sprintf(" size=%d content=%x", len(b), bytes.Clone(b[:min(len(b), 64)]))
			s += fmt.Sprintf(" sum=%d", sum(b))
			if st.Nlink > 1 {
				if first, ok := inodes[st.Ino]; ok {
					s += " hardlink-of=" + first
				} else {
					inodes[st.Ino] = rel
				}
			}
		}
		if sz, err := unix.Llistxattr(p, nil); err == nil && sz > 0 {
			buf := make([]byte, sz)
			unix.Llistxattr(p, buf)
			names := strings.Split(strings.TrimRight(string(buf), "\x00"), "\x00")
			slices.Sort(names)
			for _, n := range names {
				v := make([]byte, 256)
				vn, _ := unix.Lgetxattr(p, n, v)
				s += fmt.Sprintf(" xattr:%s=%q", n, v[:max(vn, 0)])
			}
		}
		m[rel] = s
		return nil
	})
	return m
}

func readNoatime(t *testing.T, p string) []byte {
	t.Helper()
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOATIME|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sum(b []byte) uint64 {
	var h uint64 = 1469598103934665603
	for _, c := range b {
		h = (h ^ uint64(c)) * 1099511628211
	}
	return h
}

func diffTrees(t *testing.T, want, got map[string]string) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%q:\n want %s\n got  %s", k, v, got[k])
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%q: exported but not in the data directory", k)
		}
	}
}

func runExport(t *testing.T, data, out, stdin string) (int, *exportReport, string) {
	t.Helper()
	code, stdout, errs := mountd(t, stdin, "export", "--data", data, "--out", out, "--json")
	var rep exportReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("export: exit %d, not JSON: %v\n%s\n%s", code, err, stdout, errs)
	}
	return code, &rep, errs
}

func TestExportTree(t *testing.T) {
	fx := richFixture(t)
	want := describeTree(t, fx.data, fx.plain)
	out := filepath.Join(t.TempDir(), "out")
	code, rep, errs := runExport(t, fx.data, out, "pw\n")
	if code != 0 || !rep.Complete || len(rep.Problems) != 0 || len(rep.Warnings) != 0 {
		t.Fatalf("export: exit %d %+v %s", code, rep, errs)
	}
	if rep.Decrypted != int64(len(sizes)+3) || rep.HardLinks != 2 || rep.Other != 1 || rep.Symlinks != 4 {
		t.Fatalf("counts: %+v", rep)
	}
	got := describeTree(t, out, nil)
	diffTrees(t, want, got)
	// The source is untouched, and export read it without changing
	// access times.
	if code, _, _ := mountd(t, "pw\n", "fsck", "--data", fx.data); code != 0 {
		t.Fatal("fsck after export")
	}
}

// TestExportCorrupt: a damaged block is zero-filled, the rest of the file
// and every other file exported, the file named with its block, a note
// written beside it, and the exit status is 7. A file under another key
// is not written at all.
func TestExportCorrupt(t *testing.T) {
	fx := newFixture(t)
	big := fx.plain["big.bin"]
	fx.patch(t, "big.bin", func(b []byte) []byte {
		b[blockAt(5)+100] ^= 1
		b[blockAt(9)+100] ^= 1
		return b[:blockAt(39)] // and a cut end (the size past the last page lost)
	})
	other, _ := initData(t, "other")
	writeEncrypted(t, keyring(t, other, "other"), fx.data, "foreign.bin", []byte("x"))
	fx.file(t, "big.bin.CORRUPT", []byte("a user file that happens to have the note's name"))
	out := filepath.Join(t.TempDir(), "out")
	code, rep, errs := runExport(t, fx.data, out, "pw\n")
	if code != exitDamaged || rep.Complete || len(rep.Problems) != 2 {
		t.Fatalf("exit %d: %+v %s", code, rep.Problems, errs)
	}
	p := rep.Problems[0]
	if p.Path != "big.bin" || p.Kind != findCorrupt || *p.Block != 5 || !strings.Contains(p.Detail, "3 damaged block(s)") {
		t.Fatalf("big.bin: %+v", p)
	}
	if rep.Problems[1].Path != "foreign.bin" || rep.Problems[1].Kind != findForeignKey {
		t.Fatalf("foreign: %+v", rep.Problems[1])
	}
	if _, err := os.Lstat(filepath.Join(out, "foreign.bin")); err == nil {
		t.Fatal("a file under another key was written")
	}
	got, _ := os.ReadFile(filepath.Join(out, "big.bin"))
	wantB := bytes.Clone(big[:blockStart(39)])
	clear(wantB[blockStart(5):blockStart(6)])
	clear(wantB[blockStart(9):blockStart(10)])
	if !bytes.Equal(got, wantB) {
		t.Fatalf("big.bin: %d bytes exported, not the authentic blocks with 5 and 9 zero-filled", len(got))
	}
	note, err := os.ReadFile(filepath.Join(out, "big.bin.CORRUPT-2"))
	if err != nil || !strings.Contains(string(note), fmt.Sprintf("block 5: bytes %d..%d zero-filled", blockStart(5), blockStart(6)-1)) ||
		!strings.Contains(string(note), "block 9:") || !strings.Contains(string(note), "block 39: the file was cut") {
		t.Fatalf("note: %v\n%s", err, note)
	}
	if b, _ := os.ReadFile(filepath.Join(out, "big.bin.CORRUPT")); !strings.HasPrefix(string(b), "a user file") {
		t.Fatal("the user's own big.bin.CORRUPT was overwritten")
	}
	for rel, b := range fx.plain {
		if rel == "big.bin" {
			continue
		}
		if got, err := os.ReadFile(filepath.Join(out, rel)); err != nil || !bytes.Equal(got, b) {
			t.Errorf("%s not exported intact: %v", rel, err)
		}
	}
}

func TestExportRefusals(t *testing.T) {
	fx := newFixture(t)
	nonEmpty := t.TempDir()
	os.WriteFile(filepath.Join(nonEmpty, "x"), nil, 0o600)
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	for _, c := range []struct{ out, want string }{
		{nonEmpty, "is not empty"},
		{filepath.Join(fx.data, "exported"), "inside the data directory"},
		{fx.data, "inside the data directory"},
		{filepath.Join(fx.data, "enc"), "inside the data directory"},
		{file, "not a directory"},
	} {
		before := treeState(t, fx.data, "auth/lock")
		code, _, errs := mountd(t, "pw\n", "export", "--data", fx.data, "--out", c.out)
		if code == 0 || !strings.Contains(errs, c.want) {
			t.Errorf("--out %s: exit %d: %s", c.out, code, errs)
		}
		os.Remove(filepath.Join(fx.data, "exported"))
		if after := treeState(t, fx.data, "auth/lock"); !mapsEqual(before, after) {
			t.Errorf("--out %s changed the data directory", c.out)
		}
	}
	if code, _, errs := mountd(t, "pw\n", "export", "--data", fx.data); code != exitUsage || !strings.Contains(errs, "--out is required") {
		t.Fatalf("no --out: %d %s", code, errs)
	}
	if code, _, _ := mountd(t, "wrong\n", "export", "--data", fx.data, "--out", filepath.Join(t.TempDir(), "o")); code != exitDenied {
		t.Fatalf("wrong password: %d", code)
	}
}

// TestExportSymlinkRace: a symlink swapped in for a directory of the data
// directory is exported as a symlink; nothing outside is read.
func TestExportNeverFollowsSymlinks(t *testing.T) {
	fx := newFixture(t)
	secret := t.TempDir()
	os.WriteFile(filepath.Join(secret, "outside.bin"), []byte("outside"), 0o600)
	os.Symlink(secret, filepath.Join(fx.data, "enc/escape"))
	out := filepath.Join(t.TempDir(), "out")
	if code, rep, errs := runExport(t, fx.data, out, "pw\n"); code != 0 {
		t.Fatalf("exit %d %+v %s", code, rep, errs)
	}
	if fi, err := os.Lstat(filepath.Join(out, "enc/escape")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("enc/escape: %v %v", fi, err)
	}
	if _, err := openBeneath(unixOpenDir(t, fx.data), "enc/escape/outside.bin", unix.O_RDONLY, 0); err == nil {
		t.Fatal("openBeneath followed a symlink")
	}
}

func unixOpenDir(t *testing.T, p string) int {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// failingWriter fails every write after the first n bytes.
type failingWriter struct{ n int }

func (w *failingWriter) Write(p []byte) (int, error) {
	if w.n < len(p) {
		return 0, unix.ENOSPC
	}
	w.n -= len(p)
	return len(p), nil
}

// TestPipeWriterError: a write error reaches the reader (emit, close)
// without a deadlock, however many buffers it still pushes.
func TestPipeWriterError(t *testing.T) {
	bufs := [][]byte{make([]byte, 8), make([]byte, 8)}
	pw := newPipeWriter(&failingWriter{n: 16}, bufs)
	var emitErr error
	for i := 0; i < 100 && emitErr == nil; i++ {
		b := pw.get()
		emitErr = pw.emit(b[:8])
	}
	if err := pw.close(); err != unix.ENOSPC || emitErr != unix.ENOSPC {
		t.Fatalf("close %v, emit %v", err, emitErr)
	}
	ok := newPipeWriter(io.Discard, bufs)
	for range 10 {
		ok.emit(ok.get())
	}
	if err := ok.close(); err != nil {
		t.Fatal(err)
	}
}

// TestExportFullDisk: an --out without room for everything: the files that
// fit are exported whole, the others are named (not half-written) and the
// exit status is 7; the data directory is untouched.
func TestExportFullDisk(t *testing.T) {
	out := t.TempDir()
	if err := unix.Mount("tmpfs", out, "tmpfs", 0, "size=1m"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("cannot mount a small tmpfs under CI=true: %v", err)
		}
		t.Skipf("cannot mount a small tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(out, 0); err != nil {
			unix.Unmount(out, unix.MNT_DETACH)
		}
	})
	fx := newFixture(t)
	for i := range 4 {
		fx.encrypted(t, fmt.Sprintf("fill/%d.bin", i), randomBytes(300<<10))
	}
	before := withoutLinkAtimes(treeState(t, fx.data, "auth/lock"))
	code, rep, errs := runExport(t, fx.data, out, "pw\n")
	if code != exitDamaged || rep.Complete || len(rep.Problems) == 0 {
		t.Fatalf("exit %d: %+v %s", code, rep.Problems, errs)
	}
	failed := map[string]bool{}
	for _, p := range rep.Problems {
		if !strings.Contains(p.Detail, "no space left on device") {
			t.Errorf("%s: %s", p.Path, p.Detail)
		}
		failed[p.Path] = true
	}
	// What was exported is whole; what was not is absent or empty.
	for rel, want := range fx.plain {
		got, err := os.ReadFile(filepath.Join(out, rel))
		switch {
		case failed[rel]:
			if err == nil && len(got) != 0 && !bytes.Equal(got, want[:len(got)]) {
				t.Errorf("%s: a failed file holds %d bytes that are not its start", rel, len(got))
			}
		case err != nil || !bytes.Equal(got, want):
			t.Errorf("%s: not exported whole (%v)", rel, err)
		}
	}
	if after := withoutLinkAtimes(treeState(t, fx.data, "auth/lock")); !mapsEqual(before, after) {
		for k, v := range before {
			if after[k] != v {
				t.Errorf("%s:\n before %s\n after  %s", k, v, after[k])
			}
		}
		t.Fatal("the data directory changed")
	}
}

// withoutLinkAtimes drops the access times of symlinks from a treeState:
// reading a link (export does) sets it.
func withoutLinkAtimes(m map[string]string) map[string]string {
	re := regexp.MustCompile(` atime=[0-9.]+`)
	for k, v := range m {
		if strings.HasPrefix(v, "mode=120") {
			m[k] = re.ReplaceAllString(v, "")
		}
	}
	return m
}

package fs

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/mountd/mountd/logkey"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
)

// TestRemoveStaleTemps removes exactly the temp files a crash leaves.
func TestRemoveStaleTemps(t *testing.T) {
	dir := t.TempDir()
	write := func(rel string) {
		p := filepath.Join(dir, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	stale := []string{".mountd-tmp-0123456789abcdef", "a/b/.mountd-tmp-fedcba9876543210"}
	keep := []string{
		"a/.mountd-tmp-notours", ".mountd-tmp-0123456789ABCDEF", ".mountd-tmp-0123456789abcdef0",
		"auth/.mountd-tmp-0123456789abcdef", "a/file.bin",
	}
	for _, rel := range append(append([]string{}, stale...), keep...) {
		write(rel)
	}
	if err := os.Symlink("file.bin", filepath.Join(dir, "a/.mountd-tmp-1111111111111111")); err != nil {
		t.Fatal(err)
	}
	keep = append(keep, "a/.mountd-tmp-1111111111111111")
	l, hook := logtestNew()
	n, err := RemoveStaleTemps(dir, l)
	if err != nil || n != len(stale) {
		t.Fatalf("removed %d, %v", n, err)
	}
	for _, rel := range stale {
		if _, err := os.Lstat(filepath.Join(dir, rel)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s not removed", rel)
		}
	}
	for _, rel := range keep {
		if _, err := os.Lstat(filepath.Join(dir, rel)); err != nil {
			t.Errorf("%s: %v", rel, err)
		}
	}
	logged := 0
	for _, en := range hook.AllEntries() {
		if en.Level == logrus.InfoLevel && en.Data[logkey.Path] != nil {
			logged++
		}
	}
	if logged != len(stale) {
		t.Errorf("logged %d removals, want %d", logged, len(stale))
	}
	if n, err := RemoveStaleTemps(dir, nil); n != 0 || err != nil {
		t.Fatalf("second run: %d %v", n, err)
	}
}

func logtestNew() (*logrus.Entry, *logtest.Hook) {
	l, h := logtest.NewNullLogger()
	return logrus.NewEntry(l), h
}

package main

import (
	"errors"
	"os"
	"path"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/crypto"
)

// The offline commands (info, fsck, export, init) walk a data directory
// themselves, with no daemon and no FUSE. Every path is opened relative to
// a directory descriptor and resolved beneath it without following any
// symbolic link (openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS), so a symlink
// planted anywhere in the tree is seen as a symlink, never followed out of
// it; a walked directory is read and closed before its subdirectories are
// visited, so the depth of a tree costs no descriptors.

// tempPrefix starts the names of the temp files of an in-place encryption
// (fs/root.go); one left in the tree is a crash's leftover.
const tempPrefix = ".mountd-tmp-"

// openBeneath opens rel (a "/"-separated path, "" or "." for dir itself)
// beneath the directory dir without following any symlink on the way.
func openBeneath(dir int, rel string, flags int, mode uint32) (int, error) {
	if rel == "" {
		rel = "."
	}
	flags |= unix.O_CLOEXEC | unix.O_NOFOLLOW
	how := unix.OpenHow{Flags: uint64(flags), Mode: uint64(mode), Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS}
	for {
		fd, err := unix.Openat2(dir, rel, &how)
		switch err {
		case nil:
			return fd, nil
		case unix.EINTR, unix.EAGAIN:
			continue
		case unix.ENOSYS:
			return openByComponents(dir, rel, flags, mode)
		}
		return -1, err
	}
}

// openByComponents is openBeneath for kernels without openat2 (before
// 5.6): one O_NOFOLLOW openat per component.
func openByComponents(dir int, rel string, flags int, mode uint32) (int, error) {
	parts := strings.Split(path.Clean(rel), "/")
	cur := dir
	for i, p := range parts {
		if p == ".." {
			return -1, unix.EXDEV
		}
		last := i == len(parts)-1
		fl, m := unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, uint32(0)
		if last {
			fl, m = flags, mode
		}
		fd, err := unix.Openat(cur, p, fl, m)
		if cur != dir {
			unix.Close(cur)
		}
		if err != nil {
			return -1, err
		}
		cur = fd
	}
	return cur, nil
}

// entry is one directory entry, as lstat sees it.
type entry struct {
	name string
	st   unix.Stat_t
}

func (e *entry) isDir() bool     { return e.st.Mode&unix.S_IFMT == unix.S_IFDIR }
func (e *entry) isRegular() bool { return e.st.Mode&unix.S_IFMT == unix.S_IFREG }
func (e *entry) isSymlink() bool { return e.st.Mode&unix.S_IFMT == unix.S_IFLNK }

// listDir returns the entries of the directory rel beneath root, sorted by
// name, each with its lstat.
func listDir(root int, rel string) ([]entry, error) {
	fd, err := openBeneath(root, rel, unix.O_RDONLY|unix.O_DIRECTORY|noatime(), 0)
	if err == unix.EPERM {
		fd, err = openBeneath(root, rel, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	}
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), rel)
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	out := make([]entry, 0, len(names))
	for _, n := range names {
		e := entry{name: n}
		if err := unix.Fstatat(fd, n, &e.st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if err == unix.ENOENT {
				continue
			}
			return nil, &os.PathError{Op: "lstat", Path: path.Join(rel, n), Err: err}
		}
		out = append(out, e)
	}
	return out, nil
}

// noatime is O_NOATIME: reading must not even change access times. Only
// the owner (or CAP_FOWNER) may use it; callers retry without on EPERM.
func noatime() int { return unix.O_NOATIME }

// openRead opens the regular file rel beneath root for reading, without
// updating its access time where allowed, and checks that it is still the
// file that was listed (same inode).
func openRead(root int, rel string, want *unix.Stat_t) (*os.File, error) {
	flags := unix.O_RDONLY | unix.O_NONBLOCK
	fd, err := openBeneath(root, rel, flags|noatime(), 0)
	if err == unix.EPERM {
		fd, err = openBeneath(root, rel, flags, 0)
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: rel, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "fstat", Path: rel, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || (want != nil && (st.Ino != want.Ino || st.Dev != want.Dev)) {
		unix.Close(fd)
		return nil, &os.PathError{Op: "open", Path: rel, Err: errors.New("replaced while being read")}
	}
	return os.NewFile(uintptr(fd), rel), nil
}

// walkFunc is called for every entry of a walk; rel is its path relative
// to the walk's root. Returning errSkip for a directory skips its content.
type walkFunc func(rel string, e *entry) error

var errSkip = errors.New("skip this directory")

// walkTree calls fn for every entry beneath root in lexical order,
// directories before their content, never following a symlink and leaving
// out the root's auth/ directory (the verifier and the lock). A directory
// that cannot be read is passed to onErr, and the walk goes on; an error
// from fn stops it.
func walkTree(root int, fn walkFunc, onErr func(rel string, err error)) error {
	var walk func(rel string) error
	walk = func(rel string) error {
		entries, err := listDir(root, rel)
		if err != nil {
			onErr(rel, err)
			return nil
		}
		for i := range entries {
			e := &entries[i]
			if rel == "" && e.name == crypto.VerifierDir && e.isDir() {
				continue
			}
			r := path.Join(rel, e.name)
			err := fn(r, e)
			if errors.Is(err, errSkip) {
				continue
			}
			if err != nil {
				return err
			}
			if e.isDir() {
				if err := walk(r); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return walk("")
}

// isMountdTemp reports whether name is the temp file of an in-place
// encryption.
func isMountdTemp(name string) bool { return strings.HasPrefix(name, tempPrefix) }

// protectMatcher matches base names against the --protect globs.
type protectMatcher []string

func (p protectMatcher) match(name string) bool {
	for _, g := range p {
		if ok, _ := path.Match(g, name); ok {
			return true
		}
	}
	return false
}

// countTree counts the regular files beneath root and their bytes, for a
// progress bar's totals. Errors are left for the real walk to report.
func countTree(root int) (files, bytes int64) {
	_ = walkTree(root, func(_ string, e *entry) error {
		if e.isRegular() {
			files++
			bytes += e.st.Size
		}
		return nil
	}, func(string, error) {})
	return files, bytes
}

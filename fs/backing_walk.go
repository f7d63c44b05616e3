package fs

import (
	"context"
	"errors"
	"slices"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The backing directory (backing.go has the rules every access follows):
// tree walks.

// walkEntry is one entry met by walkTree.
type walkEntry struct {
	dir  int    // descriptor of the directory holding it, valid during the call
	rel  string // path from the walk's root
	name string
	typ  uint32 // S_IFMT bits of the entry
}

var (
	errSkipDir  = errors.New("skip directory")
	errStopWalk = errors.New("stop walk")
)

// maxWalkDepth bounds how deep walkTree goes (one descriptor per level).
const maxWalkDepth = 1024

// errTooDeep: a directory deeper than maxWalkDepth.
var errTooDeep = errors.New("directory nested too deep")

// walkTree calls visit for every entry below the directory root (a
// descriptor of the backing root), depth first, in name order, except
// auth/ at the root and what is below it; it descends into the
// directories for which visit returns nil (errSkipDir: not this one,
// errStopWalk: stop). Each directory is opened relative to its parent with
// O_NOFOLLOW|O_DIRECTORY, so a symlink swapped in for a directory is never
// followed, and entries that vanish meanwhile are skipped. A directory
// that cannot be read is passed to dirErr with its error; dirErr returns
// nil to go on.
func walkTree(ctx context.Context, root int, visit func(e walkEntry) error, dirErr func(rel string, err error) error) error {
	dfd, err := unix.Openat(root, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	err = walkDir(ctx, dfd, "", 0, visit, dirErr)
	if errors.Is(err, errStopWalk) {
		return nil
	}
	return err
}

// walkDir walks the directory open as dfd (consumed), whose path is rel.
func walkDir(ctx context.Context, dfd int, rel string, depth int, visit func(walkEntry) error, dirErr func(string, error) error) error {
	ents, err := readDirents(dfd)
	if err != nil {
		unix.Close(dfd)
		return dirErr(rel, err)
	}
	defer unix.Close(dfd)
	for _, de := range ents {
		if err := ctx.Err(); err != nil {
			return err
		}
		if rel == "" && de.name == reservedDir {
			continue // the one rule for auth/: never walked
		}
		typ := de.typ
		if typ == 0 {
			var x unix.Statx_t
			if err := statAt(dfd, de.name, &x); err != nil {
				continue // gone
			}
			typ = uint32(x.Mode) & unix.S_IFMT
		}
		crel := de.name
		if rel != "" {
			crel = rel + "/" + de.name
		}
		err := visit(walkEntry{dir: dfd, rel: crel, name: de.name, typ: typ})
		if err != nil && err != errSkipDir {
			return err
		}
		if err == errSkipDir || typ != unix.S_IFDIR {
			continue
		}
		if depth+1 >= maxWalkDepth {
			if err := dirErr(crel, errTooDeep); err != nil {
				return err
			}
			continue
		}
		cfd, err := unix.Openat(dfd, de.name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err != nil {
			if err == unix.ENOENT || err == unix.ENOTDIR || err == unix.ELOOP {
				continue // removed or replaced meanwhile
			}
			if err := dirErr(crel, err); err != nil {
				return err
			}
			continue
		}
		if err := walkDir(ctx, cfd, crel, depth+1, visit, dirErr); err != nil {
			return err
		}
	}
	return nil
}

type dirent struct {
	name string
	typ  uint32
}

// readDirents reads all entries of the directory open as fd, sorted by
// name, without "." and "..".
func readDirents(fd int) ([]dirent, error) {
	var out []dirent
	buf := make([]byte, 32<<10)
	for {
		m, err := unix.Getdents(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if m <= 0 {
			break
		}
		for b := buf[:m]; len(b) > 0; {
			reclen := int(*(*uint16)(unsafe.Pointer(&b[16])))
			if reclen == 0 || reclen > len(b) {
				return nil, unix.EIO
			}
			typ := b[18]
			nameb := b[19:reclen]
			if i := slices.Index(nameb, 0); i >= 0 {
				nameb = nameb[:i]
			}
			if name := string(nameb); name != "." && name != ".." {
				out = append(out, dirent{name: name, typ: dtToMode(typ)})
			}
			b = b[reclen:]
		}
	}
	slices.SortFunc(out, func(a, b dirent) int {
		switch {
		case a.name < b.name:
			return -1
		case a.name > b.name:
			return 1
		}
		return 0
	})
	return out, nil
}

func dtToMode(t byte) uint32 {
	switch t {
	case unix.DT_REG:
		return unix.S_IFREG
	case unix.DT_DIR:
		return unix.S_IFDIR
	case unix.DT_LNK:
		return unix.S_IFLNK
	case unix.DT_FIFO:
		return unix.S_IFIFO
	case unix.DT_SOCK:
		return unix.S_IFSOCK
	case unix.DT_CHR:
		return unix.S_IFCHR
	case unix.DT_BLK:
		return unix.S_IFBLK
	}
	return 0
}

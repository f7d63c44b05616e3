package fs

import (
	"context"

	"golang.org/x/sys/unix"
)

// The backing directory (backing.go has the rules every access follows):
// conversion and migration.

// openDirRel opens directory rel (a path from the backing root) for
// fsync and *at calls.
func (r *Root) openDirRel(rel string) (int, error) {
	return r.beneath(rel, unix.O_RDONLY|unix.O_DIRECTORY, 0)
}

// SyncDir makes the entries of directory rel (a path from the backing
// root) durable: the conversions committed in it with NoDirSync.
func (r *Root) SyncDir(rel string) error {
	fd, err := r.openDirRel(rel)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Fsync(fd)
}

// RemoveTemp removes rel (a path from the backing root) if it is still a
// regular file named like a conversion's temp file: the old plaintext
// that a commit with KeepOld left.
func (r *Root) RemoveTemp(rel string) error {
	dir, base := splitRel(rel)
	dirfd, err := r.beneath(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(dirfd)
	var x unix.Statx_t
	if err := statAt(dirfd, base, &x); err != nil {
		return err
	}
	if !isReg(&x) || !isStaleTemp(base) {
		return nil
	}
	return unlinkAt(dirfd, base, 0)
}

// removeTempsBelow removes every regular file named like a conversion's
// temp file (isStaleTemp) below the backing directory at path, except in
// auth/, reporting each one removed and each problem (a directory that
// cannot be read, a file that cannot be removed).
func removeTempsBelow(ctx context.Context, path string, removed func(rel string), problem func(rel string, err error)) error {
	root, _, err := openBacking(path)
	if err != nil {
		return err
	}
	defer unix.Close(root)
	return walkTree(ctx, root, func(e walkEntry) error {
		if e.typ != unix.S_IFREG || !isStaleTemp(e.name) {
			return nil
		}
		// Whatever non-directory has this name now goes: the name is ours.
		if err := unlinkAt(e.dir, e.name, 0); err != nil {
			if err != unix.ENOENT {
				problem(e.rel, err)
			}
			return nil
		}
		removed(e.rel)
		return nil
	}, func(rel string, err error) error {
		if rel == "" {
			return err
		}
		if err != unix.ENOENT {
			problem(rel, err)
		}
		return nil
	})
}

// splitRel splits a path from the backing root into its directory (".")
// and its last component.
func splitRel(rel string) (dir, base string) {
	for i := len(rel) - 1; i >= 0; i-- {
		if rel[i] == '/' {
			return rel[:i], rel[i+1:]
		}
	}
	return ".", rel
}

// hasMagicAt reports whether the regular file name in dir starts with
// the crypto magic (false if it is gone or no regular file).
func hasMagicAt(dir int, name string) (bool, error) {
	var x unix.Statx_t
	fd, err := openRegularAt(dir, name, unix.O_RDONLY|unix.O_NONBLOCK, &x)
	if err != nil {
		if err == unix.ENOENT || err == unix.ELOOP || err == unix.EISDIR || err == unix.ENXIO {
			return false, nil
		}
		return false, err
	}
	defer unix.Close(fd)
	return readMagic(fd)
}

package fs

import (
	"os"

	"golang.org/x/sys/unix"
)

// The backing directory (backing.go has the rules every access follows):
// the daemon's own files in auth/.

// openAuthDir opens auth/ at the backing root (root), creating it (0700)
// if it is missing; a symlink there is an error.
func openAuthDir(root int) (int, error) {
	if err := unix.Mkdirat(root, reservedDir, 0o700); err != nil && err != unix.EEXIST {
		return -1, err
	}
	return unix.Openat(root, reservedDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
}

// openAuthFile opens the regular file name in auth/ for reading and
// writing, creating it (0600) if it is missing, never through a symlink.
func openAuthFile(root int, name string) (*os.File, error) {
	dir, err := openAuthDir(root)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dir)
	fd, err := unix.Openat(dir, name, unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, err
	}
	var x unix.Statx_t
	if err := fstatx(fd, &x); err != nil || !isReg(&x) {
		unix.Close(fd)
		if err == nil {
			err = unix.EINVAL
		}
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

// replaceAuthFile replaces auth/name with a file holding data, durably
// (a temp file written and fsynced, renamed over name, auth/ fsynced),
// and returns the new file open for reading and writing.
func replaceAuthFile(root int, name string, data []byte) (*os.File, error) {
	dir, err := openAuthDir(root)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dir)
	tmp := name + ".tmp"
	_ = unix.Unlinkat(dir, tmp, 0)
	fd, err := unix.Openat(dir, tmp, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), name)
	ok := false
	defer func() {
		if !ok {
			f.Close()
			_ = unix.Unlinkat(dir, tmp, 0)
		}
	}()
	if _, err := f.WriteAt(data, 0); err != nil {
		return nil, err
	}
	if err := f.Sync(); err != nil {
		return nil, err
	}
	if err := unix.Renameat(dir, tmp, dir, name); err != nil {
		return nil, err
	}
	ok = true
	// The new file is in place: it is the log from now on, even if this
	// fsync fails (the next one of auth/ would then make it last).
	_ = unix.Fsync(dir)
	return f, nil
}

package fs

import (
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// File locks on cryptFile handles. Like go-fuse's LoopbackFile, POSIX
// lock requests become open-file-description (OFD) locks and flock
// requests flock(2) locks on a backing descriptor of the handle's own, so
// two handles conflict as two opens of a local file do. cryptFile handles
// share one descriptor for I/O, so the lock descriptor is opened on first
// use, by reopening the shared one (which works for unlinked files too).
// lmu is taken before the inode's mu (doc.go has the lock order).

// lockFd returns the handle's lock descriptor, opening it on first use.
func (f *cryptFile) lockFd() (int, syscall.Errno) {
	f.lmu.Lock()
	defer f.lmu.Unlock()
	if f.lfd >= 0 {
		return f.lfd, 0
	}
	f.st.mu.RLock()
	defer f.st.mu.RUnlock()
	if f.st.file == nil {
		return -1, syscall.EBADF
	}
	acc := unix.O_RDONLY
	if f.writable {
		acc = unix.O_RDWR
	}
	fd, err := reopenFd(f.st.fd, acc)
	if err != nil {
		return -1, errnoOf(err)
	}
	f.lfd = fd
	f.st.lockers.Add(1) // locks do not follow a conversion (convertOpen)
	return fd, 0
}

// closeLockFd closes the lock descriptor (dropping its locks).
func (f *cryptFile) closeLockFd() {
	f.lmu.Lock()
	defer f.lmu.Unlock()
	if f.lfd >= 0 {
		unix.Close(f.lfd)
		f.lfd = -1
		f.st.lockers.Add(-1)
	}
}

func (f *cryptFile) Getlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32, out *fuse.FileLock) syscall.Errno {
	fd, errno := f.lockFd()
	if errno != 0 {
		return errno
	}
	var flk syscall.Flock_t
	lk.ToFlockT(&flk)
	errno = errnoOf(syscall.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, &flk))
	out.FromFlockT(&flk)
	return errno
}

func (f *cryptFile) Setlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32) syscall.Errno {
	return f.setLock(lk, flags, false)
}

func (f *cryptFile) Setlkw(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32) syscall.Errno {
	return f.setLock(lk, flags, true)
}

func (f *cryptFile) setLock(lk *fuse.FileLock, flags uint32, wait bool) syscall.Errno {
	fd, errno := f.lockFd()
	if errno != 0 {
		return errno
	}
	if flags&fuse.FUSE_LK_FLOCK != 0 {
		var how int
		switch lk.Typ {
		case syscall.F_RDLCK:
			how = unix.LOCK_SH
		case syscall.F_WRLCK:
			how = unix.LOCK_EX
		case syscall.F_UNLCK:
			how = unix.LOCK_UN
		default:
			return syscall.EINVAL
		}
		if !wait {
			how |= unix.LOCK_NB
		}
		return errnoOf(unix.Flock(fd, how))
	}
	var flk syscall.Flock_t
	lk.ToFlockT(&flk)
	cmd := unix.F_OFD_SETLK
	if wait {
		cmd = unix.F_OFD_SETLKW
	}
	return errnoOf(syscall.FcntlFlock(uintptr(fd), cmd, &flk))
}

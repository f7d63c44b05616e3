package fs

import (
	"context"
	"syscall"
	"time"
	"unsafe"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Attribute operations. Sizes of encrypted files are plaintext sizes,
// computed from the backing size without the key, so stat gives the same
// answer logged in and out.

// Getattr reports n's attributes, through the open handle f when there
// is one (the file may have no name any more).
func (n *node) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if f != nil {
		if errno := n.statHandle(f, &out.Attr); errno != syscall.ENOTSUP {
			return errno
		}
	}
	var x unix.Statx_t
	fd, err := n.root.statNode(n, &x)
	if err != nil {
		return errnoOf(err)
	}
	if fd >= 0 {
		defer unix.Close(fd)
	}
	n.fillAttr(&x, fd, &out.Attr)
	return 0
}

// statHandle fills a through the open handle f; ENOTSUP if f is no
// handle of ours.
func (n *node) statHandle(f gofs.FileHandle, a *fuse.Attr) syscall.Errno {
	if cf, ok := f.(*cryptFile); ok {
		return cf.getattr(a)
	}
	fd := fileFd(f)
	if fd < 0 {
		return syscall.ENOTSUP
	}
	var x unix.Statx_t
	if err := fstatx(fd, &x); err != nil {
		return errnoOf(err)
	}
	n.fillAttr(&x, fd, a)
	return 0
}

// Statx is Getattr for statx(2) callers that ask for more than the basic
// fields.
func (n *node) Statx(ctx context.Context, f gofs.FileHandle, flags uint32, mask uint32, out *fuse.StatxOut) syscall.Errno {
	var x unix.Statx_t
	req := int(mask) | statxMask
	sync := int(flags) & (unix.AT_STATX_FORCE_SYNC | unix.AT_STATX_DONT_SYNC)
	plain := int64(-1)
	switch h := f.(type) {
	case *cryptFile:
		st := h.st
		st.mu.RLock()
		if st.file == nil {
			st.mu.RUnlock()
			return syscall.EBADF
		}
		err := statxFd(st.fd, sync, req, &x)
		if err == nil && st.cf != nil {
			if ps, perr := st.cf.Header().PlainSize(int64(x.Size)); perr == nil {
				plain = ps
			}
		}
		st.mu.RUnlock()
		if err != nil {
			return errnoOf(err)
		}
		if st.cf == nil {
			plain = int64(x.Size)
		}
	default:
		fd := fileFd(f)
		for attempt := 0; ; attempt++ {
			own := -1
			if fd < 0 {
				var probe unix.Statx_t
				var err error
				if own, err = n.root.statNode(n, &probe); err != nil {
					return errnoOf(err)
				}
			}
			sfd := max(fd, own)
			var err error
			if sfd >= 0 {
				err = statxFd(sfd, sync, req, &x)
			} else {
				err = n.root.statxNode(ctx, n, sync, req, &x)
			}
			if err == nil && sfd < 0 && n.root.probes(n.name(), &x) && !n.classCached(&x) && attempt < 3 {
				continue // changed since statNode looked
			}
			if err == nil && needsHeader(&x) {
				if class, h := n.classifyAttr(&x, sfd); class == classEncrypted {
					if ps, perr := h.PlainSize(int64(x.Size)); perr == nil {
						plain = ps
					}
				}
			}
			if own >= 0 {
				unix.Close(own)
			}
			if err != nil {
				return errnoOf(err)
			}
			break
		}
	}
	out.Statx.FromStatx(&x)
	if plain >= 0 {
		out.Statx.Size = uint64(plain)
	}
	return 0
}

// Setattr changes mode, owner, size and times, in that order (truncating
// before setting times keeps an explicit mtime).
func (n *node) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	r := n.root
	cf, _ := f.(*cryptFile)
	fd := fileFd(f)
	// withFd runs op on a descriptor of n: the handle's, or none (-1).
	withFd := func(op func(fd int) error) syscall.Errno {
		if cf != nil {
			cf.st.mu.RLock()
			defer cf.st.mu.RUnlock()
			if cf.st.file == nil {
				return syscall.EBADF
			}
			return errnoOf(op(cf.st.fd))
		}
		return errnoOf(op(fd))
	}
	// Without a handle, mode, owner and times change n's backing object
	// (backing.go: the name in n's checked directory, or a pinned
	// descriptor for other users' requests).
	onObj := func(op func(o obj) error) syscall.Errno {
		if cf != nil || fd >= 0 {
			return withFd(func(fd int) error { return op(obj{dir: -1, fd: fd}) })
		}
		return errnoOf(r.withObj(ctx, n, op))
	}

	if mode, ok := in.GetMode(); ok {
		if errno := onObj(func(o obj) error { return o.chmod(mode) }); errno != 0 {
			return errno
		}
	}

	uid, uok := in.GetUID()
	gid, gok := in.GetGID()
	if uok || gok {
		u, g := -1, -1
		if uok {
			u = int(uid)
		}
		if gok {
			g = int(gid)
		}
		if errno := onObj(func(o obj) error { return o.chown(u, g) }); errno != 0 {
			return errno
		}
	}

	if size, ok := in.GetSize(); ok {
		var errno syscall.Errno
		switch {
		case cf != nil:
			errno = cf.truncate(int64(size))
		case fd >= 0:
			if _, isPT := f.(*passthroughFile); isPT {
				errno = errnoOf(unix.Ftruncate(fd, int64(size)))
			} else {
				errno = syscall.EISDIR
			}
		default:
			errno = r.truncatePath(n, int64(size))
		}
		if errno != 0 {
			return errno
		}
	}

	mtime, mok := in.GetMTime()
	atime, aok := in.GetATime()
	if mok || aok {
		ts := [2]unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
		if aok {
			ts[0] = timespec(atime)
		}
		if mok {
			ts[1] = timespec(mtime)
		}
		if errno := onObj(func(o obj) error { return o.utimes(&ts) }); errno != 0 {
			return errno
		}
	}
	return n.Getattr(ctx, f, out)
}

func timespec(t time.Time) unix.Timespec {
	return unix.Timespec{Sec: t.Unix(), Nsec: int64(t.Nanosecond())}
}

// futimens sets the times of the file open as fd (utimensat with a NULL
// path).
func futimens(fd int, ts *[2]unix.Timespec) error {
	_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(ts)), 0, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

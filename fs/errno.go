package fs

import (
	"context"
	"errors"
	iofs "io/fs"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/sirupsen/logrus"

	"github.com/mountd/mountd/crypto"
	"github.com/mountd/mountd/logkey"
)

// toErrno is the one place that turns errors into errnos:
//
//	crypto.ErrLocked                           EACCES
//	crypto.ErrUnauthenticated, ErrBadHeader,
//	ErrBadSize, ErrWrongKey                    EIO
//	context cancellation                       EINTR
//	OS errors                                  go-fuse's ToErrno
//	anything else                              EIO
func toErrno(err error) syscall.Errno {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, crypto.ErrLocked):
		return syscall.EACCES
	case isCorrupt(err):
		return syscall.EIO
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return syscall.EINTR
	}
	var en syscall.Errno
	if errors.As(err, &en) {
		return gofs.ToErrno(en)
	}
	for _, sentinel := range []error{iofs.ErrNotExist, iofs.ErrExist, iofs.ErrPermission, iofs.ErrInvalid} {
		if errors.Is(err, sentinel) {
			return gofs.ToErrno(sentinel)
		}
	}
	return syscall.EIO
}

// isCorrupt reports whether err says the content cannot be trusted.
func isCorrupt(err error) bool {
	return errors.Is(err, crypto.ErrUnauthenticated) || errors.Is(err, crypto.ErrBadHeader) ||
		errors.Is(err, crypto.ErrBadSize) || errors.Is(err, crypto.ErrWrongKey)
}

// errno maps err for an operation op on n and logs corruption: a Warn
// naming the path, inode and block, once per inode.
func (r *Root) errno(err error, n *node, op string) syscall.Errno {
	e := toErrno(err)
	if e == syscall.EIO && isCorrupt(err) && n != nil && !n.warned.Swap(true) {
		f := logrus.Fields{
			fieldOp:     op,
			logkey.Path: n.rel(),
			fieldIno:    n.StableAttr().Ino,
		}
		if b, ok := blockOf(err); ok {
			f[fieldBlock] = b
		}
		r.log.WithFields(f).WithError(err).Warn("encrypted file is corrupt or not ours; returning EIO")
	}
	return e
}

// blockOf returns the block number of a content error.
func blockOf(err error) (int64, bool) {
	var be *crypto.BlockError
	if errors.As(err, &be) {
		return be.Block, true
	}
	return 0, false
}

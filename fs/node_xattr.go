package fs

import (
	"context"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// Extended attributes, passed through to the backing file (not followed
// through symlinks), like go-fuse's LoopbackNode.

func (n *node) fullPath() string {
	return filepath.Join(n.root.backing, n.rel())
}

func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	sz, err := unix.Lgetxattr(n.fullPath(), attr, dest)
	return uint32(max(sz, 0)), errnoOf(err)
}

func (n *node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	return errnoOf(unix.Lsetxattr(n.fullPath(), attr, data, int(flags)))
}

func (n *node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	return errnoOf(unix.Lremovexattr(n.fullPath(), attr))
}

func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	sz, err := unix.Llistxattr(n.fullPath(), dest)
	return uint32(max(sz, 0)), errnoOf(err)
}

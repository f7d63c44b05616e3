package fs

import (
	"context"
	"syscall"
)

// Extended attributes, passed through to the backing object (never
// through a symlink), like go-fuse's LoopbackNode; backing.go says how
// the object is reached.

func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	var sz int
	err := n.root.withObj(ctx, n, func(o obj) (err error) {
		sz, err = o.getxattr(attr, dest)
		return err
	})
	return uint32(max(sz, 0)), errnoOf(err)
}

func (n *node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	return errnoOf(n.root.withObj(ctx, n, func(o obj) error { return o.setxattr(attr, data, int(flags)) }))
}

func (n *node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	return errnoOf(n.root.withObj(ctx, n, func(o obj) error { return o.removexattr(attr) }))
}

func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	var sz int
	err := n.root.withObj(ctx, n, func(o obj) (err error) {
		sz, err = o.listxattr(dest)
		return err
	})
	return uint32(max(sz, 0)), errnoOf(err)
}

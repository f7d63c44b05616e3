package fs

import (
	"fmt"
	"log"
	"slices"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"
)

// Server is a mounted filesystem.
type Server struct {
	*fuse.Server
	Root *Root

	mountpoint string
}

// Mount creates a Root from opts and mounts it at mountpoint. mountOpts
// may be nil; whatever it holds, Mount asks for 1 MiB requests (unless it
// sets MaxWrite), mounts with mount(2) when it can (falling back to
// fusermount), names the filesystem "mountd", lets the kernel check
// permissions (default_permissions), forwards file locks, and allows mmap
// of direct-I/O files
// (CAP_DIRECT_IO_ALLOW_MMAP), which encrypted files are.
func Mount(mountpoint string, opts Options, mountOpts *fuse.MountOptions) (*Server, error) {
	root, err := NewRoot(opts)
	if err != nil {
		return nil, err
	}
	srv, err := gofs.Mount(mountpoint, root, root.nodeOptions(mountOpts))
	if err != nil {
		root.Close()
		return nil, fmt.Errorf("fs: mount %s: %w", mountpoint, err)
	}
	root.log.WithFields(logrus.Fields{"mountpoint": mountpoint, "backing": root.backing}).Info("mounted")
	return &Server{Server: srv, Root: root, mountpoint: mountpoint}, nil
}

// nodeOptions returns the go-fuse options for serving r.
func (r *Root) nodeOptions(mountOpts *fuse.MountOptions) *gofs.Options {
	var mo fuse.MountOptions
	if mountOpts != nil {
		mo = *mountOpts
	}
	if mo.MaxWrite == 0 {
		mo.MaxWrite = fuse.MAX_KERNEL_WRITE
	}
	if mo.FsName == "" {
		mo.FsName = "mountd"
	}
	if mo.Name == "" {
		mo.Name = "mountd"
	}
	if !mo.DirectMountStrict {
		mo.DirectMount = true
	}
	mo.ExtraCapabilities |= fuse.CAP_DIRECT_IO_ALLOW_MMAP
	mo.EnableLocks = true
	mo.Options = slices.Clone(mo.Options)
	if !slices.Contains(mo.Options, "default_permissions") {
		mo.Options = append(mo.Options, "default_permissions")
	}
	if mo.Logger == nil {
		mo.Logger = log.New(r.log.WithField(fieldComponent, "go-fuse").WriterLevel(logrus.DebugLevel), "", 0)
	}
	attr, entry := r.attrTimeout, r.entryTimeout
	return &gofs.Options{
		MountOptions:    mo,
		AttrTimeout:     &attr,
		EntryTimeout:    &entry,
		NullPermissions: true,
	}
}

// Unmount unmounts the filesystem and closes the Root. If the mount is
// busy it detaches it (a lazy unmount), so the mountpoint is free at once
// and the kernel finishes when the last user goes away.
func (s *Server) Unmount() error {
	err := s.Server.Unmount()
	if err == nil {
		s.Root.Close()
		return nil
	}
	if derr := syscall.Unmount(s.mountpoint, syscall.MNT_DETACH); derr != nil {
		return fmt.Errorf("fs: unmount %s: %w (lazy: %v)", s.mountpoint, err, derr)
	}
	s.Root.log.WithError(err).Warn("mount busy; detached it (lazy unmount)")
	go func() {
		done := make(chan struct{})
		go func() { s.Server.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(time.Minute):
		}
		s.Root.Close()
	}()
	return nil
}

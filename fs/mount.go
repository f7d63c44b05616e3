package fs

import (
	"fmt"
	"log"
	"os"
	"strconv"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/mountd/mountd/logkey"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// Server is a mounted filesystem.
type Server struct {
	*fuse.Server
	Root *Root

	mountpoint string
}

// Mount creates a Root from opts and mounts it at mountpoint. It asks
// for 1 MiB requests, mounts with mount(2) when it can (falling back to
// fusermount), names the filesystem type "fuse.mountd" with opts.FsName
// as its source, lets the kernel check permissions (default_permissions),
// forwards file locks, allows mmap of direct-I/O files
// (CAP_DIRECT_IO_ALLOW_MMAP), which encrypted files are, and lets other
// users in only with opts.AllowOther.
func Mount(mountpoint string, opts Options) (*Server, error) {
	root, err := NewRoot(opts)
	if err != nil {
		return nil, err
	}
	if err := root.checkMountpoint(mountpoint); err != nil {
		root.Close()
		return nil, fmt.Errorf("fs: %w", err)
	}
	srv, err := gofs.Mount(mountpoint, root, root.nodeOptions(opts))
	if err != nil {
		root.Close()
		return nil, fmt.Errorf("fs: mount %s: %w", mountpoint, err)
	}
	if err := setReadAhead(mountpoint, readAheadKB); err != nil {
		root.log.WithError(err).Debug("cannot raise the mount's readahead; sequential reads will be slower")
	}
	root.log.WithFields(logrus.Fields{"mountpoint": mountpoint, logkey.Backing: root.backing}).Info("mounted")
	return &Server{Server: srv, Root: root, mountpoint: mountpoint}, nil
}

// nodeOptions returns the go-fuse options for serving r as opts say.
func (r *Root) nodeOptions(opts Options) *gofs.Options {
	mo := fuse.MountOptions{
		AllowOther:        opts.AllowOther,
		MaxWrite:          fuse.MAX_KERNEL_WRITE,
		MaxReadAhead:      fuse.MAX_KERNEL_WRITE,
		FsName:            opts.FsName,
		Name:              "mountd",
		DirectMount:       true,
		ExtraCapabilities: fuse.CAP_DIRECT_IO_ALLOW_MMAP,
		EnableLocks:       true,
		Options:           []string{"default_permissions"},
		Logger:            log.New(r.log.WithField(logkey.Component, "go-fuse").WriterLevel(logrus.DebugLevel), "", 0),
	}
	if mo.FsName == "" {
		mo.FsName = "mountd"
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
		s.stopped()
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
			s.stopped()
		case <-time.After(time.Minute):
			s.Root.Close()
		}
	}()
	return nil
}

// stopped releases the handles the kernel never released (their RELEASE
// was still queued when the filesystem went away: handleSet) and closes
// the Root. No request of the mount runs or will run.
func (s *Server) stopped() {
	if n := s.Root.handles.releaseLeft(); n > 0 {
		s.Root.log.WithField(logkey.Files, logkey.Count(n)).Debug("released the handles the kernel did not release before the unmount")
	}
	s.Root.Close()
}

// readAheadKB is the readahead window the daemon gives its mount. The
// kernel starts FUSE mounts at 128 KiB (capping a larger
// InitOut.MaxReadAhead), so sequential reads arrive as 128 KiB requests,
// one at a time; with 1 MiB requests reads of encrypted files run about
// three times faster here (0.45 -> 1.4 GiB/s). It needs root; without it
// the default stays.
const readAheadKB = 1024

// setReadAhead sets the readahead of the filesystem mounted at mountpoint
// through its backing device info in sysfs.
func setReadAhead(mountpoint string, kb int) error {
	var st unix.Stat_t
	if err := unix.Stat(mountpoint, &st); err != nil {
		return err
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	return os.WriteFile(p, []byte(strconv.Itoa(kb)), 0)
}

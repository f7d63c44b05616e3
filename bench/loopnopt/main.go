// Command loopnopt is a benchmark yardstick, not product code: a plain
// go-fuse loopback of a backing directory with FUSE passthrough turned off
// and 1 MiB requests. Every read and write therefore travels through the Go
// server, which makes it the realistic ceiling for a go-fuse filesystem that
// has to touch the data (as mountd does for encrypted files).
//
//	loopnopt --backing DIR --mount MNT
//
// It runs in the foreground and unmounts on SIGINT or SIGTERM.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

func main() {
	backing := flag.String("backing", "", "backing directory to expose (required)")
	mnt := flag.String("mount", "", "empty directory to mount on (required)")
	debug := flag.Bool("debug", false, "log every FUSE request")
	flag.Parse()
	if *backing == "" || *mnt == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: loopnopt --backing DIR --mount MNT")
		os.Exit(2)
	}
	if err := run(*backing, *mnt, *debug); err != nil {
		fmt.Fprintln(os.Stderr, "loopnopt:", err)
		os.Exit(1)
	}
}

func run(backing, mnt string, debug bool) error {
	root, err := fs.NewLoopbackRoot(backing)
	if err != nil {
		return fmt.Errorf("backing %s: %w", backing, err)
	}
	// The same timeouts fs.NewNodeFS applies when given no options.
	timeout := time.Second
	opts := &fs.Options{
		EntryTimeout: &timeout,
		AttrTimeout:  &timeout,
		MountOptions: fuse.MountOptions{
			FsName:               backing,
			Name:                 "loopnopt",
			DirectMount:          true,
			MaxWrite:             fuse.MAX_KERNEL_WRITE,
			DisabledCapabilities: fuse.CAP_PASSTHROUGH,
			Debug:                debug,
		},
	}
	server, err := fs.Mount(mnt, root, opts)
	if err != nil {
		return fmt.Errorf("mount %s: %w", mnt, err)
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		server.Wait()
		close(done)
	}()
	select {
	case <-sigs:
		// Unmount retries while the mount is busy; fall back to a lazy
		// detach so a signal never leaves the mount behind.
		if err := server.Unmount(); err != nil {
			fmt.Fprintln(os.Stderr, "loopnopt: unmount:", err, "- detaching lazily")
			if err := syscall.Unmount(mnt, syscall.MNT_DETACH); err != nil {
				return fmt.Errorf("lazy unmount %s: %w", mnt, err)
			}
		}
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			// Files still open on the detached mount; exiting closes
			// /dev/fuse, which aborts the connection.
		}
	case <-done:
		// Unmounted from outside (fusermount -u / umount).
	}
	return nil
}

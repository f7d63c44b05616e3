package main

import (
	"fmt"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"

	"github.com/mountd/mountd/control"
	"github.com/mountd/mountd/crypto"
	"github.com/mountd/mountd/fs"
)

// daemon is the wired filesystem and control backend.
type daemon struct {
	server    *fs.Server
	migrator  *fs.Migrator
	backend   control.Backend
	unmounted <-chan struct{}
}

func startDaemon(c *serveConfig, kr *crypto.Keyring, log *logrus.Entry) (*daemon, error) {
	// A daemon killed in the middle of encrypting a file left its temp
	// file behind; nothing can be converting now.
	if _, err := fs.RemoveStaleTemps(c.data, log); err != nil {
		return nil, fmt.Errorf("removing stale temp files: %w", err)
	}
	mo := &fuse.MountOptions{AllowOther: c.allowOther}
	srv, err := fs.Mount(c.mount, fs.Options{
		Backing: c.data,
		Protect: c.protect,
		Keyring: kr,
		Log:     log,
	}, mo)
	if err != nil {
		return nil, err
	}
	mig := fs.NewMigrator(srv.Root, fs.MigrationOptions{})
	svc, err := control.NewService(control.ServiceOptions{
		Keyring:      kr,
		VerifierPath: crypto.VerifierPath(c.data),
		Protect:      c.protect,
		KDF:          c.kdf,
		Files:        srv.Root,
		Tasks:        mig,
	})
	if err != nil {
		mig.Close()
		srv.Unmount()
		return nil, err
	}
	done := make(chan struct{})
	go func() { srv.Wait(); close(done) }()
	return &daemon{server: srv, migrator: mig, backend: svc, unmounted: done}, nil
}

// stop stops the migration task, if one runs, and unmounts (lazily if
// busy).
func (d *daemon) stop(log *logrus.Entry) {
	d.migrator.Close()
	if err := d.server.Unmount(); err != nil {
		log.WithError(err).Error("unmount failed")
	}
}

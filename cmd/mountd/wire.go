package main

import (
	"context"
	"errors"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"

	"mountd/control"
	"mountd/crypto"
	"mountd/fs"
)

// daemon is the wired filesystem and control backend.
type daemon struct {
	server    *fs.Server
	backend   control.Backend
	unmounted <-chan struct{}
}

func startDaemon(c *serveConfig, kr *crypto.Keyring, log *logrus.Entry) (*daemon, error) {
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
	svc, err := control.NewService(control.ServiceOptions{
		Keyring:      kr,
		VerifierPath: crypto.VerifierPath(c.data),
		Protect:      c.protect,
		Files:        srv.Root,
		Tasks:        noTasks{},
	})
	if err != nil {
		srv.Unmount()
		return nil, err
	}
	done := make(chan struct{})
	go func() { srv.Wait(); close(done) }()
	return &daemon{server: srv, backend: svc, unmounted: done}, nil
}

// stop unmounts (lazily if busy).
func (d *daemon) stop(log *logrus.Entry) {
	if err := d.server.Unmount(); err != nil {
		log.WithError(err).Error("unmount failed")
	}
}

var errNoMigration = errors.New("the migration task is not available in this build")

// noTasks stands in until the migration task is wired.
type noTasks struct{}

func (noTasks) Start(context.Context) (control.Task, bool, error) {
	return control.Task{}, false, errNoMigration
}
func (noTasks) Get(string) (control.Task, bool) { return control.Task{}, false }
func (noTasks) Cancel(string) (control.Task, error) {
	return control.Task{}, control.ErrNotFound
}
func (noTasks) Last() (control.Task, bool) { return control.Task{}, false }

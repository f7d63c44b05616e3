package main

import (
	"fmt"
	"os"

	"github.com/sirupsen/logrus"

	"github.com/mountd/mountd/autolock"
	"github.com/mountd/mountd/control"
	"github.com/mountd/mountd/crypto"
	"github.com/mountd/mountd/fs"
	"github.com/mountd/mountd/migrate"
	"github.com/mountd/mountd/task"
)

// envNetworkBacking=1 makes the daemon write encrypted files as on a
// network filesystem whatever the backing filesystem is (fs.Options.
// NetworkBacking): for a network filesystem statfs does not tell, and for
// the crash harness, which checks that way of writing on a recorded disk.
const envNetworkBacking = "MOUNTD_NETWORK_BACKING"

// daemon is the wired filesystem, control backend and lock policies.
type daemon struct {
	server    *fs.Server
	migrator  *migrate.Migrator
	backend   control.Backend
	policies  *autolock.Policies
	unmounted <-chan struct{}
}

func startDaemon(c *serveConfig, kr *crypto.Keyring, log *logrus.Entry, info control.DaemonInfo) (*daemon, error) {
	// A daemon killed in the middle of encrypting a file left its temp
	// file behind; nothing can be converting now.
	if _, err := fs.RemoveStaleTemps(c.data, log); err != nil {
		return nil, fmt.Errorf("removing stale temp files: %w", err)
	}
	// The lock policies first: a required one that cannot work stops
	// the start before anything is mounted.
	lo, err := c.lock.options(c.data, kr, log)
	if err != nil {
		return nil, err
	}
	var mig *migrate.Migrator // set before the policies start
	lo.Busy = func() bool { s, ok := mig.Last(); return ok && s.State == task.Running }
	pol, err := autolock.New(lo)
	if err != nil {
		return nil, lockError(err)
	}
	// The data directory is the mount's source (df's "Filesystem"
	// column, mountinfo): a second daemon finds whose mount it is.
	srv, err := fs.Mount(c.mount, fs.Options{
		Backing: c.data,
		Protect: c.protect,
		Keyring: kr,
		// Nil: the default set; empty: none (--no-protect-temps).
		TempPatterns:        c.protectTemps,
		NoEncryptAfterLogin: c.noEncryptAfterLogin,
		RequireEncryption:   c.requireEncryption,
		Log:                 log,
		Activity:            pol.Activity,
		AllowOther:          c.allowOther,
		FsName:              c.data,
		NetworkBacking:      os.Getenv(envNetworkBacking) == "1",
	})
	if err != nil {
		pol.Close()
		return nil, err
	}
	mig = migrate.New(srv.Root, kr, migrate.Options{Log: log})
	svc, err := control.NewService(control.ServiceOptions{
		Keyring:      kr,
		VerifierPath: crypto.VerifierPath(c.data),
		Protect:      c.protect,
		KDF:          c.kdf,
		Files:        srv.Root,
		Tasks:        mig,
		Pending:      srv.Root,
		AutoLock:     lockPolicies{pol},
		OnLogin:      func() { pol.LoggedIn(); srv.Root.LoggedIn() },
		Daemon:       info,
	})
	if err != nil {
		pol.Close()
		mig.Close()
		_ = srv.Unmount() // best effort: err says why the start failed
		return nil, err
	}
	// Every automatic lock is the control plane's own logout.
	pol.Start(policyLocker{svc})
	done := make(chan struct{})
	go func() { srv.Wait(); close(done) }()
	return &daemon{server: srv, migrator: mig, backend: svc, policies: pol, unmounted: done}, nil
}

// stop stops the migration task, if one runs, and unmounts (lazily if
// busy).
func (d *daemon) stop(log *logrus.Entry) {
	d.policies.Close()
	d.migrator.Close()
	if err := d.server.Unmount(); err != nil {
		log.WithError(err).Error("unmount failed")
	}
}

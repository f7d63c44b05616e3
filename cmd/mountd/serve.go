package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/control"
	"github.com/mountd/mountd/crypto"
	"github.com/mountd/mountd/datadir"
	"github.com/mountd/mountd/fs"
)

// defaultMemoryLimit is the Go runtime's soft memory limit unless
// GOMEMLIMIT overrides it.
const defaultMemoryLimit = 48 << 20

var serveCmd = &command{
	name:    "serve",
	summary: "run the daemon: mount --data at --mount, serve the control plane on --listen",
	help: `Runs in the foreground until SIGINT or SIGTERM, which clear the key and unmount.
Every flag is checked before anything is created.`,
	group: groupDaemon,
	setup: func(f *flag.FlagSet) runFunc {
		c := serveFlags(f)
		return func(s stdio, _ []string) error {
			f.Visit(func(fl *flag.Flag) { c.dataSet = c.dataSet || fl.Name == "data" })
			if err := c.validate(); err != nil {
				return err
			}
			return serve(c, s)
		}
	},
}

// serveConfig is the daemon's command line.
type serveConfig struct {
	data, mount, listen string
	protect             []string
	protectTemps        []string // --protect-temp (nil: fs.DefaultTempPatterns)
	noProtectTemps      bool
	noEncryptAfterLogin bool
	requireEncryption   bool
	logFormat, logLevel string
	level               logrus.Level
	allowOther          bool
	tokenFile           string
	allowUIDs           []uint32
	create              bool
	dataSet             bool // --data was given
	kdf                 crypto.KDFParams
	lock                lockConfig // --lock-* (autolock.go)
	leaseTTL            time.Duration

	kdfTime, kdfMiB, kdfThreads uint
}

// serveFlags declares the daemon's flags on f.
func serveFlags(f *flag.FlagSet) *serveConfig {
	c := &serveConfig{}
	f.StringVar(&c.data, "data", "./Client_Data", "backing `directory` holding the data; created if missing only when --data is not given, or with --create")
	f.BoolVar(&c.create, "create", false, "create --data if it does not exist (a new, empty store)")
	f.StringVar(&c.mount, "mount", "./mnt", "mountpoint: an empty `directory`, never a mount (created if missing)")
	f.StringVar(&c.listen, "listen", control.DefaultAddr, "control plane `address`: host:port or unix:/path")
	f.Func("protect", "`glob` of base names whose new content is encrypted (repeatable; default *.bin; '*' = every file)", func(s string) error {
		if _, err := filepath.Match(s, ""); err != nil || s == "" {
			return fmt.Errorf("bad glob %q", s)
		}
		c.protect = append(c.protect, s)
		return nil
	})
	f.Func("protect-temp", "`pattern` PREFIX{}SUFFIX of the temporaries of protected names ({} = a protected name, SUFFIX a glob), encrypted from their first byte like protected files (repeatable; replaces the default set: "+strings.Join(fs.DefaultTempPatterns, " ")+")", func(s string) error {
		if err := fs.ParseTempPattern(s); err != nil {
			return err
		}
		c.protectTemps = append(c.protectTemps, s)
		return nil
	})
	f.BoolVar(&c.noProtectTemps, "no-protect-temps", false, "no temporaries of protected names: only protected names are encrypted from the first byte (an atomic save is then encrypted after its rename)")
	f.BoolVar(&c.noEncryptAfterLogin, "no-encrypt-after-login", false, "do not encrypt after the next login the protected files written while logged out (nor keep their record in auth/)")
	f.BoolVar(&c.requireEncryption, "require-encryption", false, "while logged in, a plaintext file under a protected name is an error (EIO, logged), never served or written as plaintext: for stores that finished encrypt_existing_files")
	f.StringVar(&c.logFormat, "log-format", "text", "log `format`: text or json")
	f.StringVar(&c.logLevel, "log-level", "info", "log `level`: debug, info, warn, error")
	f.BoolVar(&c.allowOther, "allow-other", false, "let other users use the mount (the kernel then enforces file permissions)")
	f.StringVar(&c.tokenFile, "token-file", "", "require 'Authorization: Bearer <token>' on every control call; the token is read from this `file` (mode 0600, owned by root or the daemon's user), which is created with a random token if missing")
	f.Var(uidListFlag{&c.allowUIDs}, "allow-uid", "a `user` (uid or name), besides root and the daemon's own, who may log in, log out and change anything over the control plane (repeatable)")
	f.UintVar(&c.kdfTime, "kdf-time", uint(crypto.DefaultKDFParams.Time), "Argon2id passes for a new password (first login, passwd)")
	f.UintVar(&c.kdfMiB, "kdf-memory", uint(crypto.DefaultKDFParams.MemoryKiB/1024), "Argon2id memory in `MiB` for a new password")
	f.UintVar(&c.kdfThreads, "kdf-threads", uint(crypto.DefaultKDFParams.Threads), "Argon2id parallelism for a new password")
	f.DurationVar(&c.leaseTTL, "lease-ttl", datadir.DefaultLeaseTTL, "how long the data directory's lease (auth/lease: one daemon across hosts) lasts unless renewed; it is renewed every third of it, and a daemon that cannot renew it in time stops")
	c.lock.flags(f)
	return c
}

// validate checks every flag and fills in the derived fields. It creates
// nothing.
func (c *serveConfig) validate() error {
	if c.kdfTime > 1<<20 || c.kdfMiB > 1<<20 || c.kdfThreads > 255 {
		return usageError{fmt.Errorf("KDF parameters out of range")}
	}
	c.kdf = crypto.KDFParams{Time: uint32(c.kdfTime), MemoryKiB: uint32(c.kdfMiB * 1024), Threads: uint8(c.kdfThreads)}
	if err := c.kdf.Validate(); err != nil {
		return usageError{fmt.Errorf("--kdf-*: %w", err)}
	}
	if c.protect == nil {
		c.protect = fs.DefaultProtect
	}
	if c.noProtectTemps {
		if c.protectTemps != nil {
			return usageError{fmt.Errorf("--protect-temp and --no-protect-temps exclude each other")}
		}
		c.protectTemps = []string{}
	}
	if err := c.lock.validate(); err != nil {
		return err
	}
	if c.leaseTTL < 3*time.Second || c.leaseTTL > 24*time.Hour {
		return usageError{fmt.Errorf("--lease-ttl %v: want between 3s and 24h", c.leaseTTL)}
	}
	if c.logFormat != "text" && c.logFormat != "json" {
		return usageError{fmt.Errorf("--log-format %q: want text or json", c.logFormat)}
	}
	lvl, err := logrus.ParseLevel(c.logLevel)
	if err != nil {
		return usageError{fmt.Errorf("--log-level: %w", err)}
	}
	c.level = lvl
	if path, ok := strings.CutPrefix(c.listen, "unix:"); ok {
		if path == "" {
			return usageError{fmt.Errorf("--listen %q: empty socket path", c.listen)}
		}
	} else if _, _, err := net.SplitHostPort(c.listen); err != nil {
		return usageError{fmt.Errorf("--listen %q: %w", c.listen, err)}
	}
	if err := control.CheckAddr(c.listen, c.tokenFile != ""); err != nil {
		return usageError{fmt.Errorf("--listen: %w", err)}
	}
	if c.tokenFile != "" {
		// An existing token file must be private; a missing one is
		// created later.
		if _, err := readPrivateFile(c.tokenFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	if c.data == "" || c.mount == "" {
		return usageError{fmt.Errorf("--data and --mount must not be empty")}
	}
	if c.data, err = filepath.Abs(c.data); err != nil {
		return err
	}
	if c.mount, err = filepath.Abs(c.mount); err != nil {
		return err
	}
	return checkDisjoint(c.data, c.mount)
}

func newLogger(c *serveConfig, out io.Writer) *logrus.Entry {
	l := logrus.New()
	l.SetOutput(out)
	l.SetLevel(c.level)
	if c.logFormat == "json" {
		l.SetFormatter(&logrus.JSONFormatter{TimestampFormat: time.RFC3339Nano})
	} else {
		l.SetFormatter(&logrus.TextFormatter{FullTimestamp: true, TimestampFormat: time.RFC3339Nano, DisableColors: true})
	}
	return logrus.NewEntry(l)
}

// readOrCreateToken returns the bearer token in path, creating the file
// with a random token when it does not exist. An existing file must be
// private to root or the daemon's user (checkTokenFile).
func readOrCreateToken(path string) ([]byte, error) {
	b, err := readPrivateFile(path)
	if err == nil {
		tok := []byte(strings.TrimSpace(string(b)))
		if len(tok) < 16 {
			return nil, fmt.Errorf("token file %s: token shorter than 16 characters", path)
		}
		return tok, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	var raw [32]byte
	rand.Read(raw[:])
	tok := []byte(hex.EncodeToString(raw[:]))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	_, err = f.Write(append(tok, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return tok, err
}

// prepareData makes sure the data directory exists and is usable, and
// resolves its path. A missing one is created (0700, logged) when --data
// was not given (the default ./Client_Data of a first run) or with
// --create; a --data that names nothing is otherwise refused, since a
// mistyped path would silently start a new, empty store.
func prepareData(c *serveConfig, log *logrus.Entry) error {
	fi, err := os.Stat(c.data)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if c.dataSet && !c.create {
			return fmt.Errorf("data directory %s does not exist; check the path (a mistyped --data would start a new, empty store), "+
				"or add --create to make a new one", c.data)
		}
		if err := os.MkdirAll(c.data, 0o700); err != nil {
			return fmt.Errorf("creating data directory %s: %w", c.data, err)
		}
		log.WithField("data", c.data).Info("created the data directory: a new, empty store")
	case err != nil:
		return fmt.Errorf("data directory %s: %w", c.data, err)
	case !fi.IsDir():
		return fmt.Errorf("data directory %s is not a directory", c.data)
	}
	if err := unix.Access(c.data, unix.R_OK|unix.W_OK|unix.X_OK); err != nil {
		return fmt.Errorf("data directory %s is not readable and writable: %w", c.data, err)
	}
	if c.data, err = filepath.EvalSymlinks(c.data); err != nil {
		return fmt.Errorf("data directory %s: %w", c.data, err)
	}
	return nil
}

// checkDisjoint refuses a mountpoint inside the data directory or the
// other way round.
func checkDisjoint(data, mount string) error {
	if strings.HasPrefix(mount+"/", data+"/") || strings.HasPrefix(data+"/", mount+"/") {
		return usageError{fmt.Errorf("--mount %s and --data %s must not contain each other", mount, data)}
	}
	return nil
}

// serve runs the daemon. The order matters: nothing is created before
// every flag is checked (validate) and what can never work is refused
// (a live mount at --mount); nothing is mounted or removed before this
// process holds the data directory's lock, which it keeps until it exits.
func serve(c *serveConfig, s stdio) error {
	log := newLogger(c, s.err)
	// A signal during start-up stops the daemon once it is up, never
	// half-way (the default action would leave a mount behind).
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	if err := harden(); err != nil {
		log.WithError(err).Warn("could not disable core dumps")
	}
	if path := os.Getenv("MOUNTD_CPUPROFILE"); path != "" {
		// For profiling under a benchmark: a CPU profile until exit.
		stop, err := startCPUProfile(path)
		if err != nil {
			return err
		}
		defer stop()
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		// Keep the daemon's footprint small and flat. Argon2 needs its
		// 64 MiB briefly at login (the limit is soft: the GC just works
		// harder for those 0.2 s); everything else needs a few MiB.
		debug.SetMemoryLimit(defaultMemoryLimit)
	}
	notify, err := newNotifier()
	if err != nil {
		log.WithError(err).Warn("cannot tell systemd about readiness")
	}
	defer notify.close()

	// Refuse a live mount at --mount before creating anything.
	mnt, err := checkMountpoint(mountpointCheck{dir: c.mount, data: c.data, log: log})
	if err != nil {
		return err
	}
	if err := prepareData(c, log); err != nil {
		return err
	}
	if err := checkDisjoint(c.data, mnt); err != nil {
		return err
	}
	// One process per data directory: the offline commands take the same
	// lock and refuse while the daemon holds it.
	// The lease (auth/lease) extends that across hosts sharing a network
	// filesystem; losing it stops the daemon (below).
	lock, err := datadir.AcquireWith(c.data, datadir.Holder{Command: "serve", Mount: mnt, Listen: c.listen},
		datadir.LeaseOptions{TTL: c.leaseTTL})
	if err != nil {
		return err
	}
	defer lock.Release()
	// Holding the lock, look again and act: detach a dead mount of ours,
	// create a missing mountpoint.
	if c.mount, err = checkMountpoint(mountpointCheck{dir: c.mount, data: c.data, locked: true, fix: true, log: log}); err != nil {
		return err
	}
	if removed, err := crypto.RemoveStaleTemps(c.data); err != nil {
		return fmt.Errorf("removing stale verifier temp files: %w", err)
	} else if len(removed) > 0 {
		log.WithField("paths", strings.Join(removed, ",")).Warn("removed verifier temp files left by a crash")
	}
	var token []byte
	if c.tokenFile != "" {
		if token, err = readOrCreateToken(c.tokenFile); err != nil {
			return err
		}
	}

	// With --allow-uid users, a unix socket lets every local user connect
	// and the caller check (SO_PEERCRED) decides.
	sockMode := os.FileMode(0o600)
	if len(c.allowUIDs) > 0 {
		sockMode = 0o666
	}
	ln, err := control.ListenMode(c.listen, sockMode)
	if err != nil {
		return fmt.Errorf("control plane: %w", err)
	}
	defer ln.Close()
	if a, ok := ln.Addr().(*net.TCPAddr); ok {
		// Port 0 becomes the port the kernel chose, for the Host check
		// and what status and the log show.
		c.listen = a.String()
	}

	kr := crypto.NewKeyring()
	if !kr.MemoryLocked() {
		log.Warn("could not mlock the key page; the key may be swapped out")
	}
	kr.OnClear(func() { _ = notify.send(statusLocked) })
	version := readBuildInfo().String()
	d, err := startDaemon(c, kr, log, control.DaemonInfo{
		Version: version, PID: os.Getpid(), DataDir: c.data, Mountpoint: c.mount, Listen: c.listen, StartedAt: time.Now(),
	})
	if err != nil {
		return err
	}
	srv, err := control.New(control.Options{
		Backend:   notifyingBackend{d.backend, notify},
		Log:       log,
		Addr:      c.listen,
		Token:     token,
		AllowUIDs: c.allowUIDs,
	})
	if err != nil {
		d.stop(log)
		return err
	}

	log.WithFields(logrus.Fields{"version": version, "data": c.data, "mount": c.mount, "listen": c.listen,
		"protect": strings.Join(c.protect, ","), "allow_uid": uidListFlag{&c.allowUIDs}.String()}).Info("mountd started")
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ctx, ln) }()
	// The mount is up and the listener accepts (connections queue until
	// Serve takes them): ready.
	if err := notify.send("READY=1", statusLocked, fmt.Sprintf("MAINPID=%d", os.Getpid())); err != nil {
		log.WithError(err).Warn("cannot tell systemd about readiness")
	}

	select {
	case <-ctx.Done():
		log.Info("signal received, shutting down")
		_ = notify.send("STOPPING=1", "STATUS=stopping: clearing the key and unmounting")
		err = <-serveErr
	case err = <-serveErr:
		log.WithError(err).Error("control plane stopped")
		_ = notify.send("STOPPING=1", "STATUS=stopping: the control plane failed")
	case <-lock.Lost():
		// Someone broke the lease (mountd break-lease on another host)
		// or it could not be renewed in time: another daemon may be
		// writing the data directory now. Stop writing at once: the key
		// goes first, then the mount.
		kr.Clear()
		err = lock.Err()
		log.WithError(err).Error("the data directory's lease is lost: clearing the key and unmounting")
		_ = notify.send("STOPPING=1", "STATUS=stopping: the data directory's lease is lost")
		cancel()
		if serr := <-serveErr; serr != nil {
			log.WithError(serr).Debug("control plane stopped")
		}
	case <-d.unmounted:
		err = errors.New("the filesystem was unmounted from outside")
		_ = notify.send("STOPPING=1", "STATUS=stopping: the filesystem was unmounted from outside")
		cancel()
		if serr := <-serveErr; serr != nil {
			log.WithError(serr).Debug("control plane stopped")
		}
	}
	// Stop the migration first, so a running task ends "cancelled"
	// rather than failing on the cleared key, then zero the key (dropping
	// cached plaintext) before unmounting.
	d.migrator.Close()
	kr.Clear()
	d.stop(log)
	log.Info("mountd stopped")
	return err
}

func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/crypto"
	"github.com/mountd/mountd/datadir"
	"github.com/mountd/mountd/fs"
)

// Offline commands work on a data directory with no daemon and no FUSE:
// init, recovery-key, reset-password, info, fsck, export. Each takes the
// data directory's lock (datadir.Acquire), so it refuses to run while a
// daemon, or another offline command, uses the directory. Encrypted files
// are read only through crypto's public API (OpenFile, File.ReadAt, Size,
// HasMagic, ParseHeader, BlockError), never by parsing blocks here, so the
// commands keep working when the content format gains a version.

// offlineOpts are the flags every offline command takes.
type offlineOpts struct {
	data string
}

func offlineFlags(f *flag.FlagSet) *offlineOpts {
	o := &offlineOpts{}
	f.StringVar(&o.data, "data", "./Client_Data", "the data `directory` (the daemon's --data)")
	return o
}

// protectFlag declares --protect on f: the globs whose files should be
// encrypted, as the daemon's --protect.
func protectFlag(f *flag.FlagSet) *protectMatcher {
	p := &protectMatcher{}
	f.Func("protect", "`glob` of base names that should be stored encrypted, as the daemon's --protect (repeatable; default *.bin)", func(s string) error {
		if _, err := filepath.Match(s, ""); err != nil || s == "" {
			return fmt.Errorf("bad glob %q", s)
		}
		*p = append(*p, s)
		return nil
	})
	return p
}

func (p *protectMatcher) orDefault() protectMatcher {
	if len(*p) == 0 {
		return protectMatcher(fs.DefaultProtect)
	}
	return *p
}

// kdfOpts are the Argon2id flags of the commands that write a password.
type kdfOpts struct{ time, mib, threads uint }

func kdfFlags(f *flag.FlagSet) *kdfOpts {
	o := &kdfOpts{}
	f.UintVar(&o.time, "kdf-time", uint(crypto.DefaultKDFParams.Time), "Argon2id passes for the new password")
	f.UintVar(&o.mib, "kdf-memory", uint(crypto.DefaultKDFParams.MemoryKiB/1024), "Argon2id memory in `MiB` for the new password")
	f.UintVar(&o.threads, "kdf-threads", uint(crypto.DefaultKDFParams.Threads), "Argon2id parallelism for the new password")
	return o
}

func (o *kdfOpts) params() (crypto.KDFParams, error) {
	if o.time > 1<<20 || o.mib > 1<<20 || o.threads > 255 {
		return crypto.KDFParams{}, usageError{fmt.Errorf("KDF parameters out of range")}
	}
	p := crypto.KDFParams{Time: uint32(o.time), MemoryKiB: uint32(o.mib * 1024), Threads: uint8(o.threads)}
	if err := p.Validate(); err != nil {
		return p, usageError{fmt.Errorf("--kdf-*: %w", err)}
	}
	return p, nil
}

// dataDir is a data directory opened by an offline command, held under its
// lock.
type dataDir struct {
	path string // absolute
	fd   int    // the directory, O_RDONLY
	lock *datadir.Lock
}

// How an offline command uses the data directory.
type dirMode int

const (
	readOnly dirMode = iota // info, fsck, export: change nothing
	writes                  // recovery-key, reset-password: rewrite the verifier
	creates                 // init: make the directory when missing
)

// openDataDir opens the data directory at p for the offline command named
// command and takes its lock (creates makes the directory, 0700, when
// missing). A read-only command on a directory without auth/ takes no lock
// and creates nothing: no daemon has served it (the daemon's lock lives in
// auth/), and a mistyped --data must not gain an auth/ directory. On a
// read-only filesystem, where no daemon can be writing either, it goes on
// without the lock, saying so on warn.
func openDataDir(p, command string, mode dirMode, warn io.Writer) (*dataDir, error) {
	if p == "" {
		return nil, usageError{errors.New("--data must not be empty")}
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return nil, err
	}
	if mode == creates {
		if err := os.Mkdir(abs, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("data directory %s: %w", abs, err)
		}
	}
	fd, err := unix.Open(abs, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("data directory %s: %w", abs, err)
	}
	d := &dataDir{path: abs, fd: fd}
	if mode == readOnly {
		var st unix.Stat_t
		if err := unix.Fstatat(fd, crypto.VerifierDir, &st, unix.AT_SYMLINK_NOFOLLOW); errors.Is(err, unix.ENOENT) {
			return d, nil
		}
	}
	// A read-only command takes no lease (it would write auth/): it only
	// refuses while another host's daemon holds one.
	d.lock, err = datadir.AcquireWith(abs, datadir.Holder{Command: command}, datadir.LeaseOptions{CheckOnly: mode == readOnly})
	switch {
	case err == nil:
	case errors.Is(err, datadir.ErrHeld):
		unix.Close(fd)
		return nil, fmt.Errorf("%w; stop it first (mountd %s works only on a data directory no daemon serves)", err, command)
	case errors.Is(err, unix.EROFS):
		fmt.Fprintf(warn, "mountd %s: %s is on a read-only filesystem: going on without taking its lock\n", command, abs)
	default:
		unix.Close(fd)
		return nil, err
	}
	return d, nil
}

func (d *dataDir) close() {
	d.lock.Release()
	unix.Close(d.fd)
}

func (d *dataDir) verifierPath() string { return crypto.VerifierPath(d.path) }

// readVerifier reads and parses the verifier like crypto.ReadVerifier,
// without following a symlink and without updating its access time.
func (d *dataDir) readVerifier() (*crypto.Verifier, error) {
	rel := crypto.VerifierDir + "/" + crypto.VerifierName
	fd, err := openBeneath(d.fd, rel, unix.O_RDONLY|noatime(), 0)
	if err == unix.EPERM {
		fd, err = openBeneath(d.fd, rel, unix.O_RDONLY, 0)
	}
	if err != nil {
		perr := &os.PathError{Op: "open", Path: d.verifierPath(), Err: err}
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: %w", crypto.ErrNoVerifier, perr)
		}
		return nil, perr
	}
	f := os.NewFile(uintptr(fd), d.verifierPath())
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return nil, err
	}
	return crypto.ParseVerifier(b)
}

// keyOpts selects the secret that unlocks the master key.
type keyOpts struct {
	secret   *secretOpts
	recovery bool
}

func keyFlags(f *flag.FlagSet) *keyOpts {
	o := &keyOpts{secret: secretFlags(f)}
	f.BoolVar(&o.recovery, "recovery", false, "unlock with the recovery key instead of the password")
	return o
}

// unlock reads the verifier and asks for the password (or, with
// --recovery, the recovery key) until it has a Keyring holding the master
// key. A wrong secret is errDenied.
func (d *dataDir) unlock(s stdio, o *keyOpts) (*crypto.Keyring, *crypto.Verifier, error) {
	v, err := d.readVerifier()
	if err != nil {
		return nil, nil, verifierError(d, err)
	}
	src, err := openSecrets(s, o.secret)
	if err != nil {
		return nil, nil, err
	}
	defer src.close()
	kr := crypto.NewKeyring()
	if o.recovery {
		rk, err := src.next("Recovery key: ")
		if err != nil {
			return nil, nil, err
		}
		err = kr.UnlockRecovery(v, rk)
		clear(rk)
		if err != nil {
			return nil, nil, secretError(err)
		}
		return kr, v, nil
	}
	pw, err := src.next("Password: ")
	if err != nil {
		return nil, nil, err
	}
	err = kr.Unlock(v, pw)
	clear(pw)
	if err != nil {
		return nil, nil, secretError(err)
	}
	return kr, v, nil
}

// verifierError explains a verifier that cannot be read.
func verifierError(d *dataDir, err error) error {
	switch {
	case errors.Is(err, crypto.ErrNoVerifier):
		return fmt.Errorf("%s has no verifier (auth/%s): no password was ever set here (mountd init), or the verifier was lost: restore it from a backup", d.path, crypto.VerifierName)
	case errors.Is(err, crypto.ErrBadVerifier):
		return fmt.Errorf("%s: %w; restore auth/%s from a backup", d.verifierPath(), err, crypto.VerifierName)
	}
	return err
}

// secretError maps a wrong or malformed secret to errDenied (exit 3).
func secretError(err error) error {
	switch {
	case errors.Is(err, crypto.ErrInvalidPassword):
		return fmt.Errorf("%w: wrong password", errDenied)
	case errors.Is(err, crypto.ErrInvalidRecoveryKey):
		return fmt.Errorf("%w: wrong recovery key (it is well-formed, but not this data directory's)", errDenied)
	case errors.Is(err, crypto.ErrBadRecoveryKey):
		return fmt.Errorf("%w: %v", errDenied, strings.TrimPrefix(err.Error(), "crypto: "))
	case errors.Is(err, crypto.ErrNoRecoveryKey):
		return fmt.Errorf("%w: this data directory has no recovery key (mountd recovery-key makes one, with the password)", errDenied)
	}
	return err
}

// anyEncrypted reports the first regular file beneath the data directory
// (auth/ aside) whose content carries the encryption magic.
func (d *dataDir) anyEncrypted() (string, error) {
	var found string
	stop := errors.New("found")
	var walkErr error
	err := walkTree(d.fd, func(rel string, e *entry) error {
		if !e.isRegular() || e.st.Size < crypto.MagicSize {
			return nil
		}
		f, err := openRead(d.fd, rel, &e.st)
		if err != nil {
			return err
		}
		var b [crypto.MagicSize]byte
		n, _ := io.ReadFull(f, b[:])
		f.Close()
		if crypto.HasMagic(b[:n]) {
			found = rel
			return stop
		}
		return nil
	}, func(rel string, err error) {
		if walkErr == nil {
			walkErr = fmt.Errorf("reading %s: %w", rel, err)
		}
	})
	if errors.Is(err, stop) {
		return found, nil
	}
	if err == nil {
		err = walkErr
	}
	return "", err
}

package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/mountd/mountd/crypto"
)

// init, recovery-key and reset-password: creating the password and the
// recovery key, and setting a new password with the recovery key.

var initCmd = &command{
	name:    "init",
	summary: "create the password (and a recovery key, shown once) for a new data directory",
	help: `Creates the data directory when missing, asks for the new password twice (without
echo), writes the verifier auth/verifier.bin and prints a recovery key, once, to
copy by hand and keep offline: with it, mountd reset-password sets a new password
when this one is forgotten. The key goes to stdout alone (so it can be redirected),
the explanations to stderr. With --password-file, or when stdin is not a terminal,
the password is read once, from one line.

Refused when the directory already has a verifier, when encrypted files exist
without one (a new password would create a new key that cannot read them: restore
auth/verifier.bin from a backup instead), and while a daemon serves the directory.`,
	group: groupOffline,
	setup: func(f *flag.FlagSet) runFunc {
		o := offlineFlags(f)
		so := secretFlags(f)
		ko := kdfFlags(f)
		noRecovery := f.Bool("no-recovery-key", false, "make no recovery key: a forgotten password then loses the data")
		return func(s stdio, _ []string) error {
			p, err := ko.params()
			if err != nil {
				return err
			}
			return initDataDir(s, o, so, p, !*noRecovery)
		}
	},
}

func initDataDir(s stdio, o *offlineOpts, so *secretOpts, p crypto.KDFParams, withRecovery bool) error {
	d, err := openDataDir(o.data, "init", creates, s.err)
	if err != nil {
		return err
	}
	defer d.close()
	if _, err := os.Lstat(d.verifierPath()); err == nil {
		return fmt.Errorf("%s already has a password (auth/%s): change it with mountd passwd, set a new one with mountd reset-password, make a recovery key with mountd recovery-key", d.path, crypto.VerifierName)
	}
	if rel, err := d.anyEncrypted(); err != nil {
		return err
	} else if rel != "" {
		return fmt.Errorf("%s holds encrypted files (%s, ...) but no verifier: a new password would make a new key that cannot read them; restore auth/%s from a backup", d.path, quotePath(rel), crypto.VerifierName)
	}
	src, err := openSecrets(s, so)
	if err != nil {
		return err
	}
	defer src.close()
	pw, err := src.newPassword("New password: ", "Repeat the new password: ")
	if err != nil {
		return err
	}
	defer clear(pw)
	if err := fitsAPI(pw); err != nil {
		return err
	}
	rk, err := crypto.CreateVerifier(d.verifierPath(), pw, p, withRecovery)
	if err != nil {
		return err
	}
	defer clear(rk)
	fmt.Fprintf(s.err, "Password created for %s.\n", quotePath(d.path))
	if !withRecovery {
		fmt.Fprintf(s.err, "No recovery key was made: if the password is forgotten, the data is lost (mountd recovery-key makes one).\n")
		return nil
	}
	return showRecoveryKey(s, rk, false)
}

// showRecoveryKey prints the key alone on stdout and the notice on stderr.
func showRecoveryKey(s stdio, rk []byte, replaced bool) error {
	fmt.Fprintf(s.err, `
RECOVERY KEY - shown only this once. Copy it by hand or print it, check it, and
store it offline, away from this machine and its backups. Anyone who has it can
set a new password and read every file. Without it, a forgotten password means
the data is lost. (A typo in it is detected: mountd says which group is wrong.)

`)
	// Written as is: fmt would leave a copy in its pooled buffer.
	line := append(append(secretAlloc(len(rk) + 1)[:0], rk...), '\n')
	_, err := s.out.Write(line)
	clear(line)
	if err != nil {
		return fmt.Errorf("printing the recovery key: %w (make a new one with mountd recovery-key)", err)
	}
	fmt.Fprintln(s.err)
	if replaced {
		fmt.Fprintf(s.err, "It replaces the previous recovery key, which no longer works.\n")
	}
	return nil
}

// fitsAPI refuses a password too long to log in with through the control
// API (whose request bodies are at most 64 KiB).
func fitsAPI(pw []byte) error {
	body := jsonObject("password", pw)
	defer clear(body)
	if len(body) > 64<<10 {
		return fmt.Errorf("the password is too long: logging in with it would need a %d-byte request, over the API's 64 KiB", len(body))
	}
	return nil
}

var recoveryKeyCmd = &command{
	name:    "recovery-key",
	summary: "make a new recovery key (replacing any previous one); needs the password",
	help: `Asks for the password, then writes a new recovery slot into the verifier and prints
the new recovery key once (stdout; explanations on stderr). A previous recovery
key stops working. Works on the data directory with the daemon stopped.`,
	group: groupOffline,
	setup: func(f *flag.FlagSet) runFunc {
		o := offlineFlags(f)
		so := secretFlags(f)
		return func(s stdio, _ []string) error {
			d, err := openDataDir(o.data, "recovery-key", writes, s.err)
			if err != nil {
				return err
			}
			defer d.close()
			v, err := crypto.ReadVerifier(d.verifierPath())
			if err != nil {
				return verifierError(d, err)
			}
			src, err := openSecrets(s, so)
			if err != nil {
				return err
			}
			defer src.close()
			pw, err := src.next("Password: ")
			if err != nil {
				return err
			}
			rk, err := crypto.SetRecoveryKey(d.verifierPath(), pw)
			clear(pw)
			if err != nil {
				return secretError(err)
			}
			defer clear(rk)
			return showRecoveryKey(s, rk, v.Recovery)
		}
	},
}

var resetPasswordCmd = &command{
	name:    "reset-password",
	summary: "set a new password with the recovery key, when the password is forgotten",
	help: `Asks for the recovery key, then the new password twice, and rewraps the master
key under the new password; no file is re-encrypted, the recovery key stays valid.
With --password-file, or when stdin is not a terminal, reads the recovery key and
the new password, one per line.

By default it works on --data with the daemon stopped. With --addr it asks the
running daemon instead (POST /api/system/reset_password); the key in memory is
left as it is either way.`,
	group: groupOffline,
	setup: func(f *flag.FlagSet) runFunc {
		o := offlineFlags(f)
		so := secretFlags(f)
		ko := kdfFlags(f)
		co := clientFlags(f)
		return func(s stdio, _ []string) error {
			p, err := ko.params()
			if err != nil {
				return err
			}
			online := false
			f.Visit(func(fl *flag.Flag) { online = online || fl.Name == "addr" })
			if online {
				return resetOnline(s, co, so)
			}
			return resetOffline(s, o, so, p)
		}
	},
}

// readRecoveryKey asks for the recovery key and checks its form (and, with
// check, that it opens v), asking again on a terminal after a typo.
func readRecoveryKey(s stdio, src *secretSource, check func(rk []byte) error) ([]byte, error) {
	for try := 0; ; try++ {
		rk, err := src.next("Recovery key: ")
		if err != nil {
			return nil, err
		}
		err = check(rk)
		if err == nil {
			return rk, nil
		}
		clear(rk)
		if !src.interactive() || try == 2 || !errors.Is(err, crypto.ErrBadRecoveryKey) {
			return nil, secretError(err)
		}
		fmt.Fprintf(s.err, "%v\n", errText(err))
	}
}

func resetOffline(s stdio, o *offlineOpts, so *secretOpts, p crypto.KDFParams) error {
	d, err := openDataDir(o.data, "reset-password", writes, s.err)
	if err != nil {
		return err
	}
	defer d.close()
	v, err := crypto.ReadVerifier(d.verifierPath())
	if err != nil {
		return verifierError(d, err)
	}
	if !v.Recovery {
		return secretError(crypto.ErrNoRecoveryKey)
	}
	src, err := openSecrets(s, so)
	if err != nil {
		return err
	}
	defer src.close()
	// The key is checked before the new password is asked for.
	rk, err := readRecoveryKey(s, src, func(rk []byte) error {
		kr := crypto.NewKeyring()
		defer kr.Clear()
		return kr.UnlockRecovery(v, rk)
	})
	if err != nil {
		return err
	}
	defer clear(rk)
	pw, err := src.newPassword("New password: ", "Repeat the new password: ")
	if err != nil {
		return err
	}
	defer clear(pw)
	if err := fitsAPI(pw); err != nil {
		return err
	}
	if err := crypto.ResetPassword(d.verifierPath(), rk, pw, p); err != nil {
		return secretError(err)
	}
	fmt.Fprintf(s.out, "Password reset for %s. The recovery key stays valid.\n", quotePath(d.path))
	return nil
}

func resetOnline(s stdio, co *clientOpts, so *secretOpts) error {
	c, err := co.client()
	if err != nil {
		return err
	}
	src, err := openSecrets(s, so)
	if err != nil {
		return err
	}
	defer src.close()
	rk, err := readRecoveryKey(s, src, func(rk []byte) error {
		buf := secretAlloc(crypto.RecoveryKeySize)
		defer clear(buf)
		return crypto.ParseRecoveryKey(buf, rk)
	})
	if err != nil {
		return err
	}
	defer clear(rk)
	pw, err := src.newPassword("New password: ", "Repeat the new password: ")
	if err != nil {
		return err
	}
	defer clear(pw)
	r, _, err := c.callSecret("/api/system/reset_password", jsonObject("recovery_key", rk, "new_password", pw))
	if err != nil {
		return err
	}
	fmt.Fprintln(s.out, r.Message)
	return nil
}

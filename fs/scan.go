package fs

import (
	"context"
	"errors"
	iofs "io/fs"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/crypto"
)

// Scanning the backing directory directly (not through the mount), for
// the control plane's status and the first-login check.

// Scan counts the regular files under a protected name by their content:
// encrypted ones carry the crypto magic, the others are plaintext. It
// skips auth/ and the temp files of in-place conversions, and does not
// follow symlinks.
func (r *Root) Scan(ctx context.Context) (encrypted, plaintext int, err error) {
	err = r.walk(ctx, func(rel, name string) (bool, error) {
		if !r.protected(name) {
			return true, nil
		}
		enc, err := r.hasMagic(rel)
		if err != nil {
			return false, err
		}
		if enc {
			encrypted++
		} else {
			plaintext++
		}
		return true, nil
	})
	return encrypted, plaintext, err
}

// AnyEncrypted reports whether any regular file under the backing
// directory, outside auth/, carries the crypto magic.
func (r *Root) AnyEncrypted(ctx context.Context) (bool, error) {
	found := false
	err := r.walk(ctx, func(rel, name string) (bool, error) {
		enc, err := r.hasMagic(rel)
		if err != nil {
			return false, err
		}
		found = enc
		return !enc, nil
	})
	return found, err
}

var errStopWalk = errors.New("stop walk")

// walk calls fn for every regular file below the backing root except
// auth/ and conversion temp files; fn returns false to stop.
func (r *Root) walk(ctx context.Context, fn func(rel, name string) (bool, error)) error {
	err := filepath.WalkDir(r.backing, func(path string, d iofs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, iofs.ErrNotExist) {
				return nil // removed while we walked
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, rerr := filepath.Rel(r.backing, path)
		if rerr != nil {
			return rerr
		}
		if d.IsDir() {
			if rel == reservedDir {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() || strings.HasPrefix(d.Name(), tempPrefix) {
			return nil
		}
		more, err := fn(rel, d.Name())
		if err != nil {
			return err
		}
		if !more {
			return errStopWalk
		}
		return nil
	})
	if errors.Is(err, errStopWalk) {
		return nil
	}
	return err
}

// hasMagic reports whether the backing file rel starts with the magic.
func (r *Root) hasMagic(rel string) (bool, error) {
	fd, err := r.openNoatime(rel, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		if err == unix.ENOENT || err == unix.ELOOP {
			return false, nil // gone, or replaced by a symlink
		}
		return false, err
	}
	defer unix.Close(fd)
	var b [crypto.MagicSize]byte
	m, err := preadFull(fd, b[:], 0)
	if err != nil {
		return false, err
	}
	return crypto.HasMagic(b[:m]), nil
}

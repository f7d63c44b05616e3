package fs

import (
	"context"
	"fmt"
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
	err = r.walkFiles(ctx, func(dir int, name string) (bool, error) {
		if !r.protected(name) {
			return true, nil
		}
		enc, err := hasMagicAt(dir, name)
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
	err := r.walkFiles(ctx, func(dir int, name string) (bool, error) {
		enc, err := hasMagicAt(dir, name)
		if err != nil {
			return false, err
		}
		found = enc
		return !enc, nil
	})
	return found, err
}

// walkFiles calls fn for every regular file below the backing root
// except auth/ and conversion temp files (walkTree); fn returns false to
// stop. A directory that cannot be read stops the walk with its error.
func (r *Root) walkFiles(ctx context.Context, fn func(dir int, name string) (bool, error)) error {
	return walkTree(ctx, r.rootFd, func(e walkEntry) error {
		if e.typ != unix.S_IFREG || strings.HasPrefix(e.name, tempPrefix) {
			return nil
		}
		more, err := fn(e.dir, e.name)
		if err != nil {
			return err
		}
		if !more {
			return errStopWalk
		}
		return nil
	}, func(rel string, err error) error {
		if err == unix.ENOENT {
			return nil // removed while we walked
		}
		return fmt.Errorf("fs: scan %s: %w", rel, err)
	})
}

// readMagic reports whether the file open as fd starts with the magic.
func readMagic(fd int) (bool, error) {
	var b [crypto.MagicSize]byte
	m, err := preadFull(fd, b[:], 0)
	if err != nil {
		return false, err
	}
	return crypto.HasMagic(b[:m]), nil
}

package fs

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/crypto"
	"github.com/mountd/mountd/logkey"
)

// Scanning the backing directory directly (not through the mount), for
// the control plane's status, the first-login check, the migration's
// count (WalkProtected) and the stale-temp cleanup at start.

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

// Candidate is a file with a protected name that WalkProtected found:
// what converting it would meet, as of the walk.
type Candidate struct {
	Rel  string     // path from the backing root
	Size int64      // backing size (0 when skipped)
	Skip SkipReason // NotSkipped: to convert; else why not
	// Upgrade: a candidate encrypted in content format version 1 (not
	// plaintext), to rewrite in the current one.
	Upgrade bool
}

// WalkProtected walks the backing tree (walkTree: name order, auth/ and
// conversions' temp files left out, no symlink followed) and calls found
// for every entry with a protected name that is not a directory, with
// what a conversion would meet: not a regular file, hard links, empty,
// already in the current format, or a candidate with its (plaintext)
// size: plaintext, or a version 1 file to upgrade (candidateAt). An entry that vanishes
// meanwhile is not reported. A directory below the root that cannot be
// read is passed to unreadable (nil goes on); the root's error ends the
// walk.
func (r *Root) WalkProtected(ctx context.Context, found func(Candidate) error, unreadable func(rel string, err error) error) error {
	return walkTree(ctx, r.rootFd, func(e walkEntry) error {
		if e.typ == unix.S_IFDIR || strings.HasPrefix(e.name, tempPrefix) || !r.protected(e.name) {
			return nil
		}
		c := Candidate{Rel: e.rel}
		if e.typ != unix.S_IFREG {
			c.Skip = SkipNotRegular
			return found(c)
		}
		var x unix.Statx_t
		switch err := statAt(e.dir, e.name, &x); {
		case err == unix.ENOENT:
			return nil
		case err != nil:
			// A candidate: the conversion reports the error.
		case !isReg(&x):
			c.Skip = SkipNotRegular
		case x.Nlink > 1:
			c.Skip = SkipHardLinks
			if enc, err := hasMagicAt(e.dir, e.name); err == nil && enc {
				// Encrypted, not plaintext left behind (one in
				// version 1 is not upgraded: its other names would
				// keep the old file).
				c.Skip = SkipEncrypted
			}
		case x.Size == 0:
			c.Skip = SkipEmpty
		default:
			c.Skip, c.Size, c.Upgrade = candidateAt(e.dir, e.name, int64(x.Size))
		}
		return found(c)
	}, func(rel string, err error) error {
		if rel == "" {
			return err // the backing directory itself
		}
		if err == unix.ENOENT {
			return nil // removed while we walked
		}
		return unreadable(rel, err)
	})
}

// isStaleTemp reports whether name is one of the conversions' temp files:
// the prefix and 16 lowercase hex digits.
func isStaleTemp(name string) bool {
	h, ok := strings.CutPrefix(name, tempPrefix)
	if !ok || len(h) != 16 {
		return false
	}
	for _, c := range h {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// RemoveStaleTemps deletes the temp files that in-place encryption leaves
// behind when mountd is killed in the middle of a file: a regular file
// named .mountd-tmp-<16 hex digits> anywhere under backing except auth/.
// Such a file holds either the encrypted copy not yet renamed into place
// (the original is still whole) or the old plaintext just replaced by its
// encrypted copy; neither is needed. Call it before mounting, while no
// conversion can run. It logs each file it removes and returns how many.
func RemoveStaleTemps(backing string, log *logrus.Entry) (int, error) {
	if log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		log = logrus.NewEntry(l)
	}
	log = log.WithField(logkey.Component, "fs")
	removed := 0
	err := removeTempsBelow(context.Background(), backing, func(rel string) {
		removed++
		log.WithField(logkey.Path, rel).Info("removed stale temp file of an interrupted encryption")
	}, func(rel string, err error) {
		log.WithField(logkey.Path, rel).WithError(err).Warn("cannot look for or remove stale temp files here")
	})
	if removed > 0 {
		log.WithField(logkey.Files, logkey.Count(removed)).Info("removed stale temp files")
	}
	return removed, err
}

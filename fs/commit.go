package fs

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/logkey"
)

// The commit of a conversion: putting the checked, durable encrypted copy
// (a temp file beside the original) in the original's place, in one of
// two ways. docs/FORMAT.md ("Conversion in place") has the crash argument
// of both.
//
// Exchange (local filesystems): renameat2(RENAME_EXCHANGE) swaps the two
// names in one step; the temp name then holds what was at the name, which
// must be the original (else it is swapped back), and is removed. At no
// moment is anything but a whole file at the name.
//
// Rename (filesystems without RENAME_EXCHANGE: sshfs, and the Linux NFS,
// CephFS and SMB clients, which reject renameat2 flags with EINVAL): the
// original is checked, then rename(2) puts the copy over it. The name
// always holds a whole file, old or new, and a temp file never holds the
// only copy of anything (the copy is redundant until the rename, and gone
// after it), so recovery deletes every temp file (RemoveStaleTemps).
// What an exchange catches after the fact, a rename must prevent: a file
// renamed onto the name, a hard link made to it, or its unlink, through
// the mount, between the check and the rename, would be lost or undone.
// So those three operations take names shared (nameChange), and the
// check and the rename happen under names held exclusively. Changes made
// in the backing directory itself, not through the mount, in the moment
// between the check and the rename are not seen (docs/SECURITY.md).
//
// Which way a filesystem allows is learned once per device: the first
// exchange that fails with EINVAL (or ENOTSUP, ENOSYS) marks the device,
// and that conversion and all later ones on it rename.

// commitStep names the points of a commit where tests simulate a crash.
type commitStep uint8

const (
	stepChecked   commitStep = iota + 1 // the original checked; nothing renamed yet
	stepExchanged                       // exchange: the copy in place, the old plaintext at the temp name
	stepRemoved                         // exchange: the old plaintext removed; directory not yet synced
	stepRenamed                         // rename: the copy in place; directory not yet synced
)

// errCrashed: a test's crash hook stopped the commit at a step; the
// Conversion is abandoned as a killed process would leave it.
var errCrashed = errors.New("fs: simulated crash")

// commitCaps is what the commits of a Root know about the filesystems
// under it, and the lock that keeps names still during a rename commit.
type commitCaps struct {
	mu         sync.Mutex
	noExchange map[uint64]bool // devices without RENAME_EXCHANGE

	// names is taken shared by unlink, rename and link through the mount
	// around their one backing call, and exclusively by a rename commit
	// around its check and rename. Nothing is taken under it.
	names sync.RWMutex

	// Tests (set before the first conversion): forceRename makes every
	// commit rename; crash, if it returns true at a step, stops the
	// commit there (errCrashed); nameWait runs when a name change is
	// about to take names.
	forceRename bool
	crash       func(rel string, s commitStep) bool
	nameWait    func()
	failUndo    bool // the exchange that gives back a file put in place fails
}

// exchangeWorks reports whether commits on device dev may exchange.
func (cc *commitCaps) exchangeWorks(dev uint64) bool {
	if cc.forceRename {
		return false
	}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return !cc.noExchange[dev]
}

// markNoExchange records that device dev has no RENAME_EXCHANGE and
// reports whether that is news.
func (cc *commitCaps) markNoExchange(dev uint64) bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.noExchange[dev] {
		return false
	}
	if cc.noExchange == nil {
		cc.noExchange = map[uint64]bool{}
	}
	cc.noExchange[dev] = true
	return true
}

// exchangeUnsupported reports whether err, from renameat2 with
// RENAME_EXCHANGE on two regular files of one directory, means that the
// filesystem does not offer the flag (and nothing was renamed).
func exchangeUnsupported(err error) bool {
	return err == unix.EINVAL || err == unix.ENOTSUP || err == unix.ENOSYS
}

// nameChange runs fn, one backing call that removes, replaces or adds a
// name (unlink, rename, link through the mount), so that it never falls
// between a rename commit's check and its rename.
func (r *Root) nameChange(fn func() error) error {
	cc := &r.conv.caps
	if cc.nameWait != nil {
		cc.nameWait()
	}
	cc.names.RLock()
	defer cc.names.RUnlock()
	return fn()
}

// crashAt reports whether a test's crash hook stops the commit at s.
func (c *Conversion) crashAt(s commitStep) bool {
	h := c.r.conv.caps.crash
	return h != nil && h(c.rel, s)
}

// commit is the renaming part of Commit. On success the temp file is gone
// (or holds the old plaintext, handed to o.KeepOld) and c.tmp is nil.
func (c *Conversion) commit(o CommitOptions) Outcome {
	cc := &c.r.conv.caps
	dev := unix.Mkdev(c.sx.Dev_major, c.sx.Dev_minor)
	if cc.exchangeWorks(dev) {
		out, unsupported := c.exchange(o)
		if !unsupported {
			return out
		}
		if cc.markNoExchange(dev) {
			c.r.log.WithField(logkey.Path, c.rel).
				Info("the backing filesystem has no RENAME_EXCHANGE: conversions on it commit with rename (docs/OPERATIONS.md)")
		}
	}
	out := c.rename()
	if !out.Done() || o.NoDirSync {
		return out
	}
	return failed(unix.Fsync(c.dirfd))
}

// unchanged checks that the name still holds the original as it was
// copied: the claim kept the mount out; this catches changes made in the
// backing directory itself.
func (c *Conversion) unchanged() Outcome {
	var now unix.Statx_t
	if err := statAt(c.dirfd, c.base, &now); err != nil {
		if err == unix.ENOENT {
			return skipped(SkipGone)
		}
		return failed(err)
	}
	sx := &c.sx
	if now.Ino != sx.Ino || now.Dev_major != sx.Dev_major || now.Dev_minor != sx.Dev_minor ||
		now.Size != sx.Size || now.Mtime != sx.Mtime || now.Ctime != sx.Ctime || now.Nlink != 1 {
		return failed(ErrChanged)
	}
	return Outcome{}
}

// exchange commits with RENAME_EXCHANGE. unsupported reports that the
// filesystem refused the flag: nothing changed, commit by rename.
func (c *Conversion) exchange(o CommitOptions) (out Outcome, unsupported bool) {
	dirfd, base, tmpName := c.dirfd, c.base, c.tmpName
	if out := c.unchanged(); !out.Done() {
		return out, false
	}
	if c.crashAt(stepChecked) {
		return failed(errCrashed), false
	}
	// Swap, and make sure what we swapped out is what we copied.
	if err := renameAt(dirfd, tmpName, dirfd, base, unix.RENAME_EXCHANGE); err != nil {
		return failed(err), exchangeUnsupported(err)
	}
	var old unix.Statx_t
	if err := statAt(dirfd, tmpName, &old); err != nil || old.Ino != c.sx.Ino {
		// Someone put another file at base meanwhile: give it back.
		var xerr error = unix.EIO
		if !c.r.conv.caps.failUndo {
			xerr = renameAt(dirfd, tmpName, dirfd, base, unix.RENAME_EXCHANGE)
		}
		if xerr != nil {
			c.tmp.Close()
			c.tmp = nil // tmp now holds someone's file; never delete it
			// Nor may the start-up recovery, which deletes every temp
			// file: give it a name of its own.
			keep := base + ".mountd-conflict-" + strings.TrimPrefix(tmpName, tempPrefix)
			if rerr := renameAt(dirfd, tmpName, dirfd, keep, unix.RENAME_NOREPLACE); rerr == nil {
				c.r.log.WithField(logkey.Path, filepath.Join(filepath.Dir(c.rel), keep)).
					Warn("a file put in place of one being encrypted could not be put back: kept under this name")
			}
			return failed(fmt.Errorf("fs: convert: cannot undo exchange of %s: %w", base, xerr)), false
		}
		return failed(ErrChanged), false
	}
	// tmpName now names the old plaintext: remove it before the directory
	// is synced, so the removal lasts with the exchange (with KeepOld, the
	// caller removes it later; a crash in between leaves a temp file for
	// RemoveStaleTemps).
	c.swapped = true
	c.tmp.Close()
	c.tmp = nil
	if c.crashAt(stepExchanged) {
		return failed(errCrashed), false
	}
	if o.KeepOld != nil {
		o.KeepOld(filepath.Join(filepath.Dir(c.rel), tmpName))
	} else if err := unlinkAt(dirfd, tmpName, 0); err != nil {
		c.r.log.WithField(logkey.Path, tmpName).WithError(err).Warn("cannot remove the plaintext left by a conversion")
	}
	if c.crashAt(stepRemoved) {
		return failed(errCrashed), false
	}
	if o.NoDirSync {
		return Outcome{}, false
	}
	return failed(unix.Fsync(dirfd)), false
}

// rename commits with rename(2), under names held exclusively: the
// original checked, then the copy renamed over it.
func (c *Conversion) rename() Outcome {
	var tx unix.Statx_t
	if err := fstatx(int(c.tmp.Fd()), &tx); err != nil {
		return failed(err)
	}
	names := &c.r.conv.caps.names
	names.Lock()
	defer names.Unlock()
	if out := c.unchanged(); !out.Done() {
		return out
	}
	if c.crashAt(stepChecked) {
		return failed(errCrashed)
	}
	// A network filesystem's client may hide a file that is open
	// instead of replacing it (sshfs renames it away first, leaving the
	// name empty for a moment): close the original first. Its inode
	// number is the server's to give, not the next local create's.
	c.closeSrc()
	err := renameAt(c.dirfd, c.tmpName, c.dirfd, c.base, 0)
	if err == unix.ENOENT && c.copyAt(&tx) {
		// NFS: a retransmitted RENAME whose first transmission was
		// done: the copy is at the name.
		err = nil
	}
	if err != nil {
		return failed(err)
	}
	c.swapped = true
	c.tmp.Close()
	c.tmp = nil
	if c.crashAt(stepRenamed) {
		return failed(errCrashed)
	}
	return Outcome{}
}

// copyAt reports whether the name holds the copy whose attributes are tx.
func (c *Conversion) copyAt(tx *unix.Statx_t) bool {
	var now unix.Statx_t
	return statAt(c.dirfd, c.base, &now) == nil && now.Ino == tx.Ino &&
		now.Dev_major == tx.Dev_major && now.Dev_minor == tx.Dev_minor && now.Size == tx.Size
}

// abandon leaves the Conversion as a killed process would: the temp file
// stays where it is; descriptors are closed and the claim dropped.
func (c *Conversion) abandon() {
	if c.tmp != nil {
		c.tmp.Close()
		c.tmp = nil
	}
	c.done()
}

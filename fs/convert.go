package fs

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/crypto"
	"github.com/mountd/mountd/logkey"
)

// In-place encryption of a plaintext backing file, or re-encryption of a
// file in content format version 1 into the current version (an
// upgrade: decrypted with the key, written and checked the same way), in
// two halves:
// PrepareConversion writes and checks an encrypted copy beside the file
// while holding the inode's claim (openfile.go), and Conversion.Commit
// puts it in place once it is durable. The background converter below
// uses both at once for atomic saves (a plaintext file renamed onto a
// protected name while the key is set); package migrate prepares many
// copies, makes them durable with one syncfs, and commits them.

var (
	// ErrBusy: the file is open through the mount (or being converted);
	// try again later.
	ErrBusy = errors.New("fs: file is in use")
	// ErrChanged: the file changed while it was being copied; try again
	// later.
	ErrChanged = errors.New("fs: file changed during conversion")
	// ErrNoSyncFS: syncfs would not make the copies durable on this
	// filesystem; fsync each one (Conversion.Sync).
	ErrNoSyncFS = errors.New("fs: syncfs does not reach this filesystem's storage")
)

// SkipReason says why a file is not to be converted.
type SkipReason uint8

// Reasons to skip a file.
const (
	NotSkipped     SkipReason = iota
	SkipGone                  // removed or renamed before its turn
	SkipNotRegular            // a directory, symlink, FIFO, socket or device
	SkipHardLinks             // nlink > 1: the other names would keep the plaintext
	SkipEmpty                 // nothing to encrypt yet; encrypted on its first write
	SkipEncrypted             // already carries the crypto magic
	SkipOther                 // a conversion's temp file, or under auth/
	// SkipDamaged: a version 1 file with a block that fails
	// authentication or a cut end (upgrading it would turn the EIO of
	// the damaged range into rewritten data), or an encrypted file whose
	// magic is damaged (classifyHeader). It is left untouched.
	SkipDamaged
	SkipOtherKey // a version 1 file encrypted under another master key
)

// Outcome is how preparing or committing a conversion ended: done (the
// zero Outcome), skipped (Skip says why), or not done (Err; Retry says
// whether to try again later). Never both Skip and Err.
type Outcome struct {
	Skip SkipReason
	Err  error
}

// Done reports whether the step succeeded.
func (o Outcome) Done() bool { return o.Skip == NotSkipped && o.Err == nil }

// Retry reports whether the file was busy or changed: it may convert
// later.
func (o Outcome) Retry() bool { return errors.Is(o.Err, ErrBusy) || errors.Is(o.Err, ErrChanged) }

func skipped(r SkipReason) Outcome { return Outcome{Skip: r} }
func failed(err error) Outcome     { return Outcome{Err: err} }

// convertChunk is the copy unit: one maximal FUSE request.
const convertChunk = 1 << 20

var chunkPool = sync.Pool{New: func() any { b := make([]byte, 2*convertChunk); return &b }}

// PrepareOptions tune PrepareConversion.
type PrepareOptions struct {
	// Progress, if set, is called with the bytes copied or verified since
	// its last call (each byte of the file counts twice: copy, verify).
	Progress func(n int64)

	// upgradeOnly: only a version 1 file is converted; anything else
	// (plaintext put at the name meanwhile) is skipped (SkipOther).
	upgradeOnly bool
}

// CommitOptions tune Conversion.Commit.
type CommitOptions struct {
	// Quiet logs a converted file at Debug instead of Info.
	Quiet bool
	// NoDirSync skips the fsync of the directory after the exchange; the
	// caller fsyncs it later (SyncDir, once for many files). Each file is
	// whole after a crash either way; only the exchange may not last.
	NoDirSync bool
	// KeepOld, if set, is given the name of the old plaintext (a temp
	// file name, relative to the backing root) to remove later
	// (RemoveTemp), instead of removing it before the directory fsync.
	KeepOld func(rel string)
	// DeferNotify, if set, is given the kernel notification (the name
	// now holds another inode) instead of Commit making it: the caller
	// runs it once it holds no claim at all, e.g. after committing a
	// whole batch of prepared conversions (doc.go).
	DeferNotify func(notify func())
}

// encryptInPlace replaces the plaintext regular file at rel (relative to
// the backing root) with an encrypted copy, atomically: the copy is
// written to an exclusive 0600 temp file beside it, checked, given the
// original's owner, mode, xattrs and times, fsynced, and put in the
// original's place (commit.go: exchanged with it, or, where the
// filesystem cannot exchange, renamed over it after a check under the
// names lock); then the directory is fsynced and the kernel told to look
// the name up again. Outcomes as
// PrepareConversion and Commit. It needs the key (crypto.ErrLocked
// otherwise) and must not be called from a FUSE handler.
func (r *Root) encryptInPlace(ctx context.Context, rel string) Outcome {
	return r.convertInPlace(ctx, rel, PrepareOptions{})
}

// convertInPlace is encryptInPlace with options.
func (r *Root) convertInPlace(ctx context.Context, rel string, po PrepareOptions) Outcome {
	c, o := r.PrepareConversion(ctx, rel, po)
	if c == nil {
		return o
	}
	if err := c.Sync(); err != nil {
		return failed(err)
	}
	return c.Commit(CommitOptions{})
}

// Conversion is a file whose encrypted copy is written, checked and given
// the original's attributes, but not yet durable nor in place: the state
// between PrepareConversion and Commit or Abort. It holds the inode's
// claim, so opens through the mount wait until it is committed or
// aborted: commit or abort it soon, and never wait for a request of the
// mount meanwhile.
type Conversion struct {
	r       *Root
	rel     string
	dirfd   int
	base    string
	src     int // the original, open until the claim is dropped (-1 if not)
	tmpName string
	tmp     *os.File
	sx      unix.Statx_t
	drop    func() // drops the claim
	swapped bool   // the copy is in place
	upgrade bool   // the original is a version 1 file under the key
}

// PrepareConversion does the first half of encryptInPlace: checks, claim,
// copy, verification, attributes. It returns the Conversion to make
// durable and commit or abort, with a zero Outcome; or nil and why not:
// skipped, when rel is not a candidate (missing, not a regular file, a
// hard link, empty, already in the current format, a damaged version 1
// file or one under another key, a temp file, under auth/); ErrBusy
// while the file is open through the mount; ErrChanged if it changed
// during the copy; crypto.ErrLocked without the key; the context's error;
// or what failed.
func (r *Root) PrepareConversion(ctx context.Context, rel string, o PrepareOptions) (*Conversion, Outcome) {
	rel = filepath.Clean(rel)
	if rel == "." || filepath.IsAbs(rel) || rel == ".." || strings.HasPrefix(rel, "../") {
		return nil, failed(fmt.Errorf("fs: convert: bad path %q", rel))
	}
	if first, _, _ := strings.Cut(rel, "/"); first == reservedDir {
		return nil, skipped(SkipOther)
	}
	dirRel, base := filepath.Split(rel)
	if dirRel == "" {
		dirRel = "."
	}
	if strings.HasPrefix(base, tempPrefix) {
		return nil, skipped(SkipOther)
	}
	if !r.kr.IsSet() {
		return nil, failed(crypto.ErrLocked)
	}

	dirfd, err := r.openDirRel(filepath.Clean(dirRel))
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			return nil, skipped(SkipGone)
		}
		return nil, failed(err)
	}
	c := &Conversion{r: r, rel: rel, dirfd: dirfd, base: base, src: -1}
	ok := false
	defer func() {
		if !ok {
			c.Abort()
		}
	}()

	// Only a regular file is opened (a FIFO or device swapped in under
	// the name is not).
	sx := &c.sx
	src, err := openRegularAt(dirfd, base, unix.O_RDONLY|unix.O_NONBLOCK, sx)
	switch {
	case err == unix.ENOENT:
		return nil, skipped(SkipGone)
	case err == unix.ELOOP || err == unix.EISDIR || err == unix.ENXIO:
		return nil, skipped(SkipNotRegular)
	case err != nil:
		return nil, failed(err)
	}
	// Open until the claim is dropped: the claimed inode then stays
	// allocated, so no file created meanwhile can get its number and
	// wait in acquire for a claim that is not its own (doc.go).
	c.src = src
	switch {
	case sx.Nlink == 0:
		return nil, skipped(SkipGone)
	case sx.Nlink > 1:
		if enc, err := readMagic(src); err == nil && enc {
			return nil, skipped(SkipEncrypted) // as WalkProtected says
		}
		return nil, skipped(SkipHardLinks)
	case sx.Size == 0:
		return nil, skipped(SkipEmpty)
	}
	if skip, err := c.classify(src); err != nil {
		return nil, failed(err)
	} else if skip != NotSkipped {
		return nil, skipped(skip)
	} else if o.upgradeOnly && !c.upgrade {
		return nil, skipped(SkipOther)
	}

	// Claim the inode: fail if it has handles, make opens wait.
	drop, claimed := r.claim(keyOf(sx))
	if !claimed {
		return nil, failed(ErrBusy)
	}
	c.drop = drop

	if err := c.writeCopy(ctx, src, o); err != nil {
		if c.upgrade && (errors.Is(err, crypto.ErrUnauthenticated) || errors.Is(err, crypto.ErrBadSize)) {
			if c.srcChanged() {
				// Not damaged: changed in the backing directory
				// while it was read.
				return nil, failed(ErrChanged)
			}
			return nil, skipped(SkipDamaged)
		}
		return nil, failed(err)
	}
	ok = true
	return c, Outcome{}
}

// classify reads the header of src, the original (c.sx its attributes):
// plaintext is converted; a version 1 file under the key is upgraded
// (c.upgrade) unless its end is cut; anything else with the magic, and an
// encrypted file whose magic is damaged, is skipped.
func (c *Conversion) classify(src int) (SkipReason, error) {
	var b [crypto.HeaderSize]byte
	m, err := preadFull(src, b[:], 0)
	if err != nil {
		return NotSkipped, err
	}
	if !crypto.HasMagic(b[:m]) {
		if kid := c.r.keyID(); kid != nil && damagedMagic(b[:m], *kid) {
			return SkipDamaged, nil
		}
		return NotSkipped, nil
	}
	h, err := crypto.ParseHeader(b[:m])
	if err != nil || h.Version != 1 {
		return SkipEncrypted, nil
	}
	kid, err := c.r.kr.KeyID()
	switch {
	case err != nil:
		return NotSkipped, err
	case h.KeyID != kid:
		return SkipOtherKey, nil
	case h.SizeDamaged(int64(c.sx.Size)):
		return SkipDamaged, nil
	}
	c.upgrade = true
	return NotSkipped, nil
}

// candidateAt tells, from its header, whether the regular file name in
// dir, of backing size size, is a candidate for conversion, and its
// plaintext size: a file in the current format is skipped, a version 1
// file is a candidate to upgrade (PrepareConversion skips it if it is
// under another key or damaged), anything else is plaintext. An error
// leaves it a plaintext candidate: the conversion reports it.
func candidateAt(dir int, name string, size int64) (skip SkipReason, plain int64, upgrade bool) {
	var x unix.Statx_t
	fd, err := openRegularAt(dir, name, unix.O_RDONLY|unix.O_NONBLOCK, &x)
	if err != nil {
		return NotSkipped, size, false
	}
	defer unix.Close(fd)
	var b [crypto.HeaderSize]byte
	m, err := preadFull(fd, b[:], 0)
	if err != nil || !crypto.HasMagic(b[:m]) {
		return NotSkipped, size, false
	}
	if h, err := crypto.ParseHeader(b[:m]); err == nil && h.Version == 1 {
		p, _ := h.PlainSize(size)
		return NotSkipped, p, true
	}
	return SkipEncrypted, 0, false
}

// srcChanged reports whether the original is no longer as it was opened.
func (c *Conversion) srcChanged() bool {
	var now unix.Statx_t
	return fstatx(c.src, &now) != nil || now.Size != c.sx.Size || now.Mtime != c.sx.Mtime || now.Ctime != c.sx.Ctime
}

// Upgrade reports whether the conversion re-encrypts a version 1 file
// (else it encrypts a plaintext one).
func (c *Conversion) Upgrade() bool { return c.upgrade }

// fdBacking reads the original of an upgrade through its descriptor,
// which the Conversion owns; it is never written.
type fdBacking int

func (b fdBacking) ReadAt(p []byte, off int64) (int, error) {
	n, err := preadFull(int(b), p, off)
	if err == nil && n < len(p) {
		err = io.EOF
	}
	return n, err
}
func (b fdBacking) WriteAt([]byte, int64) (int, error) { return 0, unix.EBADF }
func (b fdBacking) Truncate(int64) error               { return unix.EBADF }
func (b fdBacking) Stat() (os.FileInfo, error)         { return nil, unix.EBADF } // Fd is used
func (b fdBacking) Fd() uintptr                        { return uintptr(b) }

// source returns how to read the plaintext of src, the original, and its
// size: the file itself, or for an upgrade its decryption (a damaged
// block fails with a crypto.BlockError).
func (c *Conversion) source(src int) (read func(p []byte, off int64) (int, error), size int64, err error) {
	if !c.upgrade {
		return func(p []byte, off int64) (int, error) { return preadFull(src, p, off) }, int64(c.sx.Size), nil
	}
	old, err := crypto.OpenFile(c.r.kr, fdBacking(src))
	if err != nil {
		return nil, 0, err
	}
	if old.Header().Version != 1 {
		return nil, 0, ErrChanged // rewritten since classify read it
	}
	size, err = old.Header().PlainSize(int64(c.sx.Size))
	if err != nil {
		return nil, 0, err
	}
	return func(p []byte, off int64) (int, error) {
		n, err := old.ReadAt(p, off)
		if errors.Is(err, io.EOF) {
			err = nil
		}
		return n, err
	}, size, nil
}

// Rel returns the path of the file, relative to the backing root.
func (c *Conversion) Rel() string { return c.rel }

// SyncFS makes every write of the filesystem that holds the copy
// durable (syncfs): one call for many prepared conversions. It reports
// write-back errors of the whole filesystem; Sync then tells which copy
// is at fault. On a filesystem whose syncfs does not reach its server
// (FUSE: sshfs; SMB) it does nothing and returns ErrNoSyncFS: Sync each
// copy instead.
func (c *Conversion) SyncFS() error {
	if !syncfsDurable(c.dirfd) {
		return ErrNoSyncFS
	}
	return unix.Syncfs(c.dirfd)
}

// Sync makes the copy durable (fsync). On failure it aborts the
// conversion: the original stays as it was.
func (c *Conversion) Sync() error {
	if err := c.tmp.Sync(); err != nil {
		c.Abort()
		return err
	}
	return nil
}

// writeCopy writes and checks the encrypted copy of src into a new temp
// file and gives it the original's attributes. Busy-like failures wrap
// ErrChanged.
func (c *Conversion) writeCopy(ctx context.Context, src int, o PrepareOptions) error {
	read, size, err := c.source(src)
	if err != nil {
		return err
	}
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return err
	}
	tmpName := tempPrefix + hex.EncodeToString(rnd[:])
	tfd, err := createAt(c.dirfd, tmpName, unix.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	c.tmpName, c.tmp = tmpName, os.NewFile(uintptr(tfd), tmpName)

	cf, err := c.r.createCrypt(c.tmp)
	if err != nil {
		return err
	}
	bp := chunkPool.Get().(*[]byte)
	buf, vbuf := (*bp)[:convertChunk], (*bp)[convertChunk:]
	sx := &c.sx
	defer func() {
		// Both halves held the file's plaintext: zero what was used before
		// the buffer goes back to the pool.
		used := min(size, convertChunk)
		clear(buf[:used])
		clear(vbuf[:used])
		chunkPool.Put(bp)
	}()

	// Copy.
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return err
		}
		m, err := read(buf[:min(int64(len(buf)), size-off)], off)
		if err != nil {
			return err
		}
		if m == 0 {
			return ErrChanged
		}
		if _, err := cf.WriteAt(buf[:m], off); err != nil {
			return err
		}
		off += int64(m)
		if o.Progress != nil {
			o.Progress(int64(m))
		}
	}
	// Check the copy decrypts to the original.
	for off := int64(0); off < size; {
		want := min(int64(len(buf)), size-off)
		m, err := read(buf[:want], off)
		if err != nil {
			return err
		}
		k, err := cf.ReadAt(vbuf[:want], off)
		if err != nil && !(errors.Is(err, io.EOF) && int64(k) == want) {
			return err
		}
		if int64(m) != want || !bytes.Equal(buf[:m], vbuf[:k]) {
			return ErrChanged
		}
		off += want
		if o.Progress != nil {
			o.Progress(want)
		}
	}

	// Owner, mode, xattrs, times.
	if err := unix.Fchown(tfd, int(sx.Uid), int(sx.Gid)); err != nil && os.Getuid() == 0 {
		return err
	}
	if err := unix.Fchmod(tfd, uint32(sx.Mode)&0o7777); err != nil {
		return err
	}
	copyXattrs(src, tfd)
	ts := [2]unix.Timespec{
		{Sec: sx.Atime.Sec, Nsec: int64(sx.Atime.Nsec)},
		{Sec: sx.Mtime.Sec, Nsec: int64(sx.Mtime.Nsec)},
	}
	return futimens(tfd, &ts)
}

// Abort removes the temp file and drops the claim, leaving the original
// as it was. It may be called more than once.
func (c *Conversion) Abort() {
	if c.tmp != nil {
		c.tmp.Close()
		_ = unlinkAt(c.dirfd, c.tmpName, 0)
		c.tmp = nil
	}
	c.done()
}

// closeSrc closes the original.
func (c *Conversion) closeSrc() {
	if c.src >= 0 {
		unix.Close(c.src)
		c.src = -1
	}
}

// done drops the claim and closes the original and the directory.
func (c *Conversion) done() {
	if c.drop != nil {
		c.drop()
		c.drop = nil
	}
	c.closeSrc()
	if c.dirfd >= 0 {
		unix.Close(c.dirfd)
		c.dirfd = -1
	}
}

// Commit puts the copy in place once it is durable (Sync or SyncFS): it
// checks the original did not change since PrepareConversion, puts the
// copy in its place (commit.go: an exchange, or a rename where the
// filesystem has no RENAME_EXCHANGE), removes the old plaintext (or hands
// it to o.KeepOld), fsyncs the directory (unless o.NoDirSync), drops the
// claim, and then tells the kernel the name was replaced. The Conversion
// is finished either way. The outcome is done, skipped (SkipGone: the
// file went away), ErrChanged (changed in the backing directory
// meanwhile), or what failed.
func (c *Conversion) Commit(o CommitOptions) Outcome {
	out := c.commit(o)
	r := c.r
	swapped := c.swapped
	if swapped {
		r.replaced()
	}
	switch {
	case errors.Is(out.Err, errCrashed):
		c.abandon()
	case out.Done():
		c.done()
	default:
		c.Abort()
	}
	// Only now, with the claim dropped (doc.go: no kernel notification
	// under a claim): the kernel takes the directory's lock to drop the
	// entry, and a create in that directory may hold it while it waits
	// in acquire for the claim (its new file can get the inode number of
	// the plaintext just removed).
	if swapped {
		if o.DeferNotify != nil {
			rel := c.rel
			o.DeferNotify(func() { r.notifyReplaced(rel) })
		} else {
			r.notifyReplaced(c.rel)
		}
	}
	if !out.Done() {
		return out
	}
	msg := "encrypted file in place"
	if c.upgrade {
		msg = "upgraded encrypted file to the current content format in place"
	}
	if o.Quiet {
		r.log.WithField(logkey.Path, c.rel).Debug(msg)
	} else {
		r.log.WithField(logkey.Path, c.rel).Info(msg)
	}
	return out
}

// copyXattrs copies the extended attributes of src to dst, best effort.
func copyXattrs(src, dst int) {
	sz, err := unix.Flistxattr(src, nil)
	if err != nil || sz <= 0 {
		return
	}
	names := make([]byte, sz)
	sz, err = unix.Flistxattr(src, names)
	if err != nil {
		return
	}
	for _, name := range strings.Split(string(names[:sz]), "\x00") {
		if name == "" {
			continue
		}
		vsz, err := unix.Fgetxattr(src, name, nil)
		if err != nil {
			continue
		}
		val := make([]byte, vsz)
		if vsz, err = unix.Fgetxattr(src, name, val); err != nil {
			continue
		}
		_ = unix.Fsetxattr(dst, name, val[:vsz], 0)
	}
}

// notifyReplaced tells the kernel that the name rel now points at another
// inode, so it looks it up again. It must run with no filesystem lock held
// and outside any FUSE handler.
func (r *Root) notifyReplaced(rel string) {
	parts := strings.Split(rel, "/")
	parent := r.EmbeddedInode()
	for _, p := range parts[:len(parts)-1] {
		if parent = parent.GetChild(p); parent == nil {
			return
		}
	}
	name := parts[len(parts)-1]
	if ch := parent.GetChild(name); ch != nil {
		if cn := nodeOf(ch); cn != nil {
			cn.invalidateClass()
		}
	}
	_ = parent.NotifyEntry(name)
}

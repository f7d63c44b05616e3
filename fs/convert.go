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
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/crypto"
)

// In-place encryption of a plaintext backing file. The background
// converter below uses it for atomic saves (a plaintext file renamed onto
// a protected name while the key is set); the migration task reuses it.

// convertResult says what encryptInPlace did.
type convertResult int

const (
	convDone    convertResult = iota // the file is now encrypted
	convSkipped                      // not a candidate: see the error-free reasons in encryptInPlace
	convBusy                         // open through the mount, or changed meanwhile: try again later
)

var (
	// errBusy: the file is open through the mount (or being converted).
	errBusy = errors.New("fs: file is in use")
	// errChanged: the file changed while it was being copied.
	errChanged = errors.New("fs: file changed during conversion")
)

// convertChunk is the copy unit: one maximal FUSE request.
const convertChunk = 1 << 20

var chunkPool = sync.Pool{New: func() any { b := make([]byte, 2*convertChunk); return &b }}

// encryptInPlace replaces the plaintext regular file at rel (relative to
// the backing root) with an encrypted copy, atomically: the copy is
// written to an exclusive 0600 temp file beside it, checked, given the
// original's owner, mode, xattrs and times, fsynced, and exchanged with
// the original (renameat2 RENAME_EXCHANGE, so a file that replaced the
// original meanwhile is never clobbered); then the directory is fsynced
// and the kernel told to look the name up again.
//
// It skips (convSkipped, nil) what is not a candidate: missing, not a
// regular file, a hard link (nlink > 1: the other names would keep the
// plaintext), empty, already carrying the magic, a temp file, or under
// auth/. It returns convBusy with errBusy while the file is open through
// the mount (no open can start during the conversion), and with
// errChanged if the file was modified during the copy. It needs the key
// (crypto.ErrLocked otherwise) and must not be called from a FUSE handler.
func (r *Root) encryptInPlace(ctx context.Context, rel string) (convertResult, error) {
	return r.convertInPlace(ctx, rel, convertOpts{})
}

// convertOpts tune encryptInPlace for the migration task (migrate.go).
type convertOpts struct {
	// progress, if set, is called with the bytes copied or verified since
	// its last call (each byte of the file counts twice: copy, verify).
	progress func(n int64)
	// quiet logs a converted file at Debug instead of Info.
	quiet bool
	// noDirSync skips the fsync of the directory after the rename; the
	// caller fsyncs it later (once for many files). Each file is whole
	// after a crash either way; only the rename may not have lasted.
	noDirSync bool
	// keepOld, if set, is given the name of the old plaintext (relative
	// to the backing root; a temp file name) to remove later, instead of
	// removing it before the directory fsync (see remover in migrate.go).
	keepOld func(rel string)
}

// convertInPlace is encryptInPlace with options.
func (r *Root) convertInPlace(ctx context.Context, rel string, o convertOpts) (convertResult, error) {
	p, res, err := r.prepareConvert(ctx, rel, o)
	if p == nil {
		return res, err
	}
	if err := p.tmp.Sync(); err != nil {
		p.abort()
		return convSkipped, err
	}
	return p.commit(o)
}

// pendingConv is a file whose encrypted copy is written, checked and
// given the original's attributes, but not yet fsynced nor exchanged: the
// state between prepareConvert and commit or abort. It holds the inode's
// claim, so opens through the mount wait until it is committed or
// aborted. The migration task commits many at once after one syncfs.
type pendingConv struct {
	r       *Root
	rel     string
	dirfd   int
	base    string
	tmpName string
	tmp     *os.File
	sx      unix.Statx_t
	release func() // drops the claim
	swapped bool   // the copy is in place
}

// prepareConvert does the first half of encryptInPlace: checks, claim,
// copy, verification, attributes. It returns a pendingConv to commit or
// abort, or nil with what encryptInPlace would return.
func (r *Root) prepareConvert(ctx context.Context, rel string, o convertOpts) (*pendingConv, convertResult, error) {
	rel = filepath.Clean(rel)
	if rel == "." || filepath.IsAbs(rel) || rel == ".." || strings.HasPrefix(rel, "../") {
		return nil, convSkipped, fmt.Errorf("fs: encryptInPlace: bad path %q", rel)
	}
	if first, _, _ := strings.Cut(rel, "/"); first == reservedDir {
		return nil, convSkipped, nil
	}
	dirRel, base := filepath.Split(rel)
	if dirRel == "" {
		dirRel = "."
	}
	if strings.HasPrefix(base, tempPrefix) {
		return nil, convSkipped, nil
	}
	if !r.kr.IsSet() {
		return nil, convBusy, crypto.ErrLocked
	}

	dirfd, err := r.openDirRel(filepath.Clean(dirRel))
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			return nil, convSkipped, nil
		}
		return nil, convSkipped, err
	}
	p := &pendingConv{r: r, rel: rel, dirfd: dirfd, base: base}
	ok := false
	defer func() {
		if !ok {
			p.abort()
		}
	}()

	// Only a regular file is opened (a FIFO or device swapped in under
	// the name is not).
	sx := &p.sx
	src, err := openRegularAt(dirfd, base, unix.O_RDONLY|unix.O_NONBLOCK, sx)
	if err != nil {
		if err == unix.ENOENT || err == unix.ELOOP || err == unix.EISDIR || err == unix.ENXIO {
			return nil, convSkipped, nil
		}
		return nil, convSkipped, err
	}
	defer unix.Close(src)
	if sx.Nlink != 1 || sx.Size == 0 {
		return nil, convSkipped, nil
	}
	var magic [crypto.MagicSize]byte
	if m, err := preadFull(src, magic[:], 0); err != nil {
		return nil, convSkipped, err
	} else if crypto.HasMagic(magic[:m]) {
		return nil, convSkipped, nil
	}

	// Claim the inode: fail if it has handles, make opens wait.
	drop, claimed := r.claim(keyOf(sx))
	if !claimed {
		return nil, convBusy, errBusy
	}
	p.release = drop

	if res, err := p.writeCopy(ctx, src, o); err != nil {
		return nil, res, err
	}
	ok = true
	return p, convDone, nil
}

// writeCopy writes and checks the encrypted copy of src into a new temp
// file and gives it the original's attributes.
func (p *pendingConv) writeCopy(ctx context.Context, src int, o convertOpts) (convertResult, error) {
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return convSkipped, err
	}
	tmpName := tempPrefix + hex.EncodeToString(rnd[:])
	tfd, err := createAt(p.dirfd, tmpName, unix.O_RDWR, 0o600)
	if err != nil {
		return convSkipped, err
	}
	p.tmpName, p.tmp = tmpName, os.NewFile(uintptr(tfd), tmpName)

	cf, err := crypto.CreateFile(p.r.kr, p.tmp)
	if err != nil {
		return convBusy, err
	}
	bp := chunkPool.Get().(*[]byte)
	defer chunkPool.Put(bp)
	buf, vbuf := (*bp)[:convertChunk], (*bp)[convertChunk:]
	sx := &p.sx
	size := int64(sx.Size)

	// Copy.
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return convBusy, err
		}
		m, err := preadFull(src, buf[:min(int64(len(buf)), size-off)], off)
		if err != nil {
			return convSkipped, err
		}
		if m == 0 {
			return convBusy, errChanged
		}
		if _, err := cf.WriteAt(buf[:m], off); err != nil {
			return convBusy, err
		}
		off += int64(m)
		if o.progress != nil {
			o.progress(int64(m))
		}
	}
	// Check the copy decrypts to the original.
	for off := int64(0); off < size; {
		want := min(int64(len(buf)), size-off)
		m, err := preadFull(src, buf[:want], off)
		if err != nil {
			return convSkipped, err
		}
		k, err := cf.ReadAt(vbuf[:want], off)
		if err != nil && !(errors.Is(err, io.EOF) && int64(k) == want) {
			return convBusy, err
		}
		if int64(m) != want || !bytes.Equal(buf[:m], vbuf[:k]) {
			return convBusy, errChanged
		}
		off += want
		if o.progress != nil {
			o.progress(want)
		}
	}

	// Owner, mode, xattrs, times.
	if err := unix.Fchown(tfd, int(sx.Uid), int(sx.Gid)); err != nil && os.Getuid() == 0 {
		return convSkipped, err
	}
	if err := unix.Fchmod(tfd, uint32(sx.Mode)&0o7777); err != nil {
		return convSkipped, err
	}
	copyXattrs(src, tfd)
	ts := [2]unix.Timespec{
		{Sec: sx.Atime.Sec, Nsec: int64(sx.Atime.Nsec)},
		{Sec: sx.Mtime.Sec, Nsec: int64(sx.Mtime.Nsec)},
	}
	if err := futimens(tfd, &ts); err != nil {
		return convSkipped, err
	}
	return convDone, nil
}

// abort removes the temp file and drops the claim, leaving the original
// as it was.
func (p *pendingConv) abort() {
	if p.tmp != nil {
		p.tmp.Close()
		_ = unlinkAt(p.dirfd, p.tmpName, 0)
		p.tmp = nil
	}
	p.done()
}

// done drops the claim and closes the directory.
func (p *pendingConv) done() {
	if p.release != nil {
		p.release()
		p.release = nil
	}
	if p.dirfd >= 0 {
		unix.Close(p.dirfd)
		p.dirfd = -1
	}
}

// commit puts the copy in place once it is durable (the caller fsynced or
// syncfs'ed it): it checks the original did not change since
// prepareConvert, exchanges the two, removes the old plaintext, fsyncs
// the directory (unless o.noDirSync) and tells the kernel. It always
// releases p.
func (p *pendingConv) commit(o convertOpts) (convertResult, error) {
	res, err := p.exchange(o)
	r := p.r
	swapped := p.swapped
	if swapped {
		r.replaced()
	}
	if err != nil || res != convDone {
		p.abort()
	} else {
		p.done()
	}
	// Only now, with the claim dropped (doc.go: no kernel notification
	// under a claim): the kernel takes the directory's lock to drop the
	// entry, and a create in that directory may hold it while it waits
	// in acquire for the claim (its new file can get the inode number of
	// the plaintext just removed).
	if swapped {
		r.notifyReplaced(p.rel)
	}
	if err != nil || res != convDone {
		return res, err
	}
	if o.quiet {
		r.log.WithField(fieldPath, p.rel).Debug("encrypted file in place")
	} else {
		r.log.WithField(fieldPath, p.rel).Info("encrypted file in place")
	}
	return convDone, nil
}

// exchange is the renaming part of commit. On success the temp file is
// gone and p.tmp is nil.

func (p *pendingConv) exchange(o convertOpts) (convertResult, error) {
	dirfd, base, tmpName, sx := p.dirfd, p.base, p.tmpName, &p.sx
	// Unchanged since we started? The claim kept the mount out; this
	// catches changes made in the backing directory itself.
	var now unix.Statx_t
	if err := statAt(dirfd, base, &now); err != nil {
		if err == unix.ENOENT {
			return convSkipped, nil
		}
		return convSkipped, err
	}
	if now.Ino != sx.Ino || now.Dev_major != sx.Dev_major || now.Dev_minor != sx.Dev_minor ||
		now.Size != sx.Size || now.Mtime != sx.Mtime || now.Ctime != sx.Ctime || now.Nlink != 1 {
		return convBusy, errChanged
	}

	// Swap, and make sure what we swapped out is what we copied.
	if err := renameAt(dirfd, tmpName, dirfd, base, unix.RENAME_EXCHANGE); err != nil {
		return convSkipped, err
	}
	var old unix.Statx_t
	if err := statAt(dirfd, tmpName, &old); err != nil || old.Ino != sx.Ino {
		// Someone put another file at base meanwhile: give it back.
		if xerr := renameAt(dirfd, tmpName, dirfd, base, unix.RENAME_EXCHANGE); xerr != nil {
			p.tmp.Close()
			p.tmp = nil // tmp now holds someone's file; never delete it
			return convSkipped, fmt.Errorf("fs: encryptInPlace: cannot undo exchange of %s: %w", base, xerr)
		}
		return convBusy, errChanged
	}
	// tmpName now names the old plaintext: remove it before the directory
	// is synced, so the removal lasts with the exchange (with keepOld, the
	// caller removes it later; a crash in between leaves a temp file for
	// RemoveStaleTemps).
	p.swapped = true
	p.tmp.Close()
	p.tmp = nil
	if o.keepOld != nil {
		o.keepOld(filepath.Join(filepath.Dir(p.rel), tmpName))
	} else if err := unlinkAt(dirfd, tmpName, 0); err != nil {
		p.r.log.WithField(fieldPath, tmpName).WithError(err).Warn("cannot remove the plaintext left by a conversion")
	}
	if o.noDirSync {
		return convDone, nil
	}
	if err := unix.Fsync(dirfd); err != nil {
		return convSkipped, err
	}
	return convDone, nil
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

// converter encrypts atomic saves in the background: rel paths queued by
// Rename are retried while they are open through the mount or the key is
// cleared, until they are converted or maxAge passes.
type converter struct {
	r      *Root
	retry  time.Duration
	maxAge time.Duration

	mu      sync.Mutex
	pending map[string]*convItem
	active  int

	kick   chan struct{}
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

type convItem struct {
	first, next time.Time
}

// convertDelay is the wait before the first attempt: a saving program
// usually closes its file right after the rename.
const convertDelay = 20 * time.Millisecond

func newConverter(r *Root, retry, maxAge time.Duration) *converter {
	if retry <= 0 {
		retry = 500 * time.Millisecond
	}
	if maxAge <= 0 {
		maxAge = 10 * time.Minute
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &converter{
		r:       r,
		retry:   retry,
		maxAge:  maxAge,
		pending: map[string]*convItem{},
		kick:    make(chan struct{}, 1),
		ctx:     ctx,
		cancel:  cancel,
		done:    make(chan struct{}),
	}
	go c.run()
	return c
}

// enqueue schedules rel for encryption.
func (c *converter) enqueue(rel string) {
	now := time.Now()
	c.mu.Lock()
	if it := c.pending[rel]; it != nil {
		it.next = now.Add(convertDelay)
	} else {
		c.pending[rel] = &convItem{first: now, next: now.Add(convertDelay)}
	}
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

func (c *converter) close() {
	c.cancel()
	<-c.done
}

func (c *converter) run() {
	defer close(c.done)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-c.kick:
		case <-timer.C:
		}
		wait := c.pass()
		timer.Reset(wait)
	}
}

// pass tries every due item once and returns the time until the next one
// is due.
func (c *converter) pass() time.Duration {
	now := time.Now()
	c.mu.Lock()
	var due []string
	for rel, it := range c.pending {
		if !it.next.After(now) {
			due = append(due, rel)
		}
	}
	c.active = len(due)
	c.mu.Unlock()
	sort.Strings(due)

	for _, rel := range due {
		if c.ctx.Err() != nil {
			break
		}
		_, err := c.r.encryptInPlace(c.ctx, rel)
		c.mu.Lock()
		it := c.pending[rel]
		switch {
		case it == nil:
		case err == nil:
			delete(c.pending, rel)
		case errors.Is(err, errBusy), errors.Is(err, errChanged), errors.Is(err, crypto.ErrLocked):
			if time.Since(it.first) > c.maxAge {
				delete(c.pending, rel)
				c.r.log.WithField(fieldPath, rel).WithError(err).Warn("gave up encrypting atomic save; it stays plaintext")
			} else if !it.next.After(now) {
				it.next = time.Now().Add(c.retry)
			}
		default:
			delete(c.pending, rel)
			c.r.log.WithField(fieldPath, rel).WithError(err).Warn("cannot encrypt atomic save; it stays plaintext")
		}
		c.active--
		c.mu.Unlock()
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	wait := time.Hour
	for _, it := range c.pending {
		wait = min(wait, time.Until(it.next))
	}
	return max(wait, time.Millisecond)
}

// idle reports whether nothing is queued or in progress.
func (c *converter) idle() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending) == 0 && c.active == 0
}

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

	"mountd/crypto"
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
}

// convertInPlace is encryptInPlace with options.
func (r *Root) convertInPlace(ctx context.Context, rel string, o convertOpts) (convertResult, error) {
	rel = filepath.Clean(rel)
	if rel == "." || filepath.IsAbs(rel) || rel == ".." || strings.HasPrefix(rel, "../") {
		return convSkipped, fmt.Errorf("fs: encryptInPlace: bad path %q", rel)
	}
	if first, _, _ := strings.Cut(rel, "/"); first == reservedDir {
		return convSkipped, nil
	}
	dirRel, base := filepath.Split(rel)
	if dirRel == "" {
		dirRel = "."
	}
	if strings.HasPrefix(base, tempPrefix) {
		return convSkipped, nil
	}
	if !r.kr.IsSet() {
		return convBusy, crypto.ErrLocked
	}

	dirfd, err := r.openRel(filepath.Clean(dirRel), unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			return convSkipped, nil
		}
		return convSkipped, err
	}
	defer unix.Close(dirfd)

	// O_NONBLOCK: a FIFO swapped in under the name must not block us.
	src, err := unix.Openat(dirfd, base, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK|unix.O_NOATIME, 0)
	if err == unix.EPERM {
		src, err = unix.Openat(dirfd, base, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	}
	if err != nil {
		if err == unix.ENOENT || err == unix.ELOOP {
			return convSkipped, nil
		}
		return convSkipped, err
	}
	defer unix.Close(src)
	var sx unix.Statx_t
	if err := fstatx(src, &sx); err != nil {
		return convSkipped, err
	}
	if !isReg(&sx) || sx.Nlink != 1 || sx.Size == 0 {
		return convSkipped, nil
	}
	var magic [crypto.MagicSize]byte
	if m, err := preadFull(src, magic[:], 0); err != nil {
		return convSkipped, err
	} else if crypto.HasMagic(magic[:m]) {
		return convSkipped, nil
	}

	// Claim the inode: fail if it has handles, make opens wait.
	key := keyOf(&sx)
	r.tableMu.Lock()
	if r.table[key] != nil {
		r.tableMu.Unlock()
		return convBusy, errBusy
	}
	claim := &inodeState{key: key, fd: -1, converting: true}
	r.table[key] = claim
	r.tableMu.Unlock()
	defer func() {
		r.tableMu.Lock()
		if r.table[key] == claim {
			delete(r.table, key)
		}
		r.tableCond.Broadcast()
		r.tableMu.Unlock()
	}()

	res, err := r.replaceEncrypted(ctx, dirfd, base, src, &sx, o)
	if err != nil {
		return res, err
	}
	r.convSeq.Add(1)
	r.notifyReplaced(rel)
	if o.quiet {
		r.log.WithField(fieldPath, rel).Debug("encrypted file in place")
	} else {
		r.log.WithField(fieldPath, rel).Info("encrypted file in place")
	}
	return convDone, nil
}

// replaceEncrypted does the copy and the exchange for encryptInPlace.
func (r *Root) replaceEncrypted(ctx context.Context, dirfd int, base string, src int, sx *unix.Statx_t, o convertOpts) (convertResult, error) {
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return convSkipped, err
	}
	tmpName := tempPrefix + hex.EncodeToString(rnd[:])
	tfd, err := unix.Openat(dirfd, tmpName, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return convSkipped, err
	}
	tmp := os.NewFile(uintptr(tfd), tmpName)
	keep := false
	defer func() {
		tmp.Close()
		if !keep {
			_ = unix.Unlinkat(dirfd, tmpName, 0)
		}
	}()

	cf, err := crypto.CreateFile(r.kr, tmp)
	if err != nil {
		return convBusy, err
	}
	bp := chunkPool.Get().(*[]byte)
	defer chunkPool.Put(bp)
	buf, vbuf := (*bp)[:convertChunk], (*bp)[convertChunk:]
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
	if err := tmp.Sync(); err != nil {
		return convSkipped, err
	}

	// Unchanged since we started?
	var now unix.Statx_t
	if err := fstatx(src, &now); err != nil {
		return convSkipped, err
	}
	if now.Size != sx.Size || now.Mtime != sx.Mtime || now.Ctime != sx.Ctime || now.Nlink != 1 {
		return convBusy, errChanged
	}

	// Swap, and make sure what we swapped out is what we copied.
	if err := unix.Renameat2(dirfd, tmpName, dirfd, base, unix.RENAME_EXCHANGE); err != nil {
		return convSkipped, err
	}
	var old unix.Statx_t
	if err := unix.Statx(dirfd, tmpName, unix.AT_SYMLINK_NOFOLLOW, statxMask, &old); err != nil || old.Ino != sx.Ino {
		// Someone put another file at base meanwhile: give it back.
		if xerr := unix.Renameat2(dirfd, tmpName, dirfd, base, unix.RENAME_EXCHANGE); xerr != nil {
			keep = true // tmp now holds someone's file; never delete it
			return convSkipped, fmt.Errorf("fs: encryptInPlace: cannot undo exchange of %s: %w", base, xerr)
		}
		return convBusy, errChanged
	}
	// tmpName now names the old plaintext: remove it before the directory
	// is synced, so the removal lasts with the exchange.
	keep = true
	if err := unix.Unlinkat(dirfd, tmpName, 0); err != nil {
		r.log.WithField(fieldPath, tmpName).WithError(err).Warn("cannot remove the plaintext left by a conversion")
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

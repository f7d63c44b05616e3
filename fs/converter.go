package fs

import (
	"context"
	"errors"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/mountd/mountd/crypto"
	"github.com/mountd/mountd/logkey"
)

// The background converter encrypts in place (encryptInPlace) the files
// whose plaintext waits for encryption:
//
//   - plaintext moved onto a protected name (or a temporary of one) by a
//     rename or a link: an atomic save under an unrelated temporary name;
//   - protected files written through the mount while logged out, and
//     whatever was pending at the last logout, after the next login;
//   - what the durable record (pending.go) holds from before a restart or
//     a power loss, after the first login.
//
// It also upgrades to the current content format (PrepareConversion's
// re-encryption) the files in format version 1 written through the mount
// while logged in (upgrade): such a file is open, so it is tried once its
// last handle closes. These items are not in the record (the file stays
// readable in version 1 if it is lost; the migration task upgrades it),
// not counted as waiting for encryption, never given up while busy, and
// never make a file trusted.
//
// A file open through the mount is busy: it is tried again when a file's
// last handle closes, and after a growing delay (ConvertRetry doubling up
// to maxRetryDelay). A file with other hard links is tried for a while
// (the link of an atomic save is followed by the unlink of its temporary
// name), then left plaintext. Without the key an item waits for the next
// login (Root.LoggedIn). With Options.NoEncryptAfterLogin there is no
// record, files written while logged out are not queued, and a busy item
// is given up after ConvertMaxAge, as before the record existed.
//
// Locks: converter.mu is a leaf of the filesystem's order (doc.go); the
// record's appends are made under it (so they are in the order of the
// events), its syncs outside it. No attempt runs under it.

// convertDelay is the wait before the first attempt: a saving program
// usually closes its file right after the rename.
const convertDelay = 20 * time.Millisecond

// maxRetryDelay caps the delay between attempts on a busy file.
const maxRetryDelay = 30 * time.Second

// hardLinkGrace is how long a file with other hard links is tried again.
const hardLinkGrace = 5 * time.Second

type converter struct {
	r       *Root
	retry   time.Duration // first delay before trying a busy file again
	maxAge  time.Duration // without the record: how long a file is tried
	log     *pendingLog   // the durable record; nil without one
	after   bool          // encrypt after login what was written while logged out
	require bool          // RequireEncryption: entries of an earlier run are not converted

	mu        sync.Mutex
	pending   map[string]*convItem
	active    int
	logFailed bool // a record error was logged
	// attempted, if set (tests; guarded by mu), runs after each attempt.
	attempted func(rel string, out Outcome)

	// caps: how commits put copies in place (commit.go).
	caps commitCaps

	kick   chan struct{}
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

// convItem is one pending file.
type convItem struct {
	first   time.Time     // when it became pending
	next    time.Time     // when it is due (if queued and not parked)
	delay   time.Duration // the current delay between attempts of a busy file
	holds   int           // operations under way that may make it pending (hold)
	queued  bool          // to be converted
	parked  bool          // waits for a login
	busy    bool          // its last attempt found it open or changed
	active  bool          // being attempted
	again   bool          // queued again while it was being attempted
	durable bool          // in the record
	seq     uint64        // its record's sequence number (pendingLog.sync)
	trusted bool          // seen written or moved through the mount in this run
	links   time.Time     // first found with other hard links
	warned  bool          // a passing failure was logged
	upgrade bool          // only a version 1 file to upgrade (converter.upgrade)
}

type convOptions struct {
	retry, maxAge time.Duration
	log           *pendingLog
	afterLogin    bool
	require       bool
}

func newConverter(r *Root, o convOptions) *converter {
	if o.retry <= 0 {
		o.retry = 500 * time.Millisecond
	}
	if o.maxAge <= 0 {
		o.maxAge = 10 * time.Minute
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &converter{
		r:       r,
		retry:   o.retry,
		maxAge:  o.maxAge,
		log:     o.log,
		after:   o.afterLogin,
		require: o.require,
		pending: map[string]*convItem{},
		kick:    make(chan struct{}, 1),
		ctx:     ctx,
		cancel:  cancel,
		done:    make(chan struct{}),
	}
	go c.run()
	return c
}

// load queues the entries found in the record at start. With
// RequireEncryption they are not converted: an entry of an earlier run
// cannot be told from one that someone with access to the disk added
// beside a plaintext file of theirs, and converting that file would make
// it look authentic. They are named in the log instead, for the operator
// to check and convert (encrypt_existing_files).
func (c *converter) load(live []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	for _, rel := range live {
		if c.require {
			c.r.log.WithField(logkey.Path, rel).Warn("protected file written while logged out before the last stop may be plaintext; " +
				"with --require-encryption it is not encrypted automatically: check it, then run encrypt_existing_files")
			c.log.append('D', rel)
			continue
		}
		c.pending[rel] = &convItem{first: now, queued: true, parked: true, durable: true, delay: c.retry}
	}
	if c.require && len(c.pending) == 0 {
		c.log.rewrite(c.r.rootFd, nil)
	}
}

// item returns rel's item, making it (trusted: this run saw it).
// Caller holds mu.
func (c *converter) itemLocked(rel string) *convItem {
	it := c.pending[rel]
	if it == nil {
		it = &convItem{first: time.Now(), delay: c.retry}
		c.pending[rel] = it
	}
	it.trusted = true
	it.upgrade = false
	return it
}

// upgrade queues rel, a file in content format version 1 that is being
// written through the mount while the key is set, for its upgrade. It is
// open, so the first attempt is left to its last close (released) or the
// retry delay. Nothing happens if rel is queued already.
func (c *converter) upgrade(rel string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pending[rel] != nil {
		return
	}
	now := time.Now()
	c.pending[rel] = &convItem{first: now, next: now.Add(c.retry), delay: c.retry, queued: true, busy: true, upgrade: true}
}

// recordLocked appends rel to the record unless it is there; the caller
// syncs the returned sequence number (0: nothing to wait for) after
// releasing mu.
func (c *converter) recordLocked(rel string, it *convItem) uint64 {
	if c.log == nil {
		return 0
	}
	if !it.durable {
		it.durable = true
		it.seq = c.log.append('A', rel)
	}
	return it.seq
}

// sync waits until the record holds seq.
func (c *converter) sync(seq uint64) {
	if seq == 0 {
		return
	}
	if err := c.log.sync(seq); err != nil {
		c.mu.Lock()
		first := !c.logFailed
		c.logFailed = true
		c.mu.Unlock()
		if first {
			c.r.log.WithError(err).Warn("cannot record files waiting for encryption; one not yet encrypted when mountd stops stays plaintext")
		}
	}
}

// scheduleLocked makes it due: after delay while the key is set, else at
// the next login. Caller holds mu.
func (c *converter) scheduleLocked(it *convItem, delay time.Duration) {
	it.queued = true
	if it.active {
		it.again = true
		return
	}
	if c.r.kr.IsSet() {
		it.parked = false
		it.next = time.Now().Add(delay)
	} else {
		it.parked = true
	}
}

func (c *converter) poke() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// hold records rel durably as pending before an operation that may make
// its content plaintext under an encrypting name (a rename or link of a
// plaintext file onto it), so a crash right after that operation forgets
// nothing. End it with settle.
func (c *converter) hold(rel string) {
	c.mu.Lock()
	it := c.itemLocked(rel)
	it.holds++
	seq := c.recordLocked(rel, it)
	c.mu.Unlock()
	c.sync(seq)
}

// settle ends a hold: if happened, rel is queued (with convertDelay);
// else, unless something else queued it, it is forgotten.
func (c *converter) settle(rel string, happened bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	it := c.pending[rel]
	if it == nil {
		return
	}
	it.holds--
	if happened {
		c.scheduleLocked(it, convertDelay)
		c.poke()
		return
	}
	if it.holds == 0 && !it.queued && !it.active {
		c.forgetLocked(rel, it)
	}
}

// noteWrite records rel, a protected file about to get plaintext while
// logged out, to be encrypted after the next login. It returns once the
// record is durable. It does nothing with NoEncryptAfterLogin.
func (c *converter) noteWrite(rel string) {
	if !c.after {
		return
	}
	c.mu.Lock()
	it := c.itemLocked(rel)
	seq := c.recordLocked(rel, it)
	c.scheduleLocked(it, 0)
	c.mu.Unlock()
	c.sync(seq)
}

// loggedIn makes every item that waits for a login due now.
func (c *converter) loggedIn() {
	c.mu.Lock()
	now := time.Now()
	for _, it := range c.pending {
		if it.parked {
			it.parked = false
			it.next = now
		}
	}
	c.mu.Unlock()
	c.poke()
}

// released is called when a file's last handle closes: busy items are
// tried again now.
func (c *converter) released() {
	c.mu.Lock()
	any := false
	now := time.Now()
	for _, it := range c.pending {
		if it.busy && it.queued && !it.parked {
			it.next = now
			any = true
		}
	}
	c.mu.Unlock()
	if any {
		c.poke()
	}
}

// count returns how many files wait for encryption.
func (c *converter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.countLocked()
}

// countLocked is count with mu held.
func (c *converter) countLocked() int {
	n := 0
	for _, it := range c.pending {
		if (it.queued || it.active) && !it.upgrade {
			n++
		}
	}
	return n
}

// trusted reports whether rel is pending because this run saw its
// plaintext written or moved through the mount.
func (c *converter) trusted(rel string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	it := c.pending[rel]
	return it != nil && it.trusted
}

// isPending reports whether rel waits for encryption.
func (c *converter) isPending(rel string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	it := c.pending[rel]
	return it != nil && !it.upgrade
}

// forgetLocked drops rel (converted, skipped or given up). Caller holds
// mu.
func (c *converter) forgetLocked(rel string, it *convItem) {
	if it.holds > 0 {
		// An operation under way may make it pending again: its
		// settle decides.
		it.queued = false
		return
	}
	delete(c.pending, rel)
	if c.log == nil || !it.durable {
		return
	}
	durable := 0
	for _, o := range c.pending {
		if o.durable {
			durable++
		}
	}
	switch {
	case durable == 0:
		c.log.rewrite(c.r.rootFd, nil)
	case c.log.len() > maxPendingLog:
		live := make([]string, 0, durable)
		for r, o := range c.pending {
			if o.durable {
				live = append(live, r)
			}
		}
		sort.Strings(live)
		c.log.rewrite(c.r.rootFd, live)
	default:
		c.log.append('D', rel)
	}
}

func (c *converter) close() {
	c.cancel()
	<-c.done
	if c.log != nil {
		c.log.close()
	}
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
		if it.queued && it.holds == 0 && !it.parked && !it.next.After(now) {
			due = append(due, rel)
			it.active = true
			it.queued = false
		}
	}
	c.active = len(due)
	attempted := c.attempted
	c.mu.Unlock()
	sort.Strings(due)

	for i, rel := range due {
		if c.ctx.Err() != nil {
			c.mu.Lock()
			for _, r := range due[i:] {
				if it := c.pending[r]; it != nil {
					it.active, it.queued = false, true
				}
			}
			c.active = 0
			c.mu.Unlock()
			break
		}
		c.mu.Lock()
		upgradeOnly := c.pending[rel] != nil && c.pending[rel].upgrade
		c.mu.Unlock()
		out := c.r.convertInPlace(c.ctx, rel, PrepareOptions{upgradeOnly: upgradeOnly})
		if attempted != nil {
			attempted(rel, out)
		}
		c.mu.Lock()
		if it := c.pending[rel]; it != nil {
			c.outcomeLocked(rel, it, out)
		}
		c.active--
		c.mu.Unlock()
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	wait := time.Hour
	for _, it := range c.pending {
		if it.queued && it.holds == 0 && !it.parked {
			wait = min(wait, time.Until(it.next))
		}
	}
	return max(wait, time.Millisecond)
}

// outcomeLocked acts on the outcome of an attempt on rel. Caller holds
// mu.
func (c *converter) outcomeLocked(rel string, it *convItem, out Outcome) {
	it.active = false
	it.busy = false
	if it.again {
		// Moved or written again while it was attempted: look again,
		// whatever this attempt found.
		it.again = false
		c.scheduleLocked(it, convertDelay)
		return
	}
	now := time.Now()
	err := out.Err
	log := c.r.log.WithField(logkey.Path, rel)
	retry := func(d time.Duration) {
		it.queued = true
		it.next = now.Add(d)
	}
	switch {
	case out.Skip == SkipHardLinks:
		if it.links.IsZero() {
			it.links = now
		}
		if now.Sub(it.links) < hardLinkGrace {
			retry(c.retry)
			return
		}
		log.Info("protected file has other hard links; it stays plaintext (they would keep it)")
		c.forgetLocked(rel, it)
	case out.Skip == SkipDamaged:
		log.Warn("encrypted file is damaged (a block fails authentication, or its end or header is cut); not upgraded to the current content format: check it with mountd fsck")
		c.forgetLocked(rel, it)
	case out.Skip == SkipOtherKey:
		log.Warn("file is encrypted in content format 1 under another master key; not upgraded")
		c.forgetLocked(rel, it)
	case err == nil:
		c.forgetLocked(rel, it)
		if c.countLocked() == 0 {
			log.Debug("no protected file waits for encryption any more")
		}
	case errors.Is(err, crypto.ErrLocked):
		it.queued, it.parked = true, true
	case out.Retry():
		if !c.after && !it.upgrade && now.Sub(it.first) > c.maxAge {
			log.WithError(err).Warn("gave up encrypting atomic save; it stays plaintext")
			c.forgetLocked(rel, it)
			return
		}
		it.busy = true
		retry(it.delay)
		it.delay = min(2*it.delay, maxRetryDelay)
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		if !it.warned {
			it.warned = true
			log.WithError(err).Warn("cannot encrypt file yet: no space for its encrypted copy; trying again")
		}
		retry(it.delay)
		it.delay = min(2*it.delay, maxRetryDelay)
	default:
		log.WithError(err).Warn("cannot encrypt file in place; it stays plaintext")
		c.forgetLocked(rel, it)
	}
}

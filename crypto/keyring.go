package crypto

import (
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
)

// HKDF info labels: one per purpose, so no two uses share a key. They are
// part of the on-disk format (docs/FORMAT.md): changing one makes every
// existing file and verifier unreadable. They are not Go import paths.
const (
	labelKeyID   = "mountd/v1/key-id"
	labelContent = "mountd/v1/content"
	labelKEK     = "mountd/v1/kek"
	// labelRecovery derives a recovery slot's wrapping key (verifier v2).
	labelRecovery = "mountd/v2/recovery"
)

// Layout of the Keyring's secret page.
const (
	pageSize      = 4096
	mkOff         = 0  // the master key
	stagingOff    = 32 // a candidate key being unwrapped or generated
	prkOff        = 64 // HKDF-Extract of the master key
	stagingPRKOff = 96 // HKDF-Extract of the staged key
)

// Keyring is the one holder of the master key in memory.
//
// The key and its HKDF PRK live in a page that is mlocked and excluded
// from core dumps; each file's cipher (its AES round keys and GHASH table)
// lives in a slot of locked memory (gcm.go), derived on first use with
// HKDF computed in locked scratch (hkdf.go) on a stack that is zeroed
// afterwards (stack.go). Clear zeroes all of it.
//
// Content operations (File.ReadAt, WriteAt, Truncate) hold the Keyring's
// read lock for their own duration; Clear takes the write lock, so it waits
// for operations in flight and no operation starts under a key that is being
// cleared. The one long operation, an extension, stops at its next chunk
// once Clear has marked a logout pending, so no call holds a logout back
// for more than a chunk.
//
// The cipher cache holds as many files as cacheSlots allows (RLIMIT_MEMLOCK;
// 1024 at most). A file that finds it full gets its cipher in a locked page
// of its own and schedules a sweep, which takes the write lock (so no
// operation can be using a cipher) and zeroes the whole cache.
type Keyring struct {
	stateMu sync.Mutex // serializes Create, Unlock and Clear

	mu     sync.RWMutex // guards set, keyID, the key bytes, ciphers
	set    bool
	keyID  KeyID
	page   []byte
	locked bool // page is mlocked

	cmu      sync.Mutex // guards ciphers and slots (taken under mu.RLock)
	ciphers  map[FileID]*fileCipher
	slots    *slotArena
	sweeping atomic.Bool // a sweep is scheduled

	gen atomic.Uint64

	// pending is true from the start of a Clear that found a key set
	// until the key is gone: reads of content fail (ErrLocked), writes
	// still work (so the filesystem can write back what the kernel
	// holds dirty), and long operations stop at their next chunk.
	pending atomic.Bool

	lmu       sync.Mutex
	listeners map[uint64]func()
	before    map[uint64]func()
	nextL     uint64
}

// fileCipher is a cached file cipher and the locked memory it lives in.
type fileCipher struct {
	aead   cipher.AEAD
	slot   []byte     // its slot in the Keyring's arena, or nil
	page   secretPage // or its own page, when the arena was full
	inSlot bool       // aead lives in slot or page (else on the heap: gcm.go)
}

// NewKeyring returns an empty (locked) Keyring.
func NewKeyring() *Keyring {
	page, locked := secretMap(pageSize)
	return &Keyring{page: page, locked: locked, listeners: map[uint64]func(){}, before: map[uint64]func(){}}
}

// MemoryLocked reports whether the key page, and every page of secrets
// the package holds, is locked in RAM.
func (k *Keyring) MemoryLocked() bool {
	_, someUnlocked := LockedBytes()
	return k.locked && !someUnlocked
}

// CacheSlots is how many files' ciphers the Keyring keeps in locked
// memory (from RLIMIT_MEMLOCK), and the locked memory that takes.
func CacheSlots() (files int, bytes int64) {
	n := cacheSlots()
	return n, int64(n) * slotSize
}

// String redacts: a Keyring never prints key material.
func (k *Keyring) String() string {
	if k.IsSet() {
		return "crypto.Keyring{key set}"
	}
	return "crypto.Keyring{no key}"
}

// GoString redacts like String.
func (k *Keyring) GoString() string { return k.String() }

// IsSet reports whether a master key is set.
func (k *Keyring) IsSet() bool {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.set
}

// Generation changes every time a key is set or cleared, so an operation
// can tell that a logout (or a new login) happened under it.
func (k *Keyring) Generation() uint64 { return k.gen.Load() }

// KeyID returns the identifier of the current master key.
func (k *Keyring) KeyID() (KeyID, error) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	if !k.set {
		return KeyID{}, ErrLocked
	}
	return k.keyID, nil
}

// LogoutPending reports whether a logout has begun and the key is still
// set (Clear is running its OnBeforeClear listeners, or waiting for the
// operations in flight). Content reads already fail; an operation made of
// many chunks checks it between them and stops with ErrLocked.
func (k *Keyring) LogoutPending() bool { return k.pending.Load() }

// Readable reports whether content can be read: a key is set and no
// logout is pending.
func (k *Keyring) Readable() bool { return k.IsSet() && !k.pending.Load() }

// OnClear registers fn to run during every Clear, after the Keyring is
// marked locked and the operations in flight have finished, and before the
// key bytes are zeroed. fn runs with no Keyring lock held, but must not call
// Create, Unlock or Clear. The returned function unregisters fn.
func (k *Keyring) OnClear(fn func()) (remove func()) { return k.listen(k.listeners, fn) }

// OnBeforeClear registers fn to run at the start of every Clear that finds
// a key set, while the key is still set: content reads already fail
// (LogoutPending), writes still work. It is where what is waiting to be
// written (dirty pages the kernel holds) gets written before the lock.
// Like OnClear's, fn runs with no Keyring lock held and must not call
// Create, Unlock or Clear.
func (k *Keyring) OnBeforeClear(fn func()) (remove func()) { return k.listen(k.before, fn) }

func (k *Keyring) listen(m map[uint64]func(), fn func()) (remove func()) {
	k.lmu.Lock()
	id := k.nextL
	k.nextL++
	m[id] = fn
	k.lmu.Unlock()
	return func() {
		k.lmu.Lock()
		delete(m, id)
		k.lmu.Unlock()
	}
}

// run calls the listeners of m (a copy taken under lmu).
func (k *Keyring) run(m map[uint64]func()) {
	k.lmu.Lock()
	fns := make([]func(), 0, len(m))
	for _, fn := range m {
		fns = append(fns, fn)
	}
	k.lmu.Unlock()
	for _, fn := range fns {
		fn()
	}
}

// Clear logs out. With a key set, it first marks a logout pending (reads
// of content fail, long operations stop at their next chunk, writes still
// work) and runs the OnBeforeClear listeners with the key still set (the
// filesystem writes back dirty pages there); then it marks the Keyring
// locked (new operations get ErrLocked), waits for operations in flight,
// runs the OnClear listeners, and overwrites the key and its PRK with
// zeroes and zeroes every derived cipher. When a key was set, it then runs
// the garbage collector twice and returns freed memory to the operating
// system, so that buffers pooled by the standard library and by go-fuse
// (sync.Pool), which held plaintext or request bytes, are gone too. It is
// idempotent and returns only when all of that is done.
func (k *Keyring) Clear() {
	k.stateMu.Lock()
	defer k.stateMu.Unlock()

	if k.IsSet() {
		k.pending.Store(true)
		k.run(k.before)
	}

	k.mu.Lock()
	wasSet := k.set
	k.set = false
	if wasSet {
		k.gen.Add(1)
	}
	k.pending.Store(false)
	k.mu.Unlock()

	if wasSet {
		k.run(k.listeners)
	}

	k.mu.Lock()
	clear(k.page)
	k.keyID = KeyID{}
	k.cmu.Lock()
	k.dropCiphers()
	k.ciphers = nil
	if k.slots != nil {
		k.slots.release()
	}
	k.cmu.Unlock()
	k.mu.Unlock()
	if wasSet {
		releaseMemory()
	}
}

// releaseMemory drops what sync.Pools hold (a pooled object survives one
// collection in the pool's victim cache, not two) and returns the freed
// pages to the operating system, which zeroes them before any reuse.
// Freed objects that share a page with live ones stay until the page is
// reused; docs/SECURITY.md has what the memory scan still finds.
func releaseMemory() {
	runtime.GC()
	debug.FreeOSMemory()
}

// install moves the key in the staging area into place. Caller holds
// stateMu and runs on a clean stack (onCleanStack).
func (k *Keyring) install() error {
	staging := k.page[stagingOff : stagingOff+KeySize]
	sprk := k.page[stagingPRKOff : stagingPRKOff+hashSize]
	defer clear(staging)
	defer clear(sprk)
	if isZero(staging) {
		return fmt.Errorf("%w: all-zero master key", ErrBadVerifier)
	}
	sp := getSecretPage()
	id := keyIDOf(staging, sprk, sp.b)
	putSecretPage(sp)
	k.mu.Lock()
	copy(k.page[mkOff:mkOff+KeySize], staging)
	copy(k.page[prkOff:prkOff+hashSize], sprk)
	k.keyID = id
	k.set = true
	k.cmu.Lock()
	k.dropCiphers()
	k.ciphers = map[FileID]*fileCipher{}
	if k.slots == nil {
		k.slots = newSlotArena(cacheSlots())
	}
	k.cmu.Unlock()
	k.gen.Add(1)
	k.mu.Unlock()
	return nil
}

// dropCiphers zeroes every cached cipher. Caller holds mu for writing (no
// operation can be using one) and cmu.
func (k *Keyring) dropCiphers() {
	for id, fc := range k.ciphers {
		k.dropCipher(fc)
		delete(k.ciphers, id)
	}
}

// dropCipher zeroes fc and frees its memory. Caller holds cmu, and no one
// else can be using fc.
func (k *Keyring) dropCipher(fc *fileCipher) {
	if fc.aead != nil && !fc.inSlot {
		wipeAEAD(fc.aead)
	}
	fc.aead = nil
	switch {
	case fc.slot != nil:
		k.slots.put(fc.slot)
		fc.slot = nil
	case fc.page.b != nil:
		putSecretPage(fc.page)
		fc.page = secretPage{}
	}
}

// sweepSoon schedules a sweep of the cipher cache, once: it waits for the
// operations in flight (the write lock), then zeroes every cached cipher.
func (k *Keyring) sweepSoon() {
	if !k.sweeping.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer k.sweeping.Store(false)
		k.mu.Lock()
		defer k.mu.Unlock()
		k.cmu.Lock()
		defer k.cmu.Unlock()
		k.dropCiphers()
	}()
}

// sameAsStaging reports whether the staged key equals the current key.
// Caller holds stateMu.
func (k *Keyring) sameAsStaging() bool {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.set && subtle.ConstantTimeCompare(k.page[mkOff:mkOff+KeySize], k.page[stagingOff:stagingOff+KeySize]) == 1
}

// setKeyForTest installs key directly (tests and known-answer vectors only).
func (k *Keyring) setKeyForTest(key []byte) (err error) {
	k.stateMu.Lock()
	defer k.stateMu.Unlock()
	copy(k.page[stagingOff:stagingOff+KeySize], key)
	onCleanStack(func() { err = k.install() })
	return err
}

// NewHeader returns a header with a fresh random file-id under the current
// key.
func (k *Keyring) NewHeader() (Header, error) {
	id, err := k.KeyID()
	if err != nil {
		return Header{}, err
	}
	h := Header{Version: Version, KeyID: id}
	if _, err := rand.Read(h.FileID[:]); err != nil {
		return Header{}, fmt.Errorf("crypto: random file-id: %w", err)
	}
	return h, nil
}

// keyHold is a read hold on the Keyring's key, taken by acquire: while it
// is held, Clear waits (fs/doc.go has the whole lock order). Release it
// exactly once.
type keyHold struct{ k *Keyring }

// acquire takes a read hold on the key for one content operation and
// checks that a key is set (ErrLocked otherwise, with nothing held).
func (k *Keyring) acquire() (keyHold, error) {
	k.mu.RLock()
	if !k.set {
		k.mu.RUnlock()
		return keyHold{}, ErrLocked
	}
	return keyHold{k: k}, nil
}

// acquireRead is acquire for an operation that reads content: it also
// fails while a logout is pending, so nothing new is decrypted once a
// logout has begun.
func (k *Keyring) acquireRead() (keyHold, error) {
	h, err := k.acquire()
	if err == nil && k.pending.Load() {
		h.release()
		return keyHold{}, ErrLocked
	}
	return h, err
}

// release drops the hold taken by acquire.
func (h keyHold) release() { h.k.mu.RUnlock() }

// fileAEAD returns the AEAD of the file with header h, valid until the
// caller's hold is released. Caller holds a keyHold (acquire).
func (k *Keyring) fileAEAD(h *Header) (cipher.AEAD, error) {
	if h.KeyID != k.keyID {
		return nil, ErrWrongKey
	}
	k.cmu.Lock()
	if fc, ok := k.ciphers[h.FileID]; ok {
		k.cmu.Unlock()
		return fc.aead, nil
	}
	fc := &fileCipher{slot: k.slots.alloc()}
	k.cmu.Unlock()
	mem := fc.slot
	if mem == nil {
		fc.page = getSecretPage()
		mem = fc.page.b[:slotSize]
		k.sweepSoon()
	}
	var err error
	onCleanStack(func() { fc.aead, fc.inSlot, err = k.newFileGCM(mem, h.FileID) })
	k.cmu.Lock()
	defer k.cmu.Unlock()
	if err != nil {
		k.dropCipher(fc)
		return nil, err
	}
	if prev, ok := k.ciphers[h.FileID]; ok { // derived meanwhile by another operation
		k.dropCipher(fc)
		return prev.aead, nil
	}
	k.ciphers[h.FileID] = fc
	return fc.aead, nil
}

// newFileGCM derives the content key of file id from the PRK and builds
// its cipher in mem. Caller holds a keyHold and runs on a clean stack.
func (k *Keyring) newFileGCM(mem []byte, id FileID) (cipher.AEAD, bool, error) {
	sp := getSecretPage()
	defer putSecretPage(sp)
	var info [len(labelContent) + len(id)]byte
	copy(info[:], labelContent)
	copy(info[len(labelContent):], id[:])
	key := sp.b[:KeySize]
	hkdfExpand(key, k.page[prkOff:prkOff+hashSize], info[:], sp.b[KeySize:])
	return newGCMIn(mem, key)
}

// keyIDOf derives the key-id of master key mk, leaving its PRK in prk
// (hashSize bytes of locked memory). scratch is a secret page.
func keyIDOf(mk, prk, scratch []byte) KeyID {
	hkdfExtract(prk, nil, mk, scratch)
	var id KeyID
	hkdfExpand(id[:], prk, []byte(labelKeyID), scratch)
	return id
}

// deriveKeyID returns the key-id of master key mk. Run it on a clean
// stack.
func deriveKeyID(mk []byte) KeyID {
	sp := getSecretPage()
	defer putSecretPage(sp)
	return keyIDOf(mk, sp.b[:hashSize], sp.b[hashSize:])
}

func isZero(b []byte) bool {
	var acc byte
	for _, c := range b {
		acc |= c
	}
	return acc == 0
}

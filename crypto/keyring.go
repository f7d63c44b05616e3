package crypto

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
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
	pageSize   = 4096
	mkOff      = 0  // the master key
	stagingOff = 32 // a candidate key being unwrapped or generated
)

// maxCachedCiphers bounds the per-file AEAD cache; past it the cache is
// dropped and rebuilt on demand.
const maxCachedCiphers = 4096

// Keyring is the one holder of the master key in memory.
//
// The key lives in a page that is mlocked and excluded from core dumps.
// Content operations (File.ReadAt, WriteAt, Truncate) hold the Keyring's
// read lock for their own duration; Clear takes the write lock, so it waits
// for operations in flight and no operation starts under a key that is being
// cleared. The one long operation, an extension, stops at its next chunk
// once Clear has marked a logout pending, so no call holds a logout back
// for more than a chunk.
type Keyring struct {
	stateMu sync.Mutex // serializes Create, Unlock and Clear

	mu     sync.RWMutex // guards set, keyID, the key bytes, ciphers
	set    bool
	keyID  KeyID
	page   []byte
	locked bool // page is mlocked

	cmu     sync.Mutex // guards ciphers (taken under mu.RLock)
	ciphers map[FileID]cipher.AEAD

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

// NewKeyring returns an empty (locked) Keyring.
func NewKeyring() *Keyring {
	page, locked := allocSecret(pageSize)
	return &Keyring{page: page, locked: locked, listeners: map[uint64]func(){}, before: map[uint64]func(){}}
}

// MemoryLocked reports whether the key page is locked in RAM.
func (k *Keyring) MemoryLocked() bool { return k.locked }

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
// runs the OnClear listeners, and overwrites the key with zeroes and drops
// every derived cipher. It is idempotent and returns only when all of that
// is done.
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
	k.ciphers = nil
	k.cmu.Unlock()
	k.mu.Unlock()
}

// install moves the key in the staging area into place. Caller holds stateMu.
func (k *Keyring) install() error {
	staging := k.page[stagingOff : stagingOff+KeySize]
	defer clear(staging)
	if isZero(staging) {
		return fmt.Errorf("%w: all-zero master key", ErrBadVerifier)
	}
	id, err := deriveKeyID(staging)
	if err != nil {
		return err
	}
	k.mu.Lock()
	copy(k.page[mkOff:mkOff+KeySize], staging)
	k.keyID = id
	k.set = true
	k.cmu.Lock()
	k.ciphers = map[FileID]cipher.AEAD{}
	k.cmu.Unlock()
	k.gen.Add(1)
	k.mu.Unlock()
	return nil
}

// sameAsStaging reports whether the staged key equals the current key.
// Caller holds stateMu.
func (k *Keyring) sameAsStaging() bool {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.set && subtle.ConstantTimeCompare(k.page[mkOff:mkOff+KeySize], k.page[stagingOff:stagingOff+KeySize]) == 1
}

// setKeyForTest installs key directly (tests and known-answer vectors only).
func (k *Keyring) setKeyForTest(key []byte) error {
	k.stateMu.Lock()
	defer k.stateMu.Unlock()
	copy(k.page[stagingOff:stagingOff+KeySize], key)
	return k.install()
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

// fileAEAD returns the AEAD of the file with header h. Caller holds a
// keyHold (acquire).
func (k *Keyring) fileAEAD(h *Header) (cipher.AEAD, error) {
	if h.KeyID != k.keyID {
		return nil, ErrWrongKey
	}
	k.cmu.Lock()
	a, ok := k.ciphers[h.FileID]
	k.cmu.Unlock()
	if ok {
		return a, nil
	}
	fk, err := hkdf.Key(sha256.New, k.page[mkOff:mkOff+KeySize], nil, labelContent+string(h.FileID[:]), KeySize)
	if err != nil {
		return nil, fmt.Errorf("crypto: derive file key: %w", err)
	}
	a, err = newGCM(fk)
	clear(fk)
	if err != nil {
		return nil, err
	}
	k.cmu.Lock()
	if len(k.ciphers) >= maxCachedCiphers {
		k.ciphers = map[FileID]cipher.AEAD{}
	}
	k.ciphers[h.FileID] = a
	k.cmu.Unlock()
	return a, nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("crypto: aes: %w", err)
	}
	a, err := cipher.NewGCM(b)
	if err != nil {
		return nil, fmt.Errorf("crypto: gcm: %w", err)
	}
	return a, nil
}

func deriveKeyID(mk []byte) (KeyID, error) {
	var id KeyID
	b, err := hkdf.Key(sha256.New, mk, nil, labelKeyID, len(id))
	if err != nil {
		return id, fmt.Errorf("crypto: derive key-id: %w", err)
	}
	copy(id[:], b)
	return id, nil
}

func isZero(b []byte) bool {
	var acc byte
	for _, c := range b {
		acc |= c
	}
	return acc == 0
}

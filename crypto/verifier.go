package crypto

import (
	"bytes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"

	"golang.org/x/crypto/argon2"
	"golang.org/x/sys/unix"
)

// Verifier file layouts (docs/FORMAT.md, section 3).
//
// Version 1, 104 bytes, one password slot:
//
//	0  magic "MTDVRF\x00" (7) | version 0x01 (1)
//	8  kdf id (1) = 1 (Argon2id) | threads (1) | reserved, zero (2)
//	12 time (uint32 BE) | 16 memory in KiB (uint32 BE)
//	20 salt (16) | 36 key-id (8) | 44 nonce (12)
//	56 AES-256-GCM(KEK, master key) (32) | tag (16)
//
// The associated data is bytes 0..56. KEK = HKDF-SHA256(Argon2id(password,
// salt, time, memory, threads, 32), info = "mountd/v1/kek").
//
// Version 2: a 20-byte header and key slots, each wrapping the same master
// key under its own secret:
//
//	header   0 magic (7) | version 0x02 (1) | 8 key-id (8) | 16 slot count (1) | reserved, zero (3)
//	password 0 type 0x01 | kdf id 1 | threads | reserved 0 | 4 time | 8 memory KiB
//	         12 salt (16) | 28 nonce (12) | 40 wrapped key (32) | tag (16)       = 88 bytes
//	recovery 0 type 0x02 | reserved, zero (3) | 4 salt (16) | 20 nonce (12)
//	         32 wrapped key (32) | tag (16)                                       = 80 bytes
//
// A password slot comes first and is required; a recovery slot may follow.
// A slot's associated data is header bytes 0..16 followed by the slot's
// bytes up to its wrapped key, so a slot can be replaced without the other
// slots' secrets. The recovery KEK is HKDF-SHA256(recovery key, salt,
// info = "mountd/v2/recovery").
const (
	kdfArgon2id = 1
	saltSize    = 16

	v1Size    = 104
	v1AADSize = 56

	v2HeaderSize   = 20
	v2AADHeader    = 16 // header bytes every slot's associated data starts with
	slotPassword   = 1
	slotRecovery   = 2
	pwSlotSize     = 88
	pwSlotAADSize  = 40
	recSlotSize    = 80
	recSlotAADSize = 32
	wrappedSize    = KeySize + TagSize
	maxSlots       = 2
	maxVerifierLen = v2HeaderSize + pwSlotSize + recSlotSize

	// VerifierDir is the directory under the data directory that holds the
	// verifier; it is hidden from the mount.
	VerifierDir = "auth"
	// VerifierName is the verifier's file name inside VerifierDir.
	VerifierName = "verifier.bin"
	// VerifierVersion is the verifier version this package writes.
	VerifierVersion = 2
)

var verifierMagic = [7]byte{'M', 'T', 'D', 'V', 'R', 'F', 0}

// Bounds on stored KDF parameters. The floor is OWASP's Argon2id minimum
// (19 MiB, 2 passes); the ceilings keep a crafted file from exhausting
// memory or time before the password is even checked.
const (
	minMemoryKiB = 19 * 1024
	maxMemoryKiB = 1024 * 1024
	minCostKiB   = 2 * minMemoryKiB // time * memory
	maxTime      = 10
	maxThreads   = 64
)

// KDFParams are the Argon2id parameters recorded in a verifier.
type KDFParams struct {
	Time      uint32 `json:"time"`
	MemoryKiB uint32 `json:"memory_kib"`
	Threads   uint8  `json:"threads"`
}

// DefaultKDFParams is RFC 9106's second recommended option.
var DefaultKDFParams = KDFParams{Time: 3, MemoryKiB: 64 * 1024, Threads: 4}

// Validate rejects parameters that are too weak or that would take too
// much memory or time.
func (p KDFParams) Validate() error {
	switch {
	case p.Threads < 1 || p.Threads > maxThreads:
		return fmt.Errorf("%w: argon2id threads %d outside 1..%d", ErrBadVerifier, p.Threads, maxThreads)
	case p.Time < 1 || p.Time > maxTime:
		return fmt.Errorf("%w: argon2id time %d outside 1..%d", ErrBadVerifier, p.Time, maxTime)
	case p.MemoryKiB < minMemoryKiB || p.MemoryKiB > maxMemoryKiB:
		return fmt.Errorf("%w: argon2id memory %d KiB outside %d..%d", ErrBadVerifier, p.MemoryKiB, minMemoryKiB, maxMemoryKiB)
	case uint64(p.Time)*uint64(p.MemoryKiB) < minCostKiB:
		return fmt.Errorf("%w: argon2id time*memory below %d KiB", ErrBadVerifier, minCostKiB)
	}
	return nil
}

// VerifierPath returns the verifier's path under the data directory.
func VerifierPath(dataDir string) string {
	return filepath.Join(dataDir, VerifierDir, VerifierName)
}

// Verifier is a parsed verifier file.
type Verifier struct {
	// Version is the file's layout version: 1 (password only) or 2 (key
	// slots).
	Version int
	// Params are the password slot's KDF parameters.
	Params KDFParams
	// KeyID names the wrapped master key.
	KeyID KeyID
	// Recovery reports whether a recovery slot is present.
	Recovery bool

	raw []byte
	rec int // offset of the recovery slot; 0 if none
}

// slot is the parts of one wrapped copy of the master key.
type slot struct {
	salt, nonce, wrapped []byte
	aad                  []byte // a fresh slice
}

// ParseVerifier parses and validates the bytes of a verifier file, of
// either version. KDF parameters are checked here, before any KDF can run.
func ParseVerifier(b []byte) (*Verifier, error) {
	if len(b) < 8 || [7]byte(b[:7]) != verifierMagic {
		return nil, fmt.Errorf("%w: bad magic", ErrBadVerifier)
	}
	switch b[7] {
	case 1:
		return parseV1(b)
	case 2:
		return parseV2(b)
	}
	return nil, fmt.Errorf("%w: unsupported version %d", ErrBadVerifier, b[7])
}

func parseV1(b []byte) (*Verifier, error) {
	if len(b) != v1Size {
		return nil, fmt.Errorf("%w: %d bytes, want %d", ErrBadVerifier, len(b), v1Size)
	}
	if b[8] != kdfArgon2id {
		return nil, fmt.Errorf("%w: unknown kdf %d", ErrBadVerifier, b[8])
	}
	if b[10] != 0 || b[11] != 0 {
		return nil, fmt.Errorf("%w: reserved bytes set", ErrBadVerifier)
	}
	v := &Verifier{Version: 1, Params: KDFParams{
		Threads:   b[9],
		Time:      binary.BigEndian.Uint32(b[12:16]),
		MemoryKiB: binary.BigEndian.Uint32(b[16:20]),
	}}
	if err := v.Params.Validate(); err != nil {
		return nil, err
	}
	copy(v.KeyID[:], b[36:44])
	v.raw = bytes.Clone(b)
	return v, nil
}

func parseV2(b []byte) (*Verifier, error) {
	if len(b) < v2HeaderSize {
		return nil, fmt.Errorf("%w: %d bytes, shorter than the header", ErrBadVerifier, len(b))
	}
	n := int(b[16])
	if b[17] != 0 || b[18] != 0 || b[19] != 0 {
		return nil, fmt.Errorf("%w: reserved header bytes set", ErrBadVerifier)
	}
	if n < 1 || n > maxSlots {
		return nil, fmt.Errorf("%w: %d key slots", ErrBadVerifier, n)
	}
	v := &Verifier{Version: 2}
	copy(v.KeyID[:], b[8:16])
	off, last := v2HeaderSize, 0
	for i := 0; i < n; i++ {
		if off >= len(b) {
			return nil, fmt.Errorf("%w: truncated in slot %d", ErrBadVerifier, i+1)
		}
		typ := int(b[off])
		if typ <= last {
			return nil, fmt.Errorf("%w: slot %d of type %d out of order", ErrBadVerifier, i+1, typ)
		}
		last = typ
		switch typ {
		case slotPassword:
			if len(b)-off < pwSlotSize {
				return nil, fmt.Errorf("%w: truncated password slot", ErrBadVerifier)
			}
			s := b[off : off+pwSlotSize]
			if s[1] != kdfArgon2id {
				return nil, fmt.Errorf("%w: unknown kdf %d", ErrBadVerifier, s[1])
			}
			if s[3] != 0 {
				return nil, fmt.Errorf("%w: reserved slot byte set", ErrBadVerifier)
			}
			v.Params = KDFParams{
				Threads:   s[2],
				Time:      binary.BigEndian.Uint32(s[4:8]),
				MemoryKiB: binary.BigEndian.Uint32(s[8:12]),
			}
			if err := v.Params.Validate(); err != nil {
				return nil, err
			}
			off += pwSlotSize
		case slotRecovery:
			if len(b)-off < recSlotSize {
				return nil, fmt.Errorf("%w: truncated recovery slot", ErrBadVerifier)
			}
			if b[off+1] != 0 || b[off+2] != 0 || b[off+3] != 0 {
				return nil, fmt.Errorf("%w: reserved slot bytes set", ErrBadVerifier)
			}
			v.Recovery, v.rec = true, off
			off += recSlotSize
		default:
			return nil, fmt.Errorf("%w: unknown slot type %d", ErrBadVerifier, typ)
		}
		if i == 0 && typ != slotPassword {
			return nil, fmt.Errorf("%w: no password slot", ErrBadVerifier)
		}
	}
	if off != len(b) {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrBadVerifier, len(b)-off)
	}
	v.raw = bytes.Clone(b)
	return v, nil
}

// ReadVerifier reads and validates the verifier at path. A missing file
// gives an error wrapping both ErrNoVerifier and fs.ErrNotExist.
func ReadVerifier(path string) (*Verifier, error) {
	f, err := openVerifierFile(path)
	if err != nil {
		if errors.Is(err, iofs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %w", ErrNoVerifier, err)
		}
		return nil, err
	}
	defer f.Close()
	var b [maxVerifierLen + 1]byte
	n, err := io.ReadFull(f, b[:])
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return ParseVerifier(b[:n])
}

// Marshal returns the file bytes of v.
func (v *Verifier) Marshal() []byte { return bytes.Clone(v.raw) }

// Slots names the key slots present, password first.
func (v *Verifier) Slots() []string {
	if v.Recovery {
		return []string{"password", "recovery"}
	}
	return []string{"password"}
}

// passwordSlot returns the parts of the password slot.
func (v *Verifier) passwordSlot() slot {
	b := v.raw
	if v.Version == 1 {
		return slot{salt: b[20:36], nonce: b[44:56], wrapped: b[56:v1Size], aad: bytes.Clone(b[:v1AADSize])}
	}
	s := b[v2HeaderSize : v2HeaderSize+pwSlotSize]
	return slot{salt: s[12:28], nonce: s[28:40], wrapped: s[40:], aad: slotAAD(b, s[:pwSlotAADSize])}
}

// recoverySlot returns the parts of the recovery slot, if there is one.
func (v *Verifier) recoverySlot() (slot, bool) {
	if !v.Recovery {
		return slot{}, false
	}
	s := v.raw[v.rec : v.rec+recSlotSize]
	return slot{salt: s[4:20], nonce: s[20:32], wrapped: s[32:], aad: slotAAD(v.raw, s[:recSlotAADSize])}, true
}

func slotAAD(file, slotHead []byte) []byte {
	return append(bytes.Clone(file[:v2AADHeader]), slotHead...)
}

// kekCipher is a key-encryption cipher in a page of locked memory, with
// the secrets it was derived from zeroed. close zeroes it.
type kekCipher struct {
	cipher.AEAD
	page   secretPage
	inSlot bool
}

// Layout of a kekCipher's page.
const (
	kekInputOff = 0    // the Argon2 output or the recovery key's PRK input (32)
	kekPRKOff   = 32   // HKDF-Extract (32)
	kekKeyOff   = 64   // the KEK (32)
	kekWorkOff  = 96   // HKDF scratch, up to kekSlotOff
	kekSlotOff  = 2048 // the cipher (slotSize)
)

func (c *kekCipher) close() {
	if c.AEAD != nil && !c.inSlot {
		wipeAEAD(c.AEAD)
	}
	c.AEAD = nil
	putSecretPage(c.page)
}

// finish expands the PRK in c's page with label into the KEK and
// builds its cipher in the page. It closes c on failure.
func (c *kekCipher) finish(label string) error {
	b := c.page.b
	key := b[kekKeyOff : kekKeyOff+KeySize]
	hkdfExpand(key, b[kekPRKOff:kekPRKOff+hashSize], []byte(label), b[kekWorkOff:kekSlotOff])
	clear(b[:kekKeyOff]) // the input and the PRK
	a, inSlot, err := newGCMIn(b[kekSlotOff:kekSlotOff+slotSize], key)
	clear(key)
	if err != nil {
		c.close()
		return err
	}
	c.AEAD, c.inSlot = a, inSlot
	return nil
}

// argonMu keeps Argon2 to one computation at a time process-wide, so a
// flood of logins cannot multiply its memory use.
var argonMu sync.Mutex

// kek derives the password's key-encryption cipher: HKDF-SHA256 of the
// Argon2id output, info "mountd/v1/kek". The Argon2 output is copied into
// locked memory and zeroed where x/crypto left it; the 64 MiB of Argon2
// memory (password-derived blocks; the last ones are worth its output) is
// freed and returned to the operating system, which zeroes it. Run it on
// a clean stack.
func kek(password []byte, salt []byte, p KDFParams) (*kekCipher, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	c := &kekCipher{page: getSecretPage()}
	b := c.page.b
	argonMu.Lock()
	st := argon2.IDKey(password, salt, p.Time, p.MemoryKiB, p.Threads, KeySize)
	copy(b[kekInputOff:kekInputOff+KeySize], st)
	clear(st)
	debug.FreeOSMemory()
	argonMu.Unlock()
	hkdfExtract(b[kekPRKOff:kekPRKOff+hashSize], nil, b[kekInputOff:kekInputOff+KeySize], b[kekWorkOff:kekSlotOff])
	if err := c.finish(labelKEK); err != nil {
		return nil, err
	}
	return c, nil
}

// recoveryKEK derives the recovery slot's key-encryption cipher:
// HKDF-SHA256(recovery key, salt, info "mountd/v2/recovery"). Run it on
// a clean stack.
func recoveryKEK(rk, salt []byte) (*kekCipher, error) {
	c := &kekCipher{page: getSecretPage()}
	b := c.page.b
	hkdfExtract(b[kekPRKOff:kekPRKOff+hashSize], salt, rk, b[kekWorkOff:kekSlotOff])
	if err := c.finish(labelRecovery); err != nil {
		return nil, err
	}
	return c, nil
}

// newV2 returns the bytes of a version 2 verifier for the key with id,
// with its slot types set and no slot sealed yet. The password slot is at
// v2HeaderSize, the recovery slot (when withRecovery) right after it.
func newV2(id KeyID, withRecovery bool) []byte {
	n, size := 1, v2HeaderSize+pwSlotSize
	if withRecovery {
		n, size = 2, size+recSlotSize
	}
	b := make([]byte, size)
	copy(b, verifierMagic[:])
	b[7] = 2
	copy(b[8:16], id[:])
	b[16] = byte(n)
	b[v2HeaderSize] = slotPassword
	if withRecovery {
		b[v2HeaderSize+pwSlotSize] = slotRecovery
	}
	return b
}

// sealPassword fills the password slot of the version 2 verifier b with mk
// wrapped under password (fresh salt and nonce).
func sealPassword(b, mk, password []byte, p KDFParams) error {
	s := b[v2HeaderSize : v2HeaderSize+pwSlotSize]
	s[1], s[2], s[3] = kdfArgon2id, p.Threads, 0
	binary.BigEndian.PutUint32(s[4:8], p.Time)
	binary.BigEndian.PutUint32(s[8:12], p.MemoryKiB)
	if _, err := rand.Read(s[12:40]); err != nil {
		return fmt.Errorf("crypto: random salt and nonce: %w", err)
	}
	a, err := kek(password, s[12:28], p)
	if err != nil {
		return err
	}
	defer a.close()
	a.Seal(s[40:40], s[28:40], mk, slotAAD(b, s[:pwSlotAADSize]))
	return nil
}

// sealRecovery fills the recovery slot of the version 2 verifier b with mk
// wrapped under the recovery key rk.
func sealRecovery(b, mk, rk []byte) error {
	s := b[v2HeaderSize+pwSlotSize : v2HeaderSize+pwSlotSize+recSlotSize]
	if _, err := rand.Read(s[4:32]); err != nil {
		return fmt.Errorf("crypto: random salt and nonce: %w", err)
	}
	a, err := recoveryKEK(rk, s[4:20])
	if err != nil {
		return err
	}
	defer a.close()
	a.Seal(s[32:32], s[20:32], mk, slotAAD(b, s[:recSlotAADSize]))
	return nil
}

// open unwraps s with a into dst (KeySize bytes) and checks the result
// against the verifier's key-id; fail is the error of a wrong secret.
func (v *Verifier) open(dst []byte, a cipher.AEAD, s slot, fail error) error {
	if _, err := a.Open(dst[:0], s.nonce, s.wrapped, s.aad); err != nil {
		clear(dst)
		return fail
	}
	if id := deriveKeyID(dst); id != v.KeyID || isZero(dst) {
		clear(dst)
		return fmt.Errorf("%w: key-id does not match the wrapped key", ErrBadVerifier)
	}
	return nil
}

// unwrap decrypts the master key into dst (KeySize bytes) with password.
func (v *Verifier) unwrap(dst []byte, password []byte) error {
	s := v.passwordSlot()
	a, err := kek(password, s.salt, v.Params)
	if err != nil {
		return err
	}
	defer a.close()
	return v.open(dst, a, s, ErrInvalidPassword)
}

// unwrapRecovery decrypts the master key into dst with the recovery key in
// its text form.
func (v *Verifier) unwrapRecovery(dst []byte, text []byte) error {
	s, ok := v.recoverySlot()
	if !ok {
		return ErrNoRecoveryKey
	}
	rk := getSecretPage()
	defer putSecretPage(rk)
	if err := ParseRecoveryKey(rk.b[:RecoveryKeySize], text); err != nil {
		return err
	}
	a, err := recoveryKEK(rk.b[:RecoveryKeySize], s.salt)
	if err != nil {
		return err
	}
	defer a.close()
	return v.open(dst, a, s, ErrInvalidRecoveryKey)
}

// build makes a version 2 verifier for mk: the password slot sealed under
// password, or copied from old when password is nil (old must then be
// version 2); the recovery slot sealed under rk when rk is not nil, else
// copied from old when it has one.
func build(mk []byte, old *Verifier, password []byte, p KDFParams, rk []byte) (*Verifier, error) {
	id := deriveKeyID(mk)
	keepRec := rk == nil && old != nil && old.Recovery
	b := newV2(id, rk != nil || keepRec)
	if password != nil {
		if err := sealPassword(b, mk, password, p); err != nil {
			return nil, err
		}
	} else {
		copy(b[v2HeaderSize:v2HeaderSize+pwSlotSize], old.raw[v2HeaderSize:v2HeaderSize+pwSlotSize])
	}
	switch {
	case rk != nil:
		if err := sealRecovery(b, mk, rk); err != nil {
			return nil, err
		}
	case keepRec:
		copy(b[v2HeaderSize+pwSlotSize:], old.raw[old.rec:old.rec+recSlotSize])
	}
	return ParseVerifier(b)
}

// withNewRecoveryKey calls fn with a fresh random recovery key and returns
// the key's text form when fn succeeds.
func withNewRecoveryKey(fn func(rk []byte) error) ([]byte, error) {
	page := getSecretPage()
	defer putSecretPage(page)
	rk := page.b[:RecoveryKeySize]
	if _, err := rand.Read(rk); err != nil {
		return nil, fmt.Errorf("crypto: random recovery key: %w", err)
	}
	if err := fn(rk); err != nil {
		return nil, err
	}
	return FormatRecoveryKey(rk), nil
}

// Create makes a random master key, writes a verifier for it under password
// at path (never replacing one: ErrVerifierExists), and sets the key. It is
// refused while a key is set.
func (k *Keyring) Create(path string, password []byte, p KDFParams) (err error) {
	onCleanStack(func() { err = k.create(path, password, p) })
	return err
}

func (k *Keyring) create(path string, password []byte, p KDFParams) error {
	k.stateMu.Lock()
	defer k.stateMu.Unlock()
	if k.IsSet() {
		return ErrKeyAlreadySet
	}
	if _, err := os.Lstat(path); err == nil {
		return ErrVerifierExists
	}
	staging := k.page[stagingOff : stagingOff+KeySize]
	defer clear(staging)
	if _, err := rand.Read(staging); err != nil {
		return fmt.Errorf("crypto: random master key: %w", err)
	}
	v, err := build(staging, nil, password, p, nil)
	if err != nil {
		return err
	}
	if err := writeVerifier(path, v, false); err != nil {
		return err
	}
	return k.install()
}

// CreateVerifier makes a random master key and writes a verifier for it at
// path (never replacing one: ErrVerifierExists) with a password slot and,
// when withRecovery, a recovery slot under a new random recovery key, whose
// text form it returns for the caller to show once and zero. No key is set
// anywhere.
func CreateVerifier(path string, password []byte, p KDFParams, withRecovery bool) (recoveryKey []byte, err error) {
	onCleanStack(func() { recoveryKey, err = createVerifier(path, password, p, withRecovery) })
	return recoveryKey, err
}

func createVerifier(path string, password []byte, p KDFParams, withRecovery bool) (recoveryKey []byte, err error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if _, err := os.Lstat(path); err == nil {
		return nil, ErrVerifierExists
	}
	mk := getSecretPage()
	defer putSecretPage(mk)
	if _, err := rand.Read(mk.b[:KeySize]); err != nil {
		return nil, fmt.Errorf("crypto: random master key: %w", err)
	}
	create := func(rk []byte) error {
		v, err := build(mk.b[:KeySize], nil, password, p, rk)
		if err != nil {
			return err
		}
		return writeVerifier(path, v, false)
	}
	if !withRecovery {
		return nil, create(nil)
	}
	return withNewRecoveryKey(create)
}

// Unlock sets the master key wrapped in v. A wrong password gives
// ErrInvalidPassword and leaves the Keyring as it was. If the same key is
// already set, Unlock does nothing; a different one gives ErrKeyAlreadySet.
func (k *Keyring) Unlock(v *Verifier, password []byte) error {
	return k.unlockWith(func(dst []byte) error { return v.unwrap(dst, password) })
}

// UnlockRecovery is Unlock with the recovery key (its text form) instead
// of the password: ErrNoRecoveryKey when v has no recovery slot,
// ErrBadRecoveryKey when the text is malformed, ErrInvalidRecoveryKey when
// it is the wrong key.
func (k *Keyring) UnlockRecovery(v *Verifier, recoveryKey []byte) error {
	return k.unlockWith(func(dst []byte) error { return v.unwrapRecovery(dst, recoveryKey) })
}

func (k *Keyring) unlockWith(unwrap func(dst []byte) error) (err error) {
	onCleanStack(func() { err = k.unlockClean(unwrap) })
	return err
}

func (k *Keyring) unlockClean(unwrap func(dst []byte) error) error {
	k.stateMu.Lock()
	defer k.stateMu.Unlock()
	staging := k.page[stagingOff : stagingOff+KeySize]
	defer clear(staging)
	if err := unwrap(staging); err != nil {
		return err
	}
	if k.IsSet() {
		if k.sameAsStaging() {
			return nil
		}
		return ErrKeyAlreadySet
	}
	return k.install()
}

// rewrap reads the verifier at path, unwraps its master key with unwrap,
// and replaces the file, atomically, with what remake builds from the key.
// It runs on a clean stack.
func rewrap(path string, unwrap func(v *Verifier, mk []byte) error, remake func(v *Verifier, mk []byte) (*Verifier, error)) (err error) {
	onCleanStack(func() {
		v, e := ReadVerifier(path)
		if e != nil {
			err = e
			return
		}
		mk := getSecretPage()
		defer putSecretPage(mk)
		if err = unwrap(v, mk.b[:KeySize]); err != nil {
			return
		}
		nv, e := remake(v, mk.b[:KeySize])
		if e != nil {
			err = e
			return
		}
		err = writeVerifier(path, nv, true)
	})
	return err
}

// ChangePassword rewraps the master key in the verifier at path under
// newPassword with parameters p, atomically. File contents are untouched.
// A recovery slot is kept; a version 1 verifier is rewritten as version 2.
func ChangePassword(path string, oldPassword, newPassword []byte, p KDFParams) error {
	if err := p.Validate(); err != nil {
		return err
	}
	return rewrap(path,
		func(v *Verifier, mk []byte) error { return v.unwrap(mk, oldPassword) },
		func(v *Verifier, mk []byte) (*Verifier, error) { return build(mk, v, newPassword, p, nil) })
}

// ResetPassword sets a new password with the recovery key (its text form)
// instead of the old password: ErrNoVerifier, ErrNoRecoveryKey,
// ErrBadRecoveryKey (a typo) or ErrInvalidRecoveryKey (the wrong key)
// change nothing. The recovery slot is kept, so the same recovery key goes
// on working. File contents are untouched.
func ResetPassword(path string, recoveryKey, newPassword []byte, p KDFParams) error {
	if err := p.Validate(); err != nil {
		return err
	}
	return rewrap(path,
		func(v *Verifier, mk []byte) error { return v.unwrapRecovery(mk, recoveryKey) },
		func(v *Verifier, mk []byte) (*Verifier, error) { return build(mk, v, newPassword, p, nil) })
}

// SetRecoveryKey creates, or replaces, the recovery slot of the verifier
// at path under a new random recovery key, after checking password, and
// returns the new key's text form for the caller to show once and zero. A
// replaced recovery key stops working. The password slot is kept as is
// (a version 1 verifier's is rewrapped, with its own KDF parameters, into
// the version 2 layout).
func SetRecoveryKey(path string, password []byte) ([]byte, error) {
	return withNewRecoveryKey(func(rk []byte) error {
		return rewrap(path,
			func(v *Verifier, mk []byte) error { return v.unwrap(mk, password) },
			func(v *Verifier, mk []byte) (*Verifier, error) {
				if v.Version == 1 {
					return build(mk, v, password, v.Params, rk)
				}
				return build(mk, v, nil, v.Params, rk)
			})
	})
}

// writeVerifier writes v to path atomically: an exclusive 0600 temp file,
// fsync, then link (no overwrite) or rename (replace), then fsync of the
// directory. The directory is created 0700. The directory (auth/) and the
// files in it are reached without following symlinks (openVerifierDir).
func writeVerifier(path string, v *Verifier, replace bool) error {
	dir, name, err := openVerifierDir(path, true)
	if err != nil {
		return err
	}
	defer dir.Close()
	dfd := int(dir.Fd())
	if err := unix.Fchmod(dfd, 0o700); err != nil {
		return &iofs.PathError{Op: "chmod", Path: dir.Name(), Err: err}
	}
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return err
	}
	tmp := VerifierTempPrefix + hex.EncodeToString(rnd[:])
	fd, err := unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return &iofs.PathError{Op: "open", Path: filepath.Join(dir.Name(), tmp), Err: err}
	}
	f := os.NewFile(uintptr(fd), filepath.Join(dir.Name(), tmp))
	defer func() { _ = unix.Unlinkat(dfd, tmp, 0) }()
	_, err = f.Write(v.raw)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if replace {
		err = unix.Renameat(dfd, tmp, dfd, name)
	} else if err = unix.Linkat(dfd, tmp, dfd, name, 0); err == unix.EEXIST {
		return ErrVerifierExists
	}
	if err != nil {
		return &iofs.PathError{Op: "rename", Path: path, Err: err}
	}
	return dir.Sync()
}

// openVerifierDir opens the directory of the verifier at path (auth/ of a
// data directory), creating it (0700) if create, and returns it with the
// verifier's name in it. The data directory is opened as given; auth/ is
// opened from it without following a symlink, so whoever may write the
// data directory cannot send the verifier, its temp files or their
// removal elsewhere by swapping auth/ for a link.
func openVerifierDir(path string, create bool) (dir *os.File, name string, err error) {
	authPath := filepath.Dir(path)
	data, base := filepath.Dir(authPath), filepath.Base(authPath)
	dfd, err := unix.Open(data, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, "", &iofs.PathError{Op: "open", Path: data, Err: err}
	}
	defer unix.Close(dfd)
	if create {
		if err := unix.Mkdirat(dfd, base, 0o700); err != nil && err != unix.EEXIST {
			return nil, "", &iofs.PathError{Op: "mkdir", Path: authPath, Err: err}
		}
	}
	fd, err := unix.Openat(dfd, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if err == unix.ELOOP || err == unix.ENOTDIR {
			return nil, "", fmt.Errorf("%s is not a directory (a symlink?): refused: %w", authPath, err)
		}
		return nil, "", &iofs.PathError{Op: "open", Path: authPath, Err: err}
	}
	return os.NewFile(uintptr(fd), authPath), filepath.Base(path), nil
}

// openVerifierFile opens the verifier at path for reading, not following
// a symlink at auth/ or at the file itself.
func openVerifierFile(path string) (*os.File, error) {
	dir, name, err := openVerifierDir(path, false)
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	fd, err := unix.Openat(int(dir.Fd()), name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &iofs.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// VerifierTempPrefix starts the names of the temp files the verifier is
// written through (in VerifierDir); one left behind is a crash's leftover.
const VerifierTempPrefix = ".verifier.tmp-"

// RemoveStaleTemps deletes temp files a crash left in the verifier's
// directory (dir is the data directory). Call it only at start-up, before
// anything can be writing a verifier. It returns the names it removed.
func RemoveStaleTemps(dataDir string) ([]string, error) {
	dir, _, err := openVerifierDir(VerifierPath(dataDir), false)
	if errors.Is(err, iofs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	entries, err := dir.ReadDir(-1)
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, e := range entries {
		if e.Type().IsRegular() && strings.HasPrefix(e.Name(), VerifierTempPrefix) {
			if err := unix.Unlinkat(int(dir.Fd()), e.Name(), 0); err != nil && err != unix.ENOENT {
				return removed, &iofs.PathError{Op: "remove", Path: filepath.Join(dir.Name(), e.Name()), Err: err}
			}
			removed = append(removed, filepath.Join(VerifierDir, e.Name()))
		}
	}
	return removed, nil
}

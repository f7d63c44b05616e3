package crypto

import (
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/crypto/argon2"
)

// Verifier file layout (docs/FORMAT.md):
//
//	0  magic "MTDVRF\x00" (7) | version 0x01 (1)
//	8  kdf id (1) = 1 (Argon2id) | threads (1) | reserved, zero (2)
//	12 time (uint32 BE) | 16 memory in KiB (uint32 BE)
//	20 salt (16) | 36 key-id (8) | 44 nonce (12)
//	56 AES-256-GCM(KEK, master key) (32) | tag (16)
//
// The associated data is bytes 0..56. KEK = HKDF-SHA256(Argon2id(password,
// salt, time, memory, threads, 32), info = "mountd/v1/kek").
const (
	verifierVersion = 1
	kdfArgon2id     = 1
	saltSize        = 16
	verifierAADSize = 56
	verifierSize    = verifierAADSize + KeySize + TagSize

	// VerifierDir is the directory under the data directory that holds the
	// verifier; it is hidden from the mount.
	VerifierDir = "auth"
	// VerifierName is the verifier's file name inside VerifierDir.
	VerifierName = "verifier.bin"
)

var verifierMagic = [8]byte{'M', 'T', 'D', 'V', 'R', 'F', 0, verifierVersion}

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
	Params KDFParams
	KeyID  KeyID
	raw    [verifierSize]byte
}

// ParseVerifier parses and validates the bytes of a verifier file.
func ParseVerifier(b []byte) (*Verifier, error) {
	if len(b) != verifierSize {
		return nil, fmt.Errorf("%w: %d bytes, want %d", ErrBadVerifier, len(b), verifierSize)
	}
	if [8]byte(b[:8]) != verifierMagic {
		return nil, fmt.Errorf("%w: bad magic or version", ErrBadVerifier)
	}
	if b[8] != kdfArgon2id {
		return nil, fmt.Errorf("%w: unknown kdf %d", ErrBadVerifier, b[8])
	}
	if b[10] != 0 || b[11] != 0 {
		return nil, fmt.Errorf("%w: reserved bytes set", ErrBadVerifier)
	}
	v := &Verifier{Params: KDFParams{
		Threads:   b[9],
		Time:      binary.BigEndian.Uint32(b[12:16]),
		MemoryKiB: binary.BigEndian.Uint32(b[16:20]),
	}}
	if err := v.Params.Validate(); err != nil {
		return nil, err
	}
	copy(v.KeyID[:], b[36:44])
	copy(v.raw[:], b)
	return v, nil
}

// ReadVerifier reads and validates the verifier at path. A missing file
// gives an error wrapping both ErrNoVerifier and fs.ErrNotExist.
func ReadVerifier(path string) (*Verifier, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, iofs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %w", ErrNoVerifier, err)
		}
		return nil, err
	}
	defer f.Close()
	var b [verifierSize + 1]byte
	n, err := io.ReadFull(f, b[:])
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return ParseVerifier(b[:n])
}

// Marshal returns the file bytes of v.
func (v *Verifier) Marshal() []byte { return append([]byte(nil), v.raw[:]...) }

// argonMu keeps Argon2 to one computation at a time process-wide, so a
// flood of logins cannot multiply its memory use.
var argonMu sync.Mutex

// kek derives the key-encryption key's AEAD from the password.
func kek(password []byte, salt []byte, p KDFParams) (cipher.AEAD, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	argonMu.Lock()
	stretched := argon2.IDKey(password, salt, p.Time, p.MemoryKiB, p.Threads, KeySize)
	argonMu.Unlock()
	defer clear(stretched)
	key, err := hkdf.Key(sha256.New, stretched, nil, labelKEK, KeySize)
	if err != nil {
		return nil, fmt.Errorf("crypto: derive kek: %w", err)
	}
	defer clear(key)
	return newGCM(key)
}

// wrap builds a verifier holding mk under password.
func wrap(mk []byte, password []byte, p KDFParams) (*Verifier, error) {
	v := &Verifier{Params: p}
	b := v.raw[:]
	copy(b, verifierMagic[:])
	b[8] = kdfArgon2id
	b[9] = p.Threads
	binary.BigEndian.PutUint32(b[12:16], p.Time)
	binary.BigEndian.PutUint32(b[16:20], p.MemoryKiB)
	if _, err := rand.Read(b[20:36]); err != nil {
		return nil, fmt.Errorf("crypto: random salt: %w", err)
	}
	id, err := deriveKeyID(mk)
	if err != nil {
		return nil, err
	}
	v.KeyID = id
	copy(b[36:44], id[:])
	if _, err := rand.Read(b[44:56]); err != nil {
		return nil, fmt.Errorf("crypto: random nonce: %w", err)
	}
	a, err := kek(password, b[20:36], p)
	if err != nil {
		return nil, err
	}
	a.Seal(b[56:56], b[44:56], mk, b[:verifierAADSize])
	return v, nil
}

// unwrap decrypts the master key into dst (KeySize bytes).
func (v *Verifier) unwrap(dst []byte, password []byte) error {
	b := v.raw[:]
	a, err := kek(password, b[20:36], v.Params)
	if err != nil {
		return err
	}
	if _, err := a.Open(dst[:0], b[44:56], b[56:], b[:verifierAADSize]); err != nil {
		clear(dst)
		return ErrInvalidPassword
	}
	id, err := deriveKeyID(dst)
	if err != nil || id != v.KeyID || isZero(dst) {
		clear(dst)
		return fmt.Errorf("%w: key-id does not match the wrapped key", ErrBadVerifier)
	}
	return nil
}

// Create makes a random master key, writes a verifier for it under password
// at path (never replacing one: ErrVerifierExists), and sets the key. It is
// refused while a key is set.
func (k *Keyring) Create(path string, password []byte, p KDFParams) error {
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
	v, err := wrap(staging, password, p)
	if err != nil {
		return err
	}
	if err := writeVerifier(path, v, false); err != nil {
		return err
	}
	return k.install()
}

// Unlock sets the master key wrapped in v. A wrong password gives
// ErrInvalidPassword and leaves the Keyring as it was. If the same key is
// already set, Unlock does nothing; a different one gives ErrKeyAlreadySet.
func (k *Keyring) Unlock(v *Verifier, password []byte) error {
	k.stateMu.Lock()
	defer k.stateMu.Unlock()
	staging := k.page[stagingOff : stagingOff+KeySize]
	defer clear(staging)
	if err := v.unwrap(staging, password); err != nil {
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

// ChangePassword rewraps the master key in the verifier at path under
// newPassword with parameters p, atomically. File contents are untouched.
func ChangePassword(path string, oldPassword, newPassword []byte, p KDFParams) error {
	if err := p.Validate(); err != nil {
		return err
	}
	v, err := ReadVerifier(path)
	if err != nil {
		return err
	}
	mk, _ := allocSecret(pageSize)
	defer freeSecret(mk)
	if err := v.unwrap(mk[:KeySize], oldPassword); err != nil {
		return err
	}
	nv, err := wrap(mk[:KeySize], newPassword, p)
	if err != nil {
		return err
	}
	return writeVerifier(path, nv, true)
}

// writeVerifier writes v to path atomically: an exclusive 0600 temp file,
// fsync, then link (no overwrite) or rename (replace), then fsync of the
// directory. The directory is created 0700.
func writeVerifier(path string, v *Verifier, replace bool) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return err
	}
	tmp := filepath.Join(dir, verifierTempPrefix+hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	_, err = f.Write(v.raw[:])
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
		err = os.Rename(tmp, path)
	} else if err = os.Link(tmp, path); errors.Is(err, iofs.ErrExist) {
		return ErrVerifierExists
	}
	if err != nil {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// verifierTempPrefix starts the names of the temp files writeVerifier uses.
const verifierTempPrefix = ".verifier.tmp-"

// RemoveStaleTemps deletes temp files a crash left in the verifier's
// directory (dir is the data directory). Call it only at start-up, before
// anything can be writing a verifier. It returns the names it removed.
func RemoveStaleTemps(dataDir string) ([]string, error) {
	dir := filepath.Join(dataDir, VerifierDir)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, iofs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, e := range entries {
		if e.Type().IsRegular() && strings.HasPrefix(e.Name(), verifierTempPrefix) {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, iofs.ErrNotExist) {
				return removed, err
			}
			removed = append(removed, filepath.Join(VerifierDir, e.Name()))
		}
	}
	return removed, nil
}

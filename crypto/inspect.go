package crypto

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"reflect"

	"golang.org/x/crypto/argon2"
)

// Secrets is the key material behind a verifier's password slot, as
// Inspect recomputes it. It is for tests and forensics only (for example
// to scan a memory image for leftovers, as integration TestMemoryAfterLogout
// does): it is computed with the standard library in ordinary memory, so
// it leaves copies of everything it holds behind. The daemon never calls it.
type Secrets struct {
	// MasterKey is the unwrapped master key.
	MasterKey []byte
	// PRK is HKDF-Extract(no salt, master key): the pseudorandom key every
	// content key and the key-id are expanded from.
	PRK []byte
	// Stretched is the Argon2id output of the password.
	Stretched []byte
	// KEK is the password slot's key-encryption key, HKDF(Stretched).
	KEK []byte
}

// Inspect reads the verifier at path and recomputes, with password, the
// secrets of its password slot. A wrong password gives ErrInvalidPassword.
// For tests and forensics only (see Secrets); Wipe the result.
func Inspect(path string, password []byte) (*Secrets, error) {
	v, err := ReadVerifier(path)
	if err != nil {
		return nil, err
	}
	s := v.passwordSlot()
	p := v.Params
	st := argon2.IDKey(password, s.salt, p.Time, p.MemoryKiB, p.Threads, KeySize)
	kek, err := hkdf.Key(sha256.New, st, nil, labelKEK, KeySize)
	if err != nil {
		return nil, err
	}
	b, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	a, err := cipher.NewGCM(b)
	if err != nil {
		return nil, err
	}
	mk, err := a.Open(nil, s.nonce, s.wrapped, s.aad)
	if err != nil {
		return nil, ErrInvalidPassword
	}
	prk, err := hkdf.Extract(sha256.New, mk, nil)
	if err != nil {
		return nil, err
	}
	return &Secrets{MasterKey: mk, PRK: prk, Stretched: st, KEK: kek}, nil
}

// FileKey returns the content key of the file with id (format version 1
// and 2 alike).
func (s *Secrets) FileKey(id FileID) []byte {
	k, err := hkdf.Expand(sha256.New, s.PRK, labelContent+string(id[:]), KeySize)
	if err != nil {
		panic(err) // a 32-byte output never fails
	}
	return k
}

// Wipe zeroes every secret.
func (s *Secrets) Wipe() {
	clear(s.MasterKey)
	clear(s.PRK)
	clear(s.Stretched)
	clear(s.KEK)
}

// KeySchedule returns the AES encryption round keys of key (60 words for
// AES-256) as bytes in memory order on this machine (each word native
// endian), read from the standard library's own cipher. For tests and
// forensics: a memory image holding a schedule holds the key. The bytes
// of the key itself are its first 8 words in big-endian order.
func KeySchedule(key []byte) ([]byte, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	v := reflect.ValueOf(b)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		return nil, fmt.Errorf("crypto: aes block of unexpected type %T", b)
	}
	enc := v.Elem().FieldByName("enc")
	if !enc.IsValid() || enc.Kind() != reflect.Array || enc.Type().Elem().Kind() != reflect.Uint32 {
		return nil, fmt.Errorf("crypto: aes block %T has no enc schedule", b)
	}
	out := make([]byte, 4*enc.Len())
	for i := 0; i < enc.Len(); i++ {
		binary.NativeEndian.PutUint32(out[4*i:], uint32(enc.Index(i).Uint()))
	}
	return out, nil
}

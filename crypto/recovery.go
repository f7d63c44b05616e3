package crypto

import (
	"errors"
	"fmt"
)

// The recovery key's text form (docs/FORMAT.md, "Recovery key"), made to be
// copied by hand from paper:
//
//	32 random bytes -> 52 characters of Crockford's base32 alphabet (the
//	last 4 bits are zero) -> 13 groups of 4 characters, each a 20-bit
//	symbol -> 2 check groups -> 15 groups joined by '-'.
//
// The check groups make the 15 symbols a codeword of a Reed-Solomon code
// over GF(2^20) (x^20 + x^3 + 1, alpha = x) with parity-check rows
// (1, 1, ..., 1) and (1, alpha, ..., alpha^14): every error confined to one
// or two groups (a mistyped character, two swapped characters, two swapped
// groups) is detected, always, not just with high probability.
const (
	// RecoveryKeySize is the number of random bytes of a recovery key.
	RecoveryKeySize = 32

	rkGroupChars = 4
	rkDataGroups = 13 // ceil(32*8 / 20)
	rkGroups     = rkDataGroups + 2
	rkChars      = rkGroups * rkGroupChars
	// RecoveryKeyTextSize is the length of the formatted key, hyphens
	// included.
	RecoveryKeyTextSize = rkChars + rkGroups - 1

	gfBits  = 20
	gfPoly  = 1<<20 | 1<<3 | 1
	gfOrder = 1<<gfBits - 1
)

// rkAlphabet is Crockford's base32: no I, L, O or U. On input, O reads as
// 0 and I and L as 1, in either case.
const rkAlphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// rkValue maps an input byte to its 5-bit value, or -1.
var rkValue = func() (t [256]int8) {
	for i := range t {
		t[i] = -1
	}
	for i, c := range []byte(rkAlphabet) {
		t[c] = int8(i)
		t[c|0x20] = int8(i) // lower case (digits map onto themselves)
	}
	for _, a := range []struct{ c, v byte }{{'O', 0}, {'o', 0}, {'I', 1}, {'i', 1}, {'L', 1}, {'l', 1}} {
		t[a.c] = int8(a.v)
	}
	return t
}()

// ErrBadRecoveryKey means a recovery key's text is malformed: a character
// outside the alphabet, the wrong length, or a failed checksum (a typo).
// It says nothing about whether the key is the right one.
var ErrBadRecoveryKey = errors.New("crypto: malformed recovery key")

func gfMul(a, b uint32) uint32 {
	var r uint32
	for b != 0 {
		if b&1 != 0 {
			r ^= a
		}
		b >>= 1
		a <<= 1
		if a&(1<<gfBits) != 0 {
			a ^= gfPoly
		}
	}
	return r
}

func gfPow(a uint32, e int) uint32 {
	r := uint32(1)
	for ; e > 0; e >>= 1 {
		if e&1 != 0 {
			r = gfMul(r, a)
		}
		a = gfMul(a, a)
	}
	return r
}

func gfInv(a uint32) uint32 { return gfPow(a, gfOrder-1) }

// rkSyndromes returns sum(w_i) and sum(alpha^i * w_i).
func rkSyndromes(w []uint32) (s0, s1 uint32) {
	ai := uint32(1)
	for _, x := range w {
		s0 ^= x
		s1 ^= gfMul(ai, x)
		ai = gfMul(ai, 2)
	}
	return s0, s1
}

// FormatRecoveryKey returns the text form of a RecoveryKeySize-byte key.
// The result is a fresh slice the caller may zero.
func FormatRecoveryKey(key []byte) []byte {
	if len(key) != RecoveryKeySize {
		panic("crypto: FormatRecoveryKey: wrong key size")
	}
	var w [rkGroups]uint32
	defer clear(w[:])
	// Big-endian bit string of the key, 20 bits per group, zero-padded.
	var acc uint64
	var bits, g int
	for _, b := range key {
		acc = acc<<8 | uint64(b)
		bits += 8
		if bits >= gfBits {
			bits -= gfBits
			w[g] = uint32(acc>>bits) & gfOrder
			g++
		}
	}
	w[g] = uint32(acc<<(gfBits-bits)) & gfOrder
	acc = 0 //nolint:ineffassign // intent: the bits are key material (the compiler may drop the store)
	// Check groups c0 = w[13], c1 = w[14] with both syndromes zero:
	// c0 + c1 = s0, a^13 c0 + a^14 c1 = s1
	// => c1 = (s1 + a^13 s0) / (a^13 (1 + a)), c0 = s0 + c1.
	s0, s1 := rkSyndromes(w[:rkDataGroups])
	a13 := gfPow(2, rkDataGroups)
	c1 := gfMul(s1^gfMul(a13, s0), gfInv(gfMul(a13, 3)))
	w[rkDataGroups], w[rkDataGroups+1] = s0^c1, c1

	out := make([]byte, 0, RecoveryKeyTextSize)
	for i, x := range w {
		if i > 0 {
			out = append(out, '-')
		}
		for s := gfBits - 5; s >= 0; s -= 5 {
			out = append(out, rkAlphabet[x>>s&31])
		}
	}
	return out
}

// ParseRecoveryKey decodes the text form into dst (RecoveryKeySize bytes).
// Hyphens and white space are ignored, case does not matter, and O, I and
// L read as 0, 1 and 1. Errors wrap ErrBadRecoveryKey and say where the
// typo is when that can be told; they never quote the key.
func ParseRecoveryKey(dst, text []byte) error {
	if len(dst) != RecoveryKeySize {
		panic("crypto: ParseRecoveryKey: wrong key size")
	}
	var w [rkGroups]uint32
	defer clear(w[:])
	n := 0
	for i, c := range text {
		switch c {
		case '-', ' ', '\t', '\n', '\r':
			continue
		}
		v := rkValue[c]
		if v < 0 {
			return fmt.Errorf("%w: character %d is not in the alphabet", ErrBadRecoveryKey, i+1)
		}
		if n < rkChars {
			w[n/rkGroupChars] = w[n/rkGroupChars]<<5 | uint32(v)
		}
		n++
	}
	if n != rkChars {
		return fmt.Errorf("%w: %d characters, want %d (%d groups of %d)", ErrBadRecoveryKey, n, rkChars, rkGroups, rkGroupChars)
	}
	s0, s1 := rkSyndromes(w[:])
	if s0 != 0 || s1 != 0 {
		// One wrong group e at position i gives s0 = e, s1 = a^i e.
		if s0 != 0 {
			for i, ai := 0, uint32(1); i < rkGroups; i, ai = i+1, gfMul(ai, 2) {
				if gfMul(ai, s0) == s1 {
					return fmt.Errorf("%w: checksum mismatch; group %d is probably mistyped", ErrBadRecoveryKey, i+1)
				}
			}
		}
		return fmt.Errorf("%w: checksum mismatch; a character is mistyped or two groups are swapped", ErrBadRecoveryKey)
	}
	// The padding bits after the 256 key bits must be zero.
	const pad = rkDataGroups*gfBits - RecoveryKeySize*8
	if w[rkDataGroups-1]&(1<<pad-1) != 0 {
		return fmt.Errorf("%w: not a mountd recovery key", ErrBadRecoveryKey)
	}
	var acc uint64
	var bits, o int
	for _, x := range w[:rkDataGroups] {
		acc = acc<<gfBits | uint64(x)
		bits += gfBits
		for bits >= 8 && o < RecoveryKeySize {
			bits -= 8
			dst[o] = byte(acc >> bits)
			o++
		}
	}
	return nil
}

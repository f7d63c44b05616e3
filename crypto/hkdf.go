package crypto

import "crypto/sha256"

// HKDF-SHA256 (RFC 5869) and HMAC-SHA256 (RFC 2104) computed in locked
// memory.
//
// crypto/hkdf and crypto/hmac keep their state in heap objects: the HMAC
// pads' SHA-256 chaining values (worth the key: they compute any HMAC
// under it) and the PRK outlive the call in freed memory. Here every
// buffer is a slice of a scratch page (lockedmem.go), each SHA-256 is one
// sha256.Sum256 over a whole buffer, and what Sum256 leaves on the stack
// (its digest state and result) is wiped by running the derivation under
// onCleanStack (stack.go). TestHKDFVectors checks the results against RFC
// 5869's vectors and crypto/hkdf.

const (
	hmacBlock = 64 // SHA-256 block size
	hashSize  = sha256.Size
	// hmacScratch is the scratch hmacSHA256 needs beyond its message: the
	// inner and outer pad blocks, the inner hash, the padded key.
	hmacScratch = 3*hmacBlock + hashSize
)

// hmacSHA256 writes HMAC-SHA256(key, msg[0] || msg[1] || ...) to out
// (hashSize bytes). scratch must hold hmacScratch bytes plus the message;
// it is left zeroed. out may alias the key or a message part: both are
// copied into scratch before out is written.
func hmacSHA256(out, key, scratch []byte, msg ...[]byte) {
	n := 0
	for _, m := range msg {
		n += len(m)
	}
	if len(scratch) < hmacScratch+n {
		panic("crypto: HMAC scratch too small")
	}
	inner := scratch[:hmacBlock+n]
	outer := scratch[hmacBlock+n : hmacBlock+n+hmacBlock+hashSize]
	k0 := scratch[len(inner)+len(outer) : len(inner)+len(outer)+hmacBlock]
	defer clear(scratch[:len(inner)+len(outer)+len(k0)])

	// K0: the key, or its hash when longer than a block, zero-padded.
	if len(key) > hmacBlock {
		h := sha256.Sum256(key)
		copy(k0, h[:])
		clear(h[:])
	} else {
		copy(k0, key)
	}
	for i := range hmacBlock {
		inner[i] = k0[i] ^ 0x36
		outer[i] = k0[i] ^ 0x5c
	}
	off := hmacBlock
	for _, m := range msg {
		off += copy(inner[off:], m)
	}
	h := sha256.Sum256(inner)
	copy(outer[hmacBlock:], h[:])
	h = sha256.Sum256(outer)
	copy(out[:hashSize], h[:])
	clear(h[:])
}

// hkdfExtract writes HKDF-Extract(salt, ikm) (hashSize bytes) to prk. A
// nil salt is hashSize zero bytes, as RFC 5869 says.
func hkdfExtract(prk, salt, ikm, scratch []byte) {
	hmacSHA256(prk, salt, scratch, ikm)
}

// hkdfExpand fills out (at most 255 * hashSize bytes) with
// HKDF-Expand(prk, info). scratch must hold hmacScratch + 2*hashSize +
// len(info) + 1 bytes; it is left zeroed.
func hkdfExpand(out, prk, info, scratch []byte) {
	t := scratch[:hashSize]
	work := scratch[hashSize:]
	defer clear(t)
	var prev []byte
	for i, done := byte(1), 0; done < len(out); i++ {
		hmacSHA256(t, prk, work, prev, info, []byte{i})
		done += copy(out[done:], t)
		prev = t
	}
}

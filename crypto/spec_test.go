package crypto

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/argon2"
)

// specDecode is a second decoder written only from docs/FORMAT.md, using
// the standard library directly. It keeps the document and the code honest.
func specDecode(t *testing.T, mk, file []byte) []byte {
	t.Helper()
	if len(file) == 0 {
		return nil
	}
	if string(file[:7]) != "MTDENC\x00" || (file[7] != 1 && file[7] != 2) {
		t.Fatal("spec: magic")
	}
	keyID, _ := hkdf.Key(sha256.New, mk, nil, "mountd/v1/key-id", 8)
	if string(file[8:16]) != string(keyID) {
		t.Fatal("spec: key-id")
	}
	fileKey, _ := hkdf.Key(sha256.New, mk, nil, "mountd/v1/content"+string(file[16:32]), 32)
	blk, _ := aes.NewCipher(fileKey)
	gcm, _ := cipher.NewGCM(blk)
	if file[7] == 2 {
		return specDecodeV2(t, gcm, file)
	}
	var out []byte
	body := file[32:]
	for i := uint64(0); len(body) > 0; i++ {
		n := min(len(body), 4096+28)
		aad := binary.BigEndian.AppendUint64(append([]byte(nil), file[:32]...), i)
		pt, err := gcm.Open(nil, body[:12], body[12:n], aad)
		if err != nil {
			t.Fatalf("spec: block %d: %v", i, err)
		}
		out = append(out, pt...)
		body = body[n:]
	}
	return out
}

// specDecodeV2 decodes a version 2 file (FORMAT.md, section 2.1).
func specDecodeV2(t *testing.T, gcm cipher.AEAD, file []byte) []byte {
	if len(file) == 32 {
		return nil
	}
	pages, r := len(file)/4096, len(file)%4096
	var out []byte
	for i := 0; i < pages; i++ {
		slot, max := file[i*4096:(i+1)*4096], 4064
		if i == 0 {
			slot, max = file[32:4096], 4032
		}
		n := int(binary.BigEndian.Uint16(slot[0:2]))
		if slot[2] != 0 || slot[3] != 0 || n < 1 || n > max {
			t.Fatalf("spec: block %d: length field %x", i, slot[:4])
		}
		aad := append(binary.BigEndian.AppendUint64(append([]byte(nil), file[:32]...), uint64(i)), slot[:4]...)
		pt, err := gcm.Open(nil, slot[4:16], slot[16:16+n+16], aad)
		if err != nil {
			t.Fatalf("spec: block %d: %v", i, err)
		}
		if i < pages-1 {
			if n != max {
				t.Fatalf("spec: block %d holds %d bytes, not %d", i, n, max)
			}
		} else {
			if r < 1 || r > n {
				t.Fatalf("spec: %d bytes past the last page, its block holds %d", r, n)
			}
			pt = pt[:r]
		}
		out = append(out, pt...)
	}
	return out
}

func specUnwrap(t *testing.T, v, password []byte) []byte {
	t.Helper()
	time := binary.BigEndian.Uint32(v[12:16])
	mem := binary.BigEndian.Uint32(v[16:20])
	stretched := argon2.IDKey(password, v[20:36], time, mem, v[9], 32)
	kek, _ := hkdf.Key(sha256.New, stretched, nil, "mountd/v1/kek", 32)
	blk, _ := aes.NewCipher(kek)
	gcm, _ := cipher.NewGCM(blk)
	mk, err := gcm.Open(nil, v[44:56], v[56:], v[:56])
	if err != nil {
		t.Fatalf("spec: unwrap: %v", err)
	}
	return mk
}

// specGCMOpen is AES-256-GCM open with a 12-byte nonce.
func specGCMOpen(t *testing.T, key, nonce, ct, aad []byte) []byte {
	t.Helper()
	blk, _ := aes.NewCipher(key)
	gcm, _ := cipher.NewGCM(blk)
	pt, err := gcm.Open(nil, nonce, ct, aad)
	if err != nil {
		t.Fatalf("spec: open: %v", err)
	}
	return pt
}

// specUnwrapV2 unwraps the master key of a version 2 verifier from its
// password slot (password) and from its recovery slot (recovery, raw key
// bytes), and checks that both give the same key, with the key-id.
func specUnwrapV2(t *testing.T, v, password, recovery []byte) []byte {
	t.Helper()
	if string(v[:8]) != "MTDVRF\x00\x02" || v[16] != 2 || string(v[17:20]) != "\x00\x00\x00" {
		t.Fatal("spec: v2 header")
	}
	var fromPassword, fromRecovery []byte
	off := 20
	for n := 0; n < int(v[16]); n++ {
		switch v[off] {
		case 1: // password slot, 88 bytes
			s := v[off : off+88]
			if s[1] != 1 || s[3] != 0 {
				t.Fatal("spec: password slot")
			}
			time := binary.BigEndian.Uint32(s[4:8])
			mem := binary.BigEndian.Uint32(s[8:12])
			stretched := argon2.IDKey(password, s[12:28], time, mem, s[2], 32)
			kek, _ := hkdf.Key(sha256.New, stretched, nil, "mountd/v1/kek", 32)
			aad := append(append([]byte(nil), v[:16]...), s[:40]...)
			fromPassword = specGCMOpen(t, kek, s[28:40], s[40:88], aad)
			off += 88
		case 2: // recovery slot, 80 bytes
			s := v[off : off+80]
			kek, _ := hkdf.Key(sha256.New, recovery, s[4:20], "mountd/v2/recovery", 32)
			aad := append(append([]byte(nil), v[:16]...), s[:32]...)
			fromRecovery = specGCMOpen(t, kek, s[20:32], s[32:80], aad)
			off += 80
		default:
			t.Fatalf("spec: slot type %d", v[off])
		}
	}
	if off != len(v) || string(fromPassword) != string(fromRecovery) {
		t.Fatal("spec: slots disagree")
	}
	keyID, _ := hkdf.Key(sha256.New, fromPassword, nil, "mountd/v1/key-id", 8)
	if string(keyID) != string(v[8:16]) {
		t.Fatal("spec: key-id")
	}
	return fromPassword
}

// specRecoveryKey decodes the text form of a recovery key as FORMAT.md
// describes it, checks its two check groups, and returns the 32 bytes.
func specRecoveryKey(t *testing.T, text string) []byte {
	t.Helper()
	const alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
	var syms []uint64
	for _, c := range strings.ToUpper(strings.ReplaceAll(strings.TrimSpace(text), "-", "")) {
		i := strings.IndexRune(alphabet, c)
		if i < 0 {
			t.Fatalf("spec: character %q", c)
		}
		syms = append(syms, uint64(i))
	}
	if len(syms) != 60 {
		t.Fatalf("spec: %d characters", len(syms))
	}
	// GF(2^20): carry-less product, then reduction by x^20 + x^3 + 1.
	mul := func(a, b uint64) uint64 {
		var p uint64
		for i := 0; i < 20; i++ {
			if b>>i&1 == 1 {
				p ^= a << i
			}
		}
		for i := 39; i >= 20; i-- {
			if p>>i&1 == 1 {
				p ^= (1<<20 | 1<<3 | 1) << (i - 20)
			}
		}
		return p
	}
	var s0, s1 uint64
	weight := uint64(1)
	bits := new(big.Int)
	for g := 0; g < 15; g++ {
		w := syms[4*g]<<15 | syms[4*g+1]<<10 | syms[4*g+2]<<5 | syms[4*g+3]
		s0 ^= w
		s1 ^= mul(weight, w)
		weight = mul(weight, 2)
		if g < 13 {
			bits.Lsh(bits, 20).Or(bits, new(big.Int).SetUint64(w))
		}
	}
	if s0 != 0 || s1 != 0 {
		t.Fatal("spec: recovery key checksum")
	}
	if bits.Bit(0)|bits.Bit(1)|bits.Bit(2)|bits.Bit(3) != 0 {
		t.Fatal("spec: padding bits")
	}
	return bits.Rsh(bits, 4).FillBytes(make([]byte, 32))
}

func TestSpecDecoder(t *testing.T) {
	v, _ := os.ReadFile("testdata/kat-verifier.bin")
	mk := specUnwrap(t, v, []byte(katPassword))
	if string(mk) != string(katKey()) {
		t.Fatal("spec unwrap gives a different key")
	}
	v2, _ := os.ReadFile("testdata/kat-verifier-v2.bin")
	text, _ := os.ReadFile("testdata/kat-recovery-key.txt")
	rk := specRecoveryKey(t, string(text))
	if string(rk) != string(katRecoveryKey()) {
		t.Fatal("spec recovery key decodes to other bytes")
	}
	if mk2 := specUnwrapV2(t, v2, []byte(katPassword), rk); string(mk2) != string(mk) {
		t.Fatal("spec v2 unwrap gives a different key")
	}
	for _, prefix := range katPrefix {
		for name := range katPlaintexts {
			enc, _ := os.ReadFile(filepath.Join("testdata", prefix+name+".enc"))
			plain, _ := os.ReadFile(filepath.Join("testdata", "kat-"+name+".plain"))
			if got := specDecode(t, mk, enc); string(got) != string(plain) {
				t.Fatalf("%s%s: spec decoder disagrees", prefix, name)
			}
		}
	}
}

// specEncode is the encoder of docs/FORMAT.md, section 2, written from the
// page alone: it lays plain out in format version v (1 or 2) under master
// key mk with the given file-id and one nonce per block, so that its output
// is a known answer for the writer: what mountd writes with those random
// values must be exactly these bytes.
func specEncode(t *testing.T, v byte, mk, fileID []byte, nonces [][]byte, plain []byte) []byte {
	t.Helper()
	keyID, _ := hkdf.Key(sha256.New, mk, nil, "mountd/v1/key-id", 8)
	header := append(append([]byte("MTDENC\x00"), v), keyID...)
	header = append(header, fileID...)
	fileKey, _ := hkdf.Key(sha256.New, mk, nil, "mountd/v1/content"+string(fileID), 32)
	blk, _ := aes.NewCipher(fileKey)
	gcm, _ := cipher.NewGCM(blk)
	out := append([]byte(nil), header...)
	if len(plain) == 0 {
		return out
	}
	// Block sizes: 4096 each in version 1; 4032, then 4064 each in version 2.
	var blocks [][]byte
	for rest, i := plain, 0; len(rest) > 0; i++ {
		n := 4096
		if v == 2 {
			n = 4064
			if i == 0 {
				n = 4032
			}
		}
		n = min(n, len(rest))
		blocks = append(blocks, rest[:n])
		rest = rest[n:]
	}
	if len(nonces) != len(blocks) {
		t.Fatalf("spec: %d nonces for %d blocks", len(nonces), len(blocks))
	}
	for i, pt := range blocks {
		aad := binary.BigEndian.AppendUint64(append([]byte(nil), header...), uint64(i))
		if v == 1 {
			out = append(out, nonces[i]...)
			out = gcm.Seal(out, nonces[i], pt, aad)
			continue
		}
		meta := []byte{byte(len(pt) >> 8), byte(len(pt)), 0, 0}
		out = append(out, meta...)
		out = append(out, nonces[i]...)
		out = gcm.Seal(out, nonces[i], pt, append(aad, meta...))
		out = append(out, make([]byte, 4096*(i+1)-len(out))...) // zeros to the end of the slot
	}
	if v == 2 {
		// r bytes past the last page (a hole: zeros), r = the last block's length.
		out = append(out, make([]byte, len(blocks[len(blocks)-1]))...)
	}
	return out
}

// specNonces reads the nonce of every block of an encoded file (version 1
// or 2) whose plaintext is plainLen bytes long, from the offsets
// docs/FORMAT.md gives.
func specNonces(file []byte, plainLen int) [][]byte {
	var nonces [][]byte
	if file[7] == 1 {
		for off := 32; off < len(file); off += 4124 {
			nonces = append(nonces, file[off:off+12])
		}
		return nonces
	}
	for i := 0; plainLen > 0; i++ {
		off, n := 4096*i+4, 4064
		if i == 0 {
			off, n = 36, 4032
		}
		nonces = append(nonces, file[off:off+12])
		plainLen -= n
	}
	return nonces
}

package crypto

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"os"
	"path/filepath"
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
	if string(file[:8]) != "MTDENC\x00\x01" {
		t.Fatal("spec: magic")
	}
	keyID, _ := hkdf.Key(sha256.New, mk, nil, "mountd/v1/key-id", 8)
	if string(file[8:16]) != string(keyID) {
		t.Fatal("spec: key-id")
	}
	fileKey, _ := hkdf.Key(sha256.New, mk, nil, "mountd/v1/content"+string(file[16:32]), 32)
	blk, _ := aes.NewCipher(fileKey)
	gcm, _ := cipher.NewGCM(blk)
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

func TestSpecDecoder(t *testing.T) {
	v, _ := os.ReadFile("testdata/kat-verifier.bin")
	mk := specUnwrap(t, v, []byte(katPassword))
	if string(mk) != string(katKey()) {
		t.Fatal("spec unwrap gives a different key")
	}
	for name := range katPlaintexts {
		enc, _ := os.ReadFile(filepath.Join("testdata", "kat-"+name+".enc"))
		plain, _ := os.ReadFile(filepath.Join("testdata", "kat-"+name+".plain"))
		if got := specDecode(t, mk, enc); string(got) != string(plain) {
			t.Fatalf("%s: spec decoder disagrees", name)
		}
	}
}

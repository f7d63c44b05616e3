package crypto

import (
	"bytes"
	"encoding/hex"
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var updateKAT = flag.Bool("update-kat", false, "rewrite crypto/testdata known-answer files")

// Known-answer vectors: ciphertext files produced by this package and
// checked in. Decrypting them must keep working forever; a change that
// breaks old files fails here. Regenerate only for a new format version.
//
//	kat-<name>.enc   the encrypted file
//	kat-<name>.plain its plaintext
//	kat.key          the master key, hex
//	kat-verifier.bin a verifier wrapping that key under katPassword
const katPassword = "mountd known-answer password ü"

var katPlaintexts = map[string][]byte{
	"empty":     {},
	"short":     []byte("hello, mountd\n"),
	"oneblock":  bytes.Repeat([]byte{0x5a}, BlockSize),
	"threepart": append(bytes.Repeat([]byte("0123456789"), 1000), 'x'),
}

func katKey() []byte {
	k := make([]byte, KeySize)
	for i := range k {
		k[i] = byte(i*7 + 3)
	}
	return k
}

func TestKnownAnswer(t *testing.T) {
	dir := "testdata"
	if *updateKAT {
		writeKAT(t, dir)
	}
	keyHex, err := os.ReadFile(filepath.Join(dir, "kat.key"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := hex.DecodeString(string(bytes.TrimSpace(keyHex)))
	if err != nil || !bytes.Equal(key, katKey()) {
		t.Fatalf("kat.key: %v", err)
	}
	k := NewKeyring()
	if err := k.setKeyForTest(key); err != nil {
		t.Fatal(err)
	}
	for name := range katPlaintexts {
		t.Run(name, func(t *testing.T) {
			want, err := os.ReadFile(filepath.Join(dir, "kat-"+name+".plain"))
			if err != nil {
				t.Fatal(err)
			}
			b, err := os.Open(filepath.Join(dir, "kat-"+name+".enc"))
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			f, err := OpenFile(k, b)
			if err != nil {
				t.Fatal(err)
			}
			if got := readAll(t, f); !bytes.Equal(got, want) {
				t.Fatalf("decrypted %d bytes, differs from %d-byte plaintext", len(got), len(want))
			}
		})
	}
	t.Run("verifier", func(t *testing.T) {
		v, err := ReadVerifier(filepath.Join(dir, "kat-verifier.bin"))
		if err != nil {
			t.Fatal(err)
		}
		k2 := NewKeyring()
		if err := k2.Unlock(v, []byte(katPassword)); err != nil {
			t.Fatal(err)
		}
		id1, _ := k.KeyID()
		id2, _ := k2.KeyID()
		if id1 != id2 {
			t.Fatal("verifier unwraps a different key")
		}
	})
}

func writeKAT(t *testing.T, dir string) {
	t.Helper()
	os.MkdirAll(dir, 0o755)
	k := NewKeyring()
	if err := k.setKeyForTest(katKey()); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "kat.key"), []byte(hex.EncodeToString(katKey())+"\n"), 0o644)
	for name, plain := range katPlaintexts {
		p := filepath.Join(dir, "kat-"+name+".enc")
		os.Remove(p)
		b, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		f, err := CreateFile(k, b)
		if err == nil {
			_, err = f.WriteAt(plain, 0)
		}
		b.Close()
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, "kat-"+name+".plain"), plain, 0o644)
	}
	v, err := wrap(katKey(), []byte(katPassword), testKDF)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "kat-verifier.bin"), v.Marshal(), 0o644)
}

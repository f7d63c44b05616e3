package crypto

import (
	"bytes"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	iofs "io/fs"
	"os"
	"path/filepath"
	"testing"
)

var updateKAT = flag.Bool("update-kat", false, "rewrite crypto/testdata known-answer files")

// Known-answer vectors: ciphertext files produced by this package and
// checked in. Decrypting them must keep working forever; a change that
// breaks old files fails here.
//
//	kat-<name>.enc   a version 1 file (frozen)
//	kat2-<name>.enc  a version 2 file
//	kat-<name>.plain its plaintext
//	kat.key             the master key, hex
//	kat-verifier.bin    a version 1 verifier wrapping that key under katPassword
//	kat-verifier-v2.bin a version 2 verifier wrapping it under katPassword
//	                    (password slot) and the recovery key in
//	kat-recovery-key.txt (recovery slot), whose raw bytes are katRecoveryKey
//
// -update-kat writes only the files that are missing: vectors once checked
// in are never regenerated (random nonces would change them). Content
// files are written in the current version (Version).
const katPassword = "mountd known-answer password ü"

var katPlaintexts = map[string][]byte{
	"empty":     {},
	"short":     []byte("hello, mountd\n"),
	"oneblock":  bytes.Repeat([]byte{0x5a}, BlockSize),
	"threepart": append(bytes.Repeat([]byte("0123456789"), 1000), 'x'),
}

func katRecoveryKey() []byte {
	k := make([]byte, RecoveryKeySize)
	for i := range k {
		k[i] = byte(i*11 + 5)
	}
	return k
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
	for v, prefix := range katPrefix {
		for name := range katPlaintexts {
			t.Run(prefix+name, func(t *testing.T) {
				want, err := os.ReadFile(filepath.Join(dir, "kat-"+name+".plain"))
				if err != nil {
					t.Fatal(err)
				}
				b, err := os.Open(filepath.Join(dir, prefix+name+".enc"))
				if err != nil {
					t.Fatal(err)
				}
				defer b.Close()
				f, err := OpenFile(k, b)
				if err != nil {
					t.Fatal(err)
				}
				if f.Header().Version != v {
					t.Fatalf("version %d, want %d", f.Header().Version, v)
				}
				if got := readAll(t, f); !bytes.Equal(got, want) {
					t.Fatalf("decrypted %d bytes, differs from %d-byte plaintext", len(got), len(want))
				}
				if err := f.Verify(func(d Damage) error { return fmt.Errorf("damage %+v", d) }); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
	id, _ := k.KeyID()
	unlocked := func(t *testing.T, k2 *Keyring) {
		t.Helper()
		if id2, _ := k2.KeyID(); id2 != id {
			t.Fatal("verifier unwraps a different key")
		}
	}
	t.Run("verifier", func(t *testing.T) {
		v, err := ReadVerifier(filepath.Join(dir, "kat-verifier.bin"))
		if err != nil {
			t.Fatal(err)
		}
		if v.Version != 1 || v.Recovery {
			t.Fatalf("version %d, recovery %v", v.Version, v.Recovery)
		}
		k2 := NewKeyring()
		if err := k2.Unlock(v, []byte(katPassword)); err != nil {
			t.Fatal(err)
		}
		unlocked(t, k2)
	})
	t.Run("verifier-v2", func(t *testing.T) {
		v, err := ReadVerifier(filepath.Join(dir, "kat-verifier-v2.bin"))
		if err != nil {
			t.Fatal(err)
		}
		if v.Version != 2 || !v.Recovery || v.KeyID != id {
			t.Fatalf("version %d, recovery %v", v.Version, v.Recovery)
		}
		k2 := NewKeyring()
		if err := k2.Unlock(v, []byte(katPassword)); err != nil {
			t.Fatal(err)
		}
		unlocked(t, k2)
		text, err := os.ReadFile(filepath.Join(dir, "kat-recovery-key.txt"))
		if err != nil {
			t.Fatal(err)
		}
		if got := FormatRecoveryKey(katRecoveryKey()); string(got) != string(bytes.TrimSpace(text)) {
			t.Fatalf("recovery key text %q, want %q", text, got)
		}
		k3 := NewKeyring()
		if err := k3.UnlockRecovery(v, text); err != nil {
			t.Fatal(err)
		}
		unlocked(t, k3)
	})
}

// katPrefix names the known-answer files of each version.
var katPrefix = map[uint8]string{1: "kat-", 2: "kat2-"}

func writeKAT(t *testing.T, dir string) {
	t.Helper()
	k := NewKeyring()
	if err := k.setKeyForTest(katKey()); err != nil {
		t.Fatal(err)
	}
	// create writes name unless it exists already.
	create := func(name string, data []byte) {
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if errors.Is(err, iofs.ErrExist) {
			return
		}
		if err == nil {
			_, err = f.Write(data)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", name)
	}
	create("kat.key", []byte(hex.EncodeToString(katKey())+"\n"))
	for name, plain := range katPlaintexts {
		mb := &memBacking{}
		f, err := CreateFile(k, mb)
		if err == nil {
			_, err = f.WriteAt(plain, 0)
		}
		if err != nil {
			t.Fatal(err)
		}
		create(katPrefix[Version]+name+".enc", mb.b)
		create("kat-"+name+".plain", plain)
	}
	v, err := build(katKey(), nil, []byte(katPassword), testKDF, katRecoveryKey())
	if err != nil {
		t.Fatal(err)
	}
	create("kat-verifier-v2.bin", v.Marshal())
	create("kat-recovery-key.txt", append(FormatRecoveryKey(katRecoveryKey()), '\n'))
}

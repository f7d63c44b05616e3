package crypto

import (
	"bytes"
	"encoding/binary"
	"errors"
	iofs "io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func TestVerifierCreateUnlock(t *testing.T) {
	path := VerifierPath(t.TempDir())
	k := NewKeyring()
	if _, err := ReadVerifier(path); !errors.Is(err, ErrNoVerifier) || !errors.Is(err, iofs.ErrNotExist) {
		t.Fatalf("missing verifier: %v", err)
	}
	if err := k.Create(path, []byte("correct horse"), testKDF); err != nil {
		t.Fatal(err)
	}
	id, err := k.KeyID()
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("verifier mode: %v %v", fi.Mode(), err)
	}
	if di, _ := os.Stat(filepath.Dir(path)); di.Mode().Perm() != 0o700 {
		t.Fatalf("auth dir mode %v", di.Mode())
	}
	// Nothing stored equals the key.
	raw, _ := os.ReadFile(path)
	k.mu.RLock()
	if bytes.Contains(raw, k.page[:KeySize]) {
		t.Fatal("verifier contains the master key")
	}
	k.mu.RUnlock()
	// The creator's key is what a later unlock yields.
	v, err := ReadVerifier(path)
	if err != nil || v.KeyID != id || v.Params != testKDF {
		t.Fatalf("ReadVerifier: %+v, %v", v, err)
	}
	k2 := NewKeyring()
	if err := k2.Unlock(v, []byte("wrong horse")); !errors.Is(err, ErrInvalidPassword) {
		t.Fatalf("wrong password: %v", err)
	}
	if k2.IsSet() {
		t.Fatal("key set after a wrong password")
	}
	if err := k2.Unlock(v, []byte("correct horse")); err != nil {
		t.Fatal(err)
	}
	if id2, _ := k2.KeyID(); id2 != id {
		t.Fatal("unlocked a different key")
	}
	// Same password again: no change. Wrong password: key stays set.
	gen := k2.Generation()
	if err := k2.Unlock(v, []byte("correct horse")); err != nil || k2.Generation() != gen {
		t.Fatalf("re-unlock: %v (generation %d -> %d)", err, gen, k2.Generation())
	}
	if err := k2.Unlock(v, []byte("nope")); !errors.Is(err, ErrInvalidPassword) || !k2.IsSet() {
		t.Fatalf("wrong password while set: %v, set=%v", err, k2.IsSet())
	}
	// Create never overwrites.
	k3 := NewKeyring()
	if err := k3.Create(path, []byte("other"), testKDF); !errors.Is(err, ErrVerifierExists) {
		t.Fatalf("second create: %v", err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(raw, after) {
		t.Fatal("verifier changed by a refused create")
	}
}

func TestVerifierConcurrentCreate(t *testing.T) {
	path := VerifierPath(t.TempDir())
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = NewKeyring().Create(path, []byte{'p', byte(i)}, testKDF)
		}()
	}
	wg.Wait()
	wins := 0
	for _, err := range errs {
		switch {
		case err == nil:
			wins++
		case !errors.Is(err, ErrVerifierExists):
			t.Errorf("loser got %v, want ErrVerifierExists", err)
		}
	}
	if wins != 1 {
		t.Fatalf("%d creators won", wins)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("auth/ holds %d entries, want only the verifier", len(entries))
	}
}

func TestVerifierTampered(t *testing.T) {
	path := VerifierPath(t.TempDir())
	if err := NewKeyring().Create(path, []byte("pw"), testKDF); err != nil {
		t.Fatal(err)
	}
	good, _ := os.ReadFile(path)
	mutate := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	cases := []struct {
		name string
		b    []byte
		want error // from parsing; nil means parse succeeds and unlock must fail
	}{
		{"salt bit", mutate(func(b []byte) []byte { b[25] ^= 1; return b }), ErrInvalidPassword},
		{"time changed", mutate(func(b []byte) []byte { binary.BigEndian.PutUint32(b[12:], 3); return b }), ErrInvalidPassword},
		{"key-id bit", mutate(func(b []byte) []byte { b[40] ^= 1; return b }), ErrInvalidPassword},
		{"wrapped key bit", mutate(func(b []byte) []byte { b[60] ^= 1; return b }), ErrInvalidPassword},
		{"truncated", good[:len(good)-1], ErrBadVerifier},
		{"extended", append(append([]byte(nil), good...), 0), ErrBadVerifier},
		{"empty", nil, ErrBadVerifier},
		{"magic", mutate(func(b []byte) []byte { b[0] = 'X'; return b }), ErrBadVerifier},
		{"version", mutate(func(b []byte) []byte { b[7] = 2; return b }), ErrBadVerifier},
		{"kdf id", mutate(func(b []byte) []byte { b[8] = 2; return b }), ErrBadVerifier},
		{"huge memory", mutate(func(b []byte) []byte { binary.BigEndian.PutUint32(b[16:], 4<<20); return b }), ErrBadVerifier},
		{"weak memory", mutate(func(b []byte) []byte { binary.BigEndian.PutUint32(b[16:], 1024); return b }), ErrBadVerifier},
		{"huge time", mutate(func(b []byte) []byte { binary.BigEndian.PutUint32(b[12:], 1000); return b }), ErrBadVerifier},
		{"zero threads", mutate(func(b []byte) []byte { b[9] = 0; return b }), ErrBadVerifier},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "v.bin")
			os.WriteFile(p, tc.b, 0o600)
			v, err := ReadVerifier(p)
			if err != nil {
				if !errors.Is(err, tc.want) {
					t.Fatalf("ReadVerifier: %v, want %v", err, tc.want)
				}
				return
			}
			k := NewKeyring()
			if err := k.Unlock(v, []byte("pw")); !errors.Is(err, tc.want) {
				t.Fatalf("Unlock: %v, want %v", err, tc.want)
			}
			if k.IsSet() {
				t.Fatal("key set from a tampered verifier")
			}
		})
	}
}

func TestChangePassword(t *testing.T) {
	dir := t.TempDir()
	path := VerifierPath(dir)
	k := NewKeyring()
	if err := k.Create(path, []byte("old"), testKDF); err != nil {
		t.Fatal(err)
	}
	f, _ := newTestFile(t, k)
	f.WriteAt([]byte("kept"), 0)
	id, _ := k.KeyID()
	if err := ChangePassword(path, []byte("bad"), []byte("new"), testKDF); !errors.Is(err, ErrInvalidPassword) {
		t.Fatalf("wrong old password: %v", err)
	}
	if err := ChangePassword(path, []byte("old"), []byte("new"), testKDF); err != nil {
		t.Fatal(err)
	}
	v, _ := ReadVerifier(path)
	if v.KeyID != id {
		t.Fatal("key-id changed: the master key must be the same")
	}
	k.Clear()
	if err := k.Unlock(v, []byte("old")); !errors.Is(err, ErrInvalidPassword) {
		t.Fatalf("old password still works: %v", err)
	}
	if err := k.Unlock(v, []byte("new")); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, f); string(got) != "kept" {
		t.Fatalf("content after password change: %q", got)
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Fatalf("temp files left in auth/: %d entries", len(entries))
	}
}

func TestDefaultKDFValid(t *testing.T) {
	if err := DefaultKDFParams.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := testKDF.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestRemoveStaleTemps(t *testing.T) {
	data := t.TempDir()
	if got, err := RemoveStaleTemps(data); err != nil || len(got) != 0 {
		t.Fatalf("no auth dir: %v %v", got, err)
	}
	if err := NewKeyring().Create(VerifierPath(data), []byte("pw"), testKDF); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(data, VerifierDir, verifierTempPrefix+"0011223344556677")
	os.WriteFile(stale, []byte("half"), 0o600)
	got, err := RemoveStaleTemps(data)
	if err != nil || len(got) != 1 {
		t.Fatalf("RemoveStaleTemps = %v, %v", got, err)
	}
	if _, err := os.Stat(stale); !errors.Is(err, iofs.ErrNotExist) {
		t.Fatal("stale temp not removed")
	}
	if _, err := ReadVerifier(VerifierPath(data)); err != nil {
		t.Fatal("verifier damaged:", err)
	}
}

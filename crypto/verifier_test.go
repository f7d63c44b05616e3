package crypto

import (
	"bytes"
	"encoding/binary"
	"errors"
	iofs "io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
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

// tamperCase is a modified verifier and what reading or unlocking it gives.
type tamperCase struct {
	name string
	b    []byte
	want error // from parsing; nil means parse succeeds and unlock must fail
}

func mutator(good []byte) func(f func(b []byte) []byte) []byte {
	return func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
}

func runTamper(t *testing.T, cases []tamperCase, password string) {
	t.Helper()
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
			if tc.want == ErrBadVerifier {
				t.Fatal("ReadVerifier accepted it")
			}
			k := NewKeyring()
			if err := k.Unlock(v, []byte(password)); !errors.Is(err, tc.want) {
				t.Fatalf("Unlock: %v, want %v", err, tc.want)
			}
			if k.IsSet() {
				t.Fatal("key set from a tampered verifier")
			}
		})
	}
}

func TestVerifierTamperedV1(t *testing.T) {
	good, err := os.ReadFile("testdata/kat-verifier.bin")
	if err != nil {
		t.Fatal(err)
	}
	mutate := mutator(good)
	runTamper(t, []tamperCase{
		{"salt bit", mutate(func(b []byte) []byte { b[25] ^= 1; return b }), ErrInvalidPassword},
		{"time changed", mutate(func(b []byte) []byte { binary.BigEndian.PutUint32(b[12:], 3); return b }), ErrInvalidPassword},
		{"key-id bit", mutate(func(b []byte) []byte { b[40] ^= 1; return b }), ErrInvalidPassword},
		{"wrapped key bit", mutate(func(b []byte) []byte { b[60] ^= 1; return b }), ErrInvalidPassword},
		{"truncated", good[:len(good)-1], ErrBadVerifier},
		{"extended", append(bytes.Clone(good), 0), ErrBadVerifier},
		{"empty", nil, ErrBadVerifier},
		{"magic", mutate(func(b []byte) []byte { b[0] = 'X'; return b }), ErrBadVerifier},
		{"version", mutate(func(b []byte) []byte { b[7] = 3; return b }), ErrBadVerifier},
		{"version 2 header on a v1 body", mutate(func(b []byte) []byte { b[7] = 2; return b }), ErrBadVerifier},
		{"kdf id", mutate(func(b []byte) []byte { b[8] = 2; return b }), ErrBadVerifier},
		{"reserved", mutate(func(b []byte) []byte { b[11] = 1; return b }), ErrBadVerifier},
		{"huge memory", mutate(func(b []byte) []byte { binary.BigEndian.PutUint32(b[16:], 4<<20); return b }), ErrBadVerifier},
		{"weak memory", mutate(func(b []byte) []byte { binary.BigEndian.PutUint32(b[16:], 1024); return b }), ErrBadVerifier},
		{"huge time", mutate(func(b []byte) []byte { binary.BigEndian.PutUint32(b[12:], 1000); return b }), ErrBadVerifier},
		{"zero threads", mutate(func(b []byte) []byte { b[9] = 0; return b }), ErrBadVerifier},
	}, katPassword)
}

func TestVerifierTamperedV2(t *testing.T) {
	good, err := os.ReadFile("testdata/kat-verifier-v2.bin")
	if err != nil {
		t.Fatal(err)
	}
	const pw = v2HeaderSize // password slot offset
	const rec = pw + pwSlotSize
	mutate := mutator(good)
	runTamper(t, []tamperCase{
		{"key-id bit", mutate(func(b []byte) []byte { b[9] ^= 1; return b }), ErrInvalidPassword},
		{"password salt bit", mutate(func(b []byte) []byte { b[pw+13] ^= 1; return b }), ErrInvalidPassword},
		{"password nonce bit", mutate(func(b []byte) []byte { b[pw+30] ^= 1; return b }), ErrInvalidPassword},
		{"time changed", mutate(func(b []byte) []byte { binary.BigEndian.PutUint32(b[pw+4:], 3); return b }), ErrInvalidPassword},
		{"memory changed", mutate(func(b []byte) []byte { binary.BigEndian.PutUint32(b[pw+8:], 20*1024); return b }), ErrInvalidPassword},
		{"threads changed", mutate(func(b []byte) []byte { b[pw+2] = 2; return b }), ErrInvalidPassword},
		{"wrapped key bit", mutate(func(b []byte) []byte { b[pw+50] ^= 1; return b }), ErrInvalidPassword},
		{"tag bit", mutate(func(b []byte) []byte { b[pw+87] ^= 0x80; return b }), ErrInvalidPassword},
		{"truncated", good[:len(good)-1], ErrBadVerifier},
		{"recovery slot cut off", good[:rec], ErrBadVerifier},
		{"extended", append(bytes.Clone(good), 0), ErrBadVerifier},
		{"header only", good[:v2HeaderSize], ErrBadVerifier},
		{"slot count 0", mutate(func(b []byte) []byte { b[16] = 0; return b }), ErrBadVerifier},
		{"slot count 1", mutate(func(b []byte) []byte { b[16] = 1; return b }), ErrBadVerifier},
		{"slot count 3", mutate(func(b []byte) []byte { b[16] = 3; return b }), ErrBadVerifier},
		{"header reserved", mutate(func(b []byte) []byte { b[18] = 1; return b }), ErrBadVerifier},
		{"version 1 header on a v2 body", mutate(func(b []byte) []byte { b[7] = 1; return b }), ErrBadVerifier},
		{"password slot type", mutate(func(b []byte) []byte { b[pw] = 3; return b }), ErrBadVerifier},
		{"recovery slot first", append(append(bytes.Clone(good[:pw]), good[rec:]...), good[pw:rec]...), ErrBadVerifier},
		{"two password slots", append(bytes.Clone(good[:rec]), good[pw:rec]...), ErrBadVerifier},
		{"recovery slot type", mutate(func(b []byte) []byte { b[rec] = 9; return b }), ErrBadVerifier},
		{"recovery reserved", mutate(func(b []byte) []byte { b[rec+2] = 1; return b }), ErrBadVerifier},
		{"kdf id", mutate(func(b []byte) []byte { b[pw+1] = 2; return b }), ErrBadVerifier},
		{"password reserved", mutate(func(b []byte) []byte { b[pw+3] = 1; return b }), ErrBadVerifier},
		{"huge memory", mutate(func(b []byte) []byte { binary.BigEndian.PutUint32(b[pw+8:], 4<<20); return b }), ErrBadVerifier},
		{"weak memory", mutate(func(b []byte) []byte { binary.BigEndian.PutUint32(b[pw+8:], 1024); return b }), ErrBadVerifier},
		{"huge time", mutate(func(b []byte) []byte { binary.BigEndian.PutUint32(b[pw+4:], 1000); return b }), ErrBadVerifier},
		{"zero threads", mutate(func(b []byte) []byte { b[pw+2] = 0; return b }), ErrBadVerifier},
	}, katPassword)
}

// TestVerifierSlotsIndependent flips every bit of the v2 known-answer
// verifier: a flip in the header or the recovery slot stops the recovery
// key (a flip in the password slot does not), and flips in the header and
// password slot stop the password (a flip in the recovery slot does not).
// Slots are sealed separately so that one can be replaced without the
// other's secret.
func TestVerifierSlotsIndependent(t *testing.T) {
	good, err := os.ReadFile("testdata/kat-verifier-v2.bin")
	if err != nil {
		t.Fatal(err)
	}
	text, _ := os.ReadFile("testdata/kat-recovery-key.txt")
	const rec = v2HeaderSize + pwSlotSize
	try := func(b []byte, recovery bool) error {
		v, err := ParseVerifier(b)
		if err != nil {
			return err
		}
		k := NewKeyring()
		if recovery {
			err = k.UnlockRecovery(v, text)
		} else {
			err = k.Unlock(v, []byte(katPassword))
		}
		if err == nil && !k.IsSet() {
			t.Fatal("unlock succeeded without setting the key")
		}
		return err
	}
	for i := range good {
		for bit := 0; bit < 8; bit++ {
			b := bytes.Clone(good)
			b[i] ^= 1 << bit
			err := try(b, true)
			switch {
			case i >= v2HeaderSize && i < v2HeaderSize+12:
				// The password slot's type and KDF parameters: the
				// file may no longer parse, else the recovery key works.
				if err != nil && !errors.Is(err, ErrBadVerifier) {
					t.Fatalf("byte %d bit %d: recovery unlock gave %v", i, bit, err)
				}
			case i >= v2HeaderSize && i < rec:
				if err != nil {
					t.Fatalf("byte %d bit %d: a flip in the password slot broke the recovery slot: %v", i, bit, err)
				}
			case err == nil:
				t.Fatalf("byte %d bit %d: recovery unlock succeeded", i, bit)
			}
		}
	}
	// The password side needs a KDF run per case: a few bits per field.
	for _, i := range []int{8, 15, v2HeaderSize + 12, v2HeaderSize + 28, v2HeaderSize + 40, rec - 1, rec + 4, rec + 20, rec + 32, len(good) - 1} {
		b := bytes.Clone(good)
		b[i] ^= 0x10
		err := try(b, false)
		if inRecovery := i >= rec; inRecovery != (err == nil) {
			t.Fatalf("byte %d: password unlock gave %v", i, err)
		}
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
	stale := filepath.Join(data, VerifierDir, VerifierTempPrefix+"0011223344556677")
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

// copyKAT copies a known-answer verifier into a fresh data directory and
// returns the verifier's path there.
func copyKAT(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	path := VerifierPath(t.TempDir())
	os.MkdirAll(filepath.Dir(path), 0o700)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func mustRead(t *testing.T, path string) *Verifier {
	t.Helper()
	v, err := ReadVerifier(path)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// unlocks reports whether secret (a password, or a recovery key when
// recovery) unlocks the verifier at path, failing on errors other than a
// wrong secret.
func unlocks(t *testing.T, path string, secret string, recovery bool) bool {
	t.Helper()
	k := NewKeyring()
	var err error
	if recovery {
		err = k.UnlockRecovery(mustRead(t, path), []byte(secret))
	} else {
		err = k.Unlock(mustRead(t, path), []byte(secret))
	}
	switch {
	case err == nil:
		return true
	case errors.Is(err, ErrInvalidPassword), errors.Is(err, ErrInvalidRecoveryKey):
		return false
	}
	t.Fatalf("unlock: %v", err)
	return false
}

func TestCreateVerifierWithRecovery(t *testing.T) {
	path := VerifierPath(t.TempDir())
	rk, err := CreateVerifier(path, []byte("pw"), testKDF, true)
	if err != nil {
		t.Fatal(err)
	}
	v := mustRead(t, path)
	if v.Version != 2 || !v.Recovery || len(v.Marshal()) != v2HeaderSize+pwSlotSize+recSlotSize {
		t.Fatalf("version %d recovery %v size %d", v.Version, v.Recovery, len(v.Marshal()))
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode())
	}
	if !unlocks(t, path, "pw", false) || !unlocks(t, path, string(rk), true) {
		t.Fatal("the password or the recovery key does not unlock")
	}
	if unlocks(t, path, string(FormatRecoveryKey(randomRecoveryKey(t))), true) {
		t.Fatal("another recovery key unlocks")
	}
	if _, err := CreateVerifier(path, []byte("other"), testKDF, true); !errors.Is(err, ErrVerifierExists) {
		t.Fatalf("second create: %v", err)
	}
	// Without a recovery key: a password slot only, and no key returned.
	path2 := VerifierPath(t.TempDir())
	rk2, err := CreateVerifier(path2, []byte("pw"), testKDF, false)
	if err != nil || rk2 != nil {
		t.Fatalf("%q %v", rk2, err)
	}
	if v := mustRead(t, path2); v.Version != 2 || v.Recovery {
		t.Fatalf("version %d recovery %v", v.Version, v.Recovery)
	}
	if err := NewKeyring().UnlockRecovery(mustRead(t, path2), rk); !errors.Is(err, ErrNoRecoveryKey) {
		t.Fatalf("recovery without a slot: %v", err)
	}
}

// TestRecoveryRoundTrip: a file written under the key of a verifier made
// with a recovery key reads back after the password was reset with that
// key, under the new password; the old password stops working and the
// recovery key goes on working.
func TestRecoveryRoundTrip(t *testing.T) {
	path := VerifierPath(t.TempDir())
	rk, err := CreateVerifier(path, []byte("forgotten"), testKDF, true)
	if err != nil {
		t.Fatal(err)
	}
	k := NewKeyring()
	if err := k.Unlock(mustRead(t, path), []byte("forgotten")); err != nil {
		t.Fatal(err)
	}
	f, b := newTestFile(t, k)
	if _, err := f.WriteAt([]byte("kept across the reset"), 0); err != nil {
		t.Fatal(err)
	}
	k.Clear()
	before, _ := os.ReadFile(path)

	for _, bad := range []struct {
		text string
		want error
	}{
		{string(FormatRecoveryKey(randomRecoveryKey(t))), ErrInvalidRecoveryKey},
		{string(rk[:len(rk)-1]) + "X", ErrBadRecoveryKey},
		{"forgotten", ErrBadRecoveryKey},
	} {
		if err := ResetPassword(path, []byte(bad.text), []byte("new"), testKDF); !errors.Is(err, bad.want) {
			t.Fatalf("reset with %q: %v, want %v", bad.text, err, bad.want)
		}
		if after, _ := os.ReadFile(path); !bytes.Equal(after, before) {
			t.Fatal("a refused reset changed the verifier")
		}
	}
	if err := ResetPassword(path, rk, []byte("new"), testKDF); err != nil {
		t.Fatal(err)
	}
	if unlocks(t, path, "forgotten", false) {
		t.Fatal("the old password still works")
	}
	if !unlocks(t, path, string(rk), true) {
		t.Fatal("the recovery key stopped working")
	}
	k2 := NewKeyring()
	if err := k2.Unlock(mustRead(t, path), []byte("new")); err != nil {
		t.Fatal(err)
	}
	f2, err := OpenFile(k2, b)
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, f2); string(got) != "kept across the reset" {
		t.Fatalf("after reset: %q", got)
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Fatalf("temp files left in auth/: %d entries", len(entries))
	}
}

func TestResetPasswordWithoutRecoverySlot(t *testing.T) {
	path := copyKAT(t, "kat-verifier.bin")
	rk := FormatRecoveryKey(randomRecoveryKey(t))
	if err := ResetPassword(path, rk, []byte("new"), testKDF); !errors.Is(err, ErrNoRecoveryKey) {
		t.Fatalf("v1: %v", err)
	}
	if err := ResetPassword(VerifierPath(t.TempDir()), rk, []byte("new"), testKDF); !errors.Is(err, ErrNoVerifier) {
		t.Fatalf("no verifier: %v", err)
	}
}

// TestV1UpgradedOnPasswordChange: a version 1 verifier (the checked-in
// vector) unlocks, and a password change rewrites it as version 2 with the
// same master key.
func TestV1UpgradedOnPasswordChange(t *testing.T) {
	path := copyKAT(t, "kat-verifier.bin")
	v := mustRead(t, path)
	if v.Version != 1 || !unlocks(t, path, katPassword, false) {
		t.Fatal("the v1 vector does not unlock")
	}
	if err := ChangePassword(path, []byte(katPassword), []byte("new"), testKDF); err != nil {
		t.Fatal(err)
	}
	nv := mustRead(t, path)
	if nv.Version != 2 || nv.Recovery || nv.KeyID != v.KeyID || nv.Params != testKDF {
		t.Fatalf("after change: version %d recovery %v params %+v", nv.Version, nv.Recovery, nv.Params)
	}
	if !unlocks(t, path, "new", false) || unlocks(t, path, katPassword, false) {
		t.Fatal("wrong password accepted after the change")
	}
}

func TestSetRecoveryKey(t *testing.T) {
	// On a v1 verifier: upgraded, password slot rewrapped with its own
	// parameters.
	path := copyKAT(t, "kat-verifier.bin")
	old := mustRead(t, path)
	if _, err := SetRecoveryKey(path, []byte("wrong")); !errors.Is(err, ErrInvalidPassword) {
		t.Fatalf("wrong password: %v", err)
	}
	rk1, err := SetRecoveryKey(path, []byte(katPassword))
	if err != nil {
		t.Fatal(err)
	}
	v := mustRead(t, path)
	if v.Version != 2 || !v.Recovery || v.KeyID != old.KeyID || v.Params != old.Params {
		t.Fatalf("after SetRecoveryKey: %+v", v)
	}
	if !unlocks(t, path, katPassword, false) || !unlocks(t, path, string(rk1), true) {
		t.Fatal("password or recovery key does not unlock")
	}
	// Replacing: the password slot is kept byte for byte, the old
	// recovery key stops working.
	pwSlot := bytes.Clone(v.Marshal()[v2HeaderSize : v2HeaderSize+pwSlotSize])
	rk2, err := SetRecoveryKey(path, []byte(katPassword))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(rk1, rk2) {
		t.Fatal("same recovery key twice")
	}
	if !bytes.Equal(pwSlot, mustRead(t, path).Marshal()[v2HeaderSize:v2HeaderSize+pwSlotSize]) {
		t.Fatal("the password slot changed")
	}
	if unlocks(t, path, string(rk1), true) || !unlocks(t, path, string(rk2), true) {
		t.Fatal("old recovery key works or new one does not")
	}
	// A password change keeps the recovery slot.
	if err := ChangePassword(path, []byte(katPassword), []byte("new"), testKDF); err != nil {
		t.Fatal(err)
	}
	if !unlocks(t, path, string(rk2), true) || !unlocks(t, path, "new", false) {
		t.Fatal("recovery slot lost in a password change")
	}
}

// TestVerifierAuthSymlinkRefused: whoever may write the data directory
// swaps auth/ (or the verifier in it) for a symlink: creating, reading,
// changing the verifier and removing temp files all refuse, and nothing
// is written, read or removed where the link points.
func TestVerifierAuthSymlinkRefused(t *testing.T) {
	data, elsewhere := t.TempDir(), t.TempDir()
	// The target holds a real verifier and a file named like a temp.
	if err := NewKeyring().Create(VerifierPath(elsewhere), []byte("pw"), testKDF); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(elsewhere, VerifierDir)
	bait := filepath.Join(target, VerifierTempPrefix+"0011223344556677")
	if err := os.WriteFile(bait, []byte("not ours"), 0o600); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(VerifierPath(elsewhere))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, filepath.Join(data, VerifierDir)); err != nil {
		t.Fatal(err)
	}
	path := VerifierPath(data)
	if _, err := ReadVerifier(path); err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Errorf("ReadVerifier through a symlinked auth/: %v", err)
	}
	if _, err := CreateVerifier(path, []byte("pw2"), testKDF, false); err == nil {
		t.Error("CreateVerifier through a symlinked auth/ succeeded")
	}
	if err := ChangePassword(path, []byte("pw"), []byte("pw3"), testKDF); err == nil {
		t.Error("ChangePassword through a symlinked auth/ succeeded")
	}
	if _, err := RemoveStaleTemps(data); err == nil {
		t.Error("RemoveStaleTemps through a symlinked auth/ succeeded")
	}
	if _, err := os.Stat(bait); err != nil {
		t.Errorf("the file behind the link was removed: %v", err)
	}
	if after, err := os.ReadFile(VerifierPath(elsewhere)); err != nil || !bytes.Equal(after, before) {
		t.Errorf("the verifier behind the link changed (%v)", err)
	}
	ents, _ := os.ReadDir(target)
	if len(ents) != 2 {
		t.Errorf("files behind the link: %v", ents)
	}

	// A real auth/ whose verifier.bin is a symlink.
	data2 := t.TempDir()
	if err := os.Mkdir(filepath.Join(data2, VerifierDir), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(VerifierPath(elsewhere), VerifierPath(data2)); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadVerifier(VerifierPath(data2)); !errors.Is(err, syscall.ELOOP) {
		t.Errorf("ReadVerifier of a symlinked verifier.bin: %v", err)
	}
}

package crypto

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	mrand "math/rand/v2"
	"reflect"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"
)

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func seq(from, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(from + i)
	}
	return b
}

// TestHKDFVectors checks hkdfExtract and hkdfExpand against RFC 5869's
// SHA-256 test cases (A.1-A.3) and against crypto/hkdf on random inputs.
func TestHKDFVectors(t *testing.T) {
	sp := getSecretPage()
	defer putSecretPage(sp)
	cases := []struct {
		name            string
		ikm, salt, info []byte
		prk, okm        string
	}{
		{"A.1", bytes.Repeat([]byte{0x0b}, 22), seq(0, 13), seq(0xf0, 10),
			"077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5",
			"3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"},
		{"A.2", seq(0, 80), seq(0x60, 80), seq(0xb0, 80),
			"06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244",
			"b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71cc30c58179ec3e87c14c01d5c1f3434f1d87"},
		{"A.3", bytes.Repeat([]byte{0x0b}, 22), nil, nil,
			"19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04",
			"8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"},
	}
	for _, c := range cases {
		prk := make([]byte, hashSize)
		hkdfExtract(prk, c.salt, c.ikm, sp.b)
		if want := unhex(t, c.prk); !bytes.Equal(prk, want) {
			t.Errorf("%s: PRK %x, want %x", c.name, prk, want)
		}
		want := unhex(t, c.okm)
		okm := make([]byte, len(want))
		hkdfExpand(okm, prk, c.info, sp.b)
		if !bytes.Equal(okm, want) {
			t.Errorf("%s: OKM %x, want %x", c.name, okm, want)
		}
		if !isZero(sp.b) {
			t.Fatalf("%s: scratch not zeroed", c.name)
		}
	}

	r := mrand.New(mrand.NewPCG(1, 2))
	for i := 0; i < 500; i++ {
		rnd := func(max int) []byte {
			b := make([]byte, r.IntN(max+1))
			rand.Read(b)
			return b
		}
		ikm, salt, info := rnd(150), rnd(150), rnd(100)
		if i%5 == 0 {
			salt = nil
		}
		n := 1 + r.IntN(100)
		want, err := hkdf.Key(sha256.New, ikm, salt, string(info), n)
		if err != nil {
			t.Fatal(err)
		}
		prk := make([]byte, hashSize)
		hkdfExtract(prk, salt, ikm, sp.b)
		got := make([]byte, n)
		hkdfExpand(got, prk, info, sp.b)
		if !bytes.Equal(got, want) {
			t.Fatalf("ikm %x salt %x info %x n %d: %x, crypto/hkdf %x", ikm, salt, info, n, got, want)
		}
		mac := hmac.New(sha256.New, salt)
		mac.Write(ikm)
		if !bytes.Equal(prk, mac.Sum(nil)) {
			t.Fatal("HMAC differs from crypto/hmac")
		}
	}
}

// TestKeyIDMatchesFormat checks the key-id and content key derivations
// against crypto/hkdf, as docs/FORMAT.md specifies them.
func TestKeyIDMatchesFormat(t *testing.T) {
	mk := testKey(0x5a)
	want, _ := hkdf.Key(sha256.New, mk, nil, labelKeyID, 8)
	var id KeyID
	onCleanStack(func() { id = deriveKeyID(mk) })
	if !bytes.Equal(id[:], want) {
		t.Fatalf("key-id %x, want %x", id, want)
	}
	k := newTestKeyring(t, 0x5a)
	defer k.Clear()
	var fid FileID
	rand.Read(fid[:])
	fk, _ := hkdf.Key(sha256.New, mk, nil, labelContent+string(fid[:]), KeySize)
	ref, _ := aes.NewCipher(fk)
	refGCM, _ := cipher.NewGCM(ref)
	hold, err := k.acquire()
	if err != nil {
		t.Fatal(err)
	}
	defer hold.release()
	a, err := k.fileAEAD(&Header{KeyID: id, FileID: fid})
	if err != nil {
		t.Fatal(err)
	}
	nonce := make([]byte, NonceSize)
	if got, want := a.Seal(nil, nonce, []byte("plaintext"), nil), refGCM.Seal(nil, nonce, []byte("plaintext"), nil); !bytes.Equal(got, want) {
		t.Fatal("file cipher differs from the format's")
	}
}

// TestGCMInSlot checks that the standard library's AES-GCM can live in a
// slot: its types hold no pointers, the cipher works from the slot, the
// heap objects are zeroed, and zeroing the slot destroys it.
func TestGCMInSlot(t *testing.T) {
	checkGCMLayout()
	if !gcmLayout.inSlot {
		t.Fatalf("AES-GCM cannot live in locked memory with this Go: %s", gcmLayout.why)
	}
	t.Logf("%v: %d bytes in a %d-byte slot", gcmLayout.gcmType, gcmLayout.gcmType.Size(), slotSize)
	slot, _ := allocSecret(pageSize)
	defer freeSecret(slot)
	key := testKey(0x33)
	a, inSlot, err := newGCMIn(slot[:slotSize], key)
	if err != nil || !inSlot {
		t.Fatalf("newGCMIn: in slot %v, %v", inSlot, err)
	}
	if p := reflect.ValueOf(a).Pointer(); p != uintptr(unsafe.Pointer(&slot[0])) {
		t.Fatalf("the AEAD is at %#x, not in the slot at %p", p, &slot[0])
	}
	// The slot holds the key schedule: the key as native-endian words.
	sched, err := KeySchedule(key)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(slot[:slotSize], sched[:32]) {
		t.Fatal("the slot does not hold the key schedule")
	}
	ref, _ := aes.NewCipher(key)
	refGCM, _ := cipher.NewGCM(ref)
	nonce := make([]byte, NonceSize)
	ct := a.Seal(nil, nonce, []byte("hello, slot"), []byte("ad"))
	if !bytes.Equal(ct, refGCM.Seal(nil, nonce, []byte("hello, slot"), []byte("ad"))) {
		t.Fatal("ciphertext differs from the standard library's")
	}
	if pt, err := a.Open(nil, nonce, ct, []byte("ad")); err != nil || string(pt) != "hello, slot" {
		t.Fatalf("open: %q %v", pt, err)
	}
	clear(slot[:slotSize])
	defer func() {
		if recover() == nil {
			t.Fatal("a zeroed cipher still sealed")
		}
	}()
	a.Seal(nil, nonce, []byte("x"), nil)
}

func TestWipeValue(t *testing.T) {
	b, _ := aes.NewCipher(testKey(0x77))
	a, _ := cipher.NewGCM(b)
	wipeValue(b)
	wipeAEAD(a)
	for _, x := range []any{b, a} {
		v := reflect.ValueOf(x).Elem()
		if !v.IsZero() {
			t.Fatalf("%T not zeroed", x)
		}
	}
}

func TestSlotArena(t *testing.T) {
	before, _ := LockedBytes()
	a := newSlotArena(chunkSlots + 3)
	var got [][]byte
	for {
		s := a.alloc()
		if s == nil {
			break
		}
		if len(s) != slotSize || cap(s) != slotSize || !isZero(s) {
			t.Fatalf("slot of len %d cap %d, zero %v", len(s), cap(s), isZero(s))
		}
		for i := range s {
			s[i] = 0xee
		}
		got = append(got, s)
	}
	if len(got) != chunkSlots+3 || len(a.chunks) != 2 {
		t.Fatalf("%d slots in %d chunks, want %d in 2", len(got), len(a.chunks), chunkSlots+3)
	}
	a.put(got[5])
	if !isZero(got[5]) {
		t.Fatal("put did not zero the slot")
	}
	if s := a.alloc(); &s[0] != &got[5][0] {
		t.Fatal("a freed slot is not reused")
	}
	if now, _ := LockedBytes(); a.allLocked() && now-before != int64(len(a.chunks[0].b)+len(a.chunks[1].b)) {
		t.Fatalf("locked bytes %d -> %d", before, now)
	}
	a.release()
	if now, _ := LockedBytes(); now != before || a.alloc() == nil {
		t.Fatalf("after release: locked bytes %d (was %d)", now, before)
	}
	a.release()
}

// readStack reads n bytes at addr: a part of the calling goroutine's own
// stack below its frame.
//
//go:nocheckptr
func readStack(addr uintptr, n int) []byte {
	p := *(*unsafe.Pointer)(unsafe.Pointer(&addr)) // a stack address, which the GC does not manage
	return bytes.Clone(unsafe.Slice((*byte)(p), n))
}

//go:noinline
func writeOnStack(secret []byte) uintptr {
	var buf [256]byte
	copy(buf[:], secret)
	keepStack(buf[:])
	return uintptr(unsafe.Pointer(&buf[0]))
}

// writeDeep is writeOnStack 8 KiB further down the stack, out of reach
// of the frames of readStack, called later from the same caller.
//
//go:noinline
func writeDeep(secret []byte) uintptr {
	var pad [8 << 10]byte
	keepStack(pad[:])
	return writeOnStack(secret)
}

// TestCleanStackScrubs checks that what a function run by onCleanStack
// leaves in its dead frames is zero once it returns, and (the control)
// that without onCleanStack it is still there.
func TestCleanStackScrubs(t *testing.T) {
	secret := bytes.Repeat([]byte{0xA5, 0x5A}, 128)
	done := make(chan []byte)
	go func() {
		addr := writeDeep(secret)
		done <- readStack(addr, len(secret))
	}()
	if got := <-done; !bytes.Equal(got, secret) {
		t.Fatal("control: a plain goroutine's dead frame does not hold the secret; the test cannot see anything")
	}

	var addr uintptr
	var got []byte
	cleanStackHook = func() { got = readStack(addr, len(secret)) }
	defer func() { cleanStackHook = nil }()
	onCleanStack(func() { addr = writeDeep(secret) })
	if !isZero(got) {
		t.Fatalf("dead frame after onCleanStack: %x", got)
	}

	// The real thing: a file-key derivation leaves no trace of the PRK's
	// HMAC state (checked indirectly: no 32-byte run of the stack equals
	// the derived key or the PRK).
	var lo uintptr
	cleanStackHook = func() {
		var probe [1]byte
		hi := uintptr(unsafe.Pointer(&probe[0]))
		got = readStack(lo, int(hi-lo))
	}
	mk := testKey(0x42)
	prk, _ := hkdf.Extract(sha256.New, mk, nil)
	onCleanStack(func() {
		var probe [1]byte
		lo = uintptr(unsafe.Pointer(&probe[0])) - stackWork/2
		deriveKeyID(mk)
	})
	if bytes.Contains(got, prk) || bytes.Contains(got, mk) {
		t.Fatal("the PRK or the key is left on the stack")
	}
}

// TestCleanStackNeverMoves runs derivations while the garbage collector
// runs (it shrinks stacks) and checks that no run's stack moved.
func TestCleanStackNeverMoves(t *testing.T) {
	before := stackMoves.Load()
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Go(func() {
		for !stop.Load() {
			runtime.GC()
		}
	})
	mk := testKey(0x24)
	for i := 0; i < 2000; i++ {
		onCleanStack(func() { deriveKeyID(mk) })
	}
	stop.Store(true)
	wg.Wait()
	if n := stackMoves.Load() - before; n != 0 {
		t.Fatalf("the stack moved during %d runs", n)
	}
}

func TestCleanStackPanics(t *testing.T) {
	defer func() {
		if p := recover(); p != "boom" {
			t.Fatalf("recovered %v", p)
		}
	}()
	onCleanStack(func() { panic("boom") })
}

// TestCipherCacheSweep uses more files than the cache holds, from several
// goroutines: every file reads back, the cache never holds more slots than
// its limit, and the overflow is swept.
func TestCipherCacheSweep(t *testing.T) {
	k := newTestKeyring(t, 0x61)
	k.cmu.Lock()
	k.slots.limit = 8
	k.cmu.Unlock()
	var files []*File
	for i := 0; i < 40; i++ {
		f, _ := newTestFile(t, k)
		if _, err := f.WriteAt([]byte{byte(i)}, 0); err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Go(func() {
			b := make([]byte, 1)
			for r := 0; r < 20; r++ {
				for i, f := range files {
					if _, err := f.ReadAt(b, 0); err != nil || b[0] != byte(i) {
						t.Errorf("file %d: %v %x", i, err, b)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	k.cmu.Lock()
	used := k.slots.used
	k.cmu.Unlock()
	if used > 8 {
		t.Fatalf("%d slots in use, limit 8", used)
	}
	k.Clear()
	if k.slots.used != 0 || k.slots.chunks != nil {
		t.Fatal("slots kept after Clear")
	}
}

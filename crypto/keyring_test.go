package crypto

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestClearZeroesAndIsIdempotent(t *testing.T) {
	k := newTestKeyring(t, 0xAB)
	gen := k.Generation()
	var sawLocked, sawKey bool
	k.OnClear(func() {
		// Listeners run after the keyring is locked, before the key is zeroed.
		sawLocked = !k.IsSet()
		sawKey = !isZero(k.page[mkOff : mkOff+KeySize])
	})
	k.Clear()
	if !sawLocked || !sawKey {
		t.Fatalf("listener saw locked=%v key-present=%v; want both true", sawLocked, sawKey)
	}
	if !isZero(k.page) {
		t.Fatal("key page not zero after Clear")
	}
	if k.IsSet() || k.Generation() == gen {
		t.Fatal("state not updated")
	}
	if _, err := k.KeyID(); !errors.Is(err, ErrLocked) {
		t.Fatal(err)
	}
	if _, err := k.NewHeader(); !errors.Is(err, ErrLocked) {
		t.Fatal(err)
	}
	k.Clear() // idempotent
	if k.ciphers != nil {
		t.Fatal("derived ciphers kept after Clear")
	}
}

func TestAllZeroKeyRefused(t *testing.T) {
	k := NewKeyring()
	if err := k.setKeyForTest(make([]byte, KeySize)); err == nil || k.IsSet() {
		t.Fatal("all-zero key accepted")
	}
}

func TestRedacted(t *testing.T) {
	k := newTestKeyring(t, 0x41)
	for _, s := range []string{fmt.Sprint(k), fmt.Sprintf("%+v", k), fmt.Sprintf("%#v", k)} {
		if s != "crypto.Keyring{key set}" {
			t.Fatalf("keyring prints too much: %q", s)
		}
	}
}

// TestClearRacesOperations clears and re-sets the key while readers and a
// writer run; -race must stay quiet and every error must be ErrLocked.
func TestClearRacesOperations(t *testing.T) {
	k := newTestKeyring(t, 0x11)
	f, _ := newTestFile(t, k)
	data := make([]byte, 64*BlockSize)
	if _, err := f.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	var wmu sync.Mutex // the filesystem's per-inode lock
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 8*BlockSize)
			for !stop.Load() {
				wmu.Lock()
				_, err := f.ReadAt(buf, 5)
				wmu.Unlock()
				if err != nil && !errors.Is(err, ErrLocked) {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			wmu.Lock()
			_, err := f.WriteAt(data[:3*BlockSize], 1000)
			wmu.Unlock()
			if err != nil && !errors.Is(err, ErrLocked) {
				t.Error(err)
				return
			}
		}
	}()
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		k.Clear()
		if err := k.setKeyForTest(testKey(0x11)); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
}

// TestBeforeClearFlushes: the OnBeforeClear listeners run first, with the
// key set and a logout pending: reads fail with ErrLocked, writes still
// work (so what the kernel holds dirty can be written back); OnClear
// listeners run after them, locked; a Clear without a key runs neither.
func TestBeforeClearFlushes(t *testing.T) {
	k := newTestKeyring(t, 0x5C)
	f, _ := newTestFile(t, k)
	if _, err := f.WriteAt([]byte("old bytes"), 0); err != nil {
		t.Fatal(err)
	}
	var order []string
	k.OnBeforeClear(func() {
		order = append(order, "before")
		if !k.IsSet() || !k.LogoutPending() || k.Readable() {
			t.Errorf("before the lock: set %v, pending %v, readable %v", k.IsSet(), k.LogoutPending(), k.Readable())
		}
		if _, err := f.ReadAt(make([]byte, 4), 0); !errors.Is(err, ErrLocked) {
			t.Errorf("read during a pending logout: %v, want ErrLocked", err)
		}
		if _, err := f.WriteAt([]byte("new"), 0); err != nil {
			t.Errorf("write during a pending logout: %v", err)
		}
	})
	k.OnClear(func() {
		order = append(order, "clear")
		if k.IsSet() || k.LogoutPending() {
			t.Errorf("OnClear: set %v, pending %v", k.IsSet(), k.LogoutPending())
		}
	})
	k.Clear()
	k.Clear()
	if fmt.Sprint(order) != "[before clear]" {
		t.Fatalf("listeners ran %v, want [before clear]", order)
	}
	if err := k.setKeyForTest(testKey(0x5C)); err != nil {
		t.Fatal(err)
	}
	if !k.Readable() || k.LogoutPending() {
		t.Fatal("not readable after a new login")
	}
	got := make([]byte, 9)
	if _, err := f.ReadAt(got, 0); err != nil || string(got) != "new bytes" {
		t.Fatalf("after login: %q %v; the write made while the logout was pending is lost", got, err)
	}
}

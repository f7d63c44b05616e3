package fs

import (
	"os"
	"sync/atomic"
	"testing"
)

// TestActivity: Options.Activity is called by reads and writes of
// encrypted content, and by nothing else (plaintext I/O, stat, listing,
// opening without reading): the idle lock's notion of use.
func TestActivity(t *testing.T) {
	var n atomic.Int64
	e := newEnv(t, envOpts{activity: func() { n.Add(1) }})
	mustWrite(t, e.m("plain.txt"), []byte("plain"))
	mustRead(t, e.m("plain.txt"))
	if n.Load() != 0 {
		t.Fatalf("plaintext I/O counted: %d", n.Load())
	}
	mustWrite(t, e.m("a.bin"), pattern(1, 10000))
	if !e.isEncrypted("a.bin") || n.Load() == 0 {
		t.Fatalf("encrypted write not counted (encrypted=%v, %d)", e.isEncrypted("a.bin"), n.Load())
	}
	n.Store(0)
	if _, err := os.Stat(e.m("a.bin")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.ReadDir(e.mnt); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(e.m("a.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if n.Load() != 0 {
		t.Fatalf("stat, list or open counted: %d", n.Load())
	}
	buf := make([]byte, 100)
	if _, err := f.Read(buf); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if n.Load() == 0 {
		t.Fatal("encrypted read not counted")
	}
}

package autolock

import (
	"testing"
	"time"
)

// BenchmarkActivity is the cost the idle policy adds to every read and
// write of encrypted content through the mount.
func BenchmarkActivity(b *testing.B) {
	p, err := New(Options{Keys: &fakeKeys{}, IdleAfter: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	for b.Loop() {
		p.Activity()
	}
}

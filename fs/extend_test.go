package fs

import (
	"bytes"
	"errors"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestTruncateEFBIG: pjdfstest truncate/12.t and ftruncate/12.t with every
// file protected. Truncating (by path and by descriptor) to
// 999999999999999 fails with EFBIG at once: nothing is written or
// allocated (the backing file keeps its size and blocks), and the file
// keeps its size and content; so does a write that far.
func TestTruncateEFBIG(t *testing.T) {
	e := newEnv(t, envOpts{protect: []string{"*"}})
	const big = 999999999999999
	for _, initial := range []string{"", "hello world"} {
		name := "n" + string(rune('0'+len(initial)%10))
		mustWrite(t, e.m(name), []byte(initial))
		var before unix.Stat_t
		if err := unix.Stat(e.b(name), &before); err != nil {
			t.Fatal(err)
		}
		wantErrno(t, os.Truncate(e.m(name), big), syscall.EFBIG, "truncate")
		f, err := os.OpenFile(e.m(name), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		wantErrno(t, f.Truncate(big), syscall.EFBIG, "ftruncate")
		_, err = f.WriteAt([]byte("x"), big)
		wantErrno(t, err, syscall.EFBIG, "pwrite far past the end")
		if fi, err := f.Stat(); err != nil || fi.Size() != int64(len(initial)) {
			t.Errorf("%q: size after EFBIG: %v %d", initial, err, fi.Size())
		}
		f.Close()
		if got := mustRead(t, e.m(name)); string(got) != initial {
			t.Errorf("content after EFBIG: %q, want %q", got, initial)
		}
		var after unix.Stat_t
		if err := unix.Stat(e.b(name), &after); err != nil {
			t.Fatal(err)
		}
		if after.Size > before.Size+4096 || after.Blocks > before.Blocks+16 {
			t.Errorf("%q: backing file grew from %d bytes, %d blocks to %d, %d", initial, before.Size, before.Blocks, after.Size, after.Blocks)
		}
	}
}

// TestLogoutDuringExtension: a logout that comes during a multi-GiB
// ftruncate, fallocate or write past the end, or during a 1 GiB write,
// returns within 1 s (a generous correctness bound: the extension stops at
// its next chunk). The interrupted extension fails with EACCES and leaves
// the file at its old size and content; the 1 GiB write stops short, and
// what it wrote is there. The calls run in this process (no mapping of
// our own mount, so no deadlock).
func TestLogoutDuringExtension(t *testing.T) {
	const far = 4 << 30
	initial := markerData(10000) // ends inside a block
	ops := []struct {
		name string
		run  func(f *os.File) (int, error)
	}{
		{"ftruncate", func(f *os.File) (int, error) { return 0, f.Truncate(far) }},
		{"fallocate", func(f *os.File) (int, error) { return 0, unix.Fallocate(int(f.Fd()), 0, 0, far) }},
		{"pwrite far past the end", func(f *os.File) (int, error) { return f.WriteAt([]byte("far"), far) }},
		{"1 GiB write", func(f *os.File) (int, error) {
			zeros, err := unix.Mmap(-1, 0, 1<<30, unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
			if err != nil {
				return 0, err
			}
			defer unix.Munmap(zeros)
			return f.WriteAt(zeros, int64(len(initial)))
		}},
	}
	for _, op := range ops {
		t.Run(op.name, func(t *testing.T) {
			e := newEnv(t, envOpts{})
			mustWrite(t, e.m("x.bin"), initial)
			fi, err := os.Stat(e.b("x.bin"))
			if err != nil {
				t.Fatal(err)
			}
			old := fi.Size()
			f, err := os.OpenFile(e.m("x.bin"), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			type result struct {
				n   int
				err error
			}
			done := make(chan result, 1)
			go func() {
				n, err := op.run(f)
				done <- result{n, err}
			}()
			// The extension is under way once the backing file grew
			// past a chunk (external state: polled).
			waitFor(t, 30*time.Second, "the extension to start", func() bool {
				fi, err := os.Stat(e.b("x.bin"))
				return err == nil && fi.Size() > old+2<<20
			})
			start := time.Now()
			e.logout()
			if d := time.Since(start); d > time.Second {
				t.Errorf("logout during %s took %v", op.name, d)
			}
			var res result
			select {
			case res = <-done:
			case <-time.After(10 * time.Second):
				t.Fatalf("%s still running 10 s after the logout", op.name)
			}
			e.login()
			got := mustRead(t, e.m("x.bin"))
			if op.name == "1 GiB write" {
				// The write stops at the logout: a short count, or
				// EACCES (the kernel sends a large direct write as
				// parallel requests and reports any failure as the
				// whole write's). The file holds the old content and a
				// prefix of the zeros, which read back.
				if res.err != nil && !errors.Is(res.err, syscall.EACCES) || res.n >= 1<<30 {
					t.Errorf("1 GiB write: %d, %v; want a short write or EACCES", res.n, res.err)
				}
				if res.err == nil && len(got) != len(initial)+res.n {
					t.Errorf("after a short write of %d: size %d", res.n, len(got))
				}
				if len(got) < len(initial) || len(got) >= len(initial)+1<<30 ||
					!bytes.Equal(got[:len(initial)], initial) || !bytes.Equal(got[len(initial):], make([]byte, len(got)-len(initial))) {
					t.Errorf("after the interrupted write: size %d, old content or zeros differ", len(got))
				}
				return
			}
			if !errors.Is(res.err, syscall.EACCES) {
				t.Errorf("%s interrupted by logout: %d, %v; want EACCES", op.name, res.n, res.err)
			}
			if !bytes.Equal(got, initial) {
				t.Errorf("after the interrupted %s: %d bytes, want the old %d", op.name, len(got), len(initial))
			}
			if fi, err := os.Stat(e.b("x.bin")); err != nil || fi.Size() != old {
				t.Errorf("backing size %d, was %d", fi.Size(), old)
			}
		})
	}
}

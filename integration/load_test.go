package integration

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// phase tracks the key state as the test drives it: an epoch counter that
// changes on every transition, and whether the epoch is a locked one
// (logout has returned and no login has started yet).
type phase struct{ v atomic.Uint64 } // epoch<<1 | locked

func (p *phase) set(locked bool) {
	e := p.v.Load()>>1 + 1
	var l uint64
	if locked {
		l = 1
	}
	p.v.Store(e<<1 | l)
}

// lockedThroughout reports whether the key was cleared for the whole
// interval between two loads of p.
func lockedThroughout(before, after uint64) bool { return before == after && before&1 == 1 }

// TestLogoutLoginUnderLoad cycles logout/login many times while readers,
// writers and mmap readers hammer protected files through the mount.
// After a logout returns, no read may yield plaintext; nothing deadlocks;
// writes that succeeded are all on disk at the end.
func TestLogoutLoginUnderLoad(t *testing.T) {
	cycles := 100
	if s := os.Getenv("MOUNTD_LOAD_CYCLES"); s != "" {
		cycles, _ = strconv.Atoi(s)
	}
	d := newDaemon(t, "--kdf-time", "2", "--kdf-memory", "19", "--kdf-threads", "1")
	d.start()
	d.mustLogin(password)

	const nfiles, fsize = 4, 256 << 10
	secret := func(i int) []byte { return bytes.Repeat([]byte(fmt.Sprintf("PLAINTEXT-%02d-", i)), fsize/13+1)[:fsize] }
	for i := 0; i < nfiles; i++ {
		if err := os.WriteFile(filepath.Join(d.mnt, fmt.Sprintf("r%d.bin", i)), secret(i), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var ph phase
	ph.set(false)
	var stop atomic.Bool
	var wg sync.WaitGroup
	var violations, lockedReads, okReads, mmapFaults atomic.Int64
	fail := func(format string, args ...any) {
		violations.Add(1)
		t.Errorf(format, args...)
	}

	// Readers: open+read and long-lived fds.
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			path := filepath.Join(d.mnt, fmt.Sprintf("r%d.bin", r))
			buf := make([]byte, 64<<10)
			var held *os.File
			for !stop.Load() {
				before := ph.v.Load()
				var n int
				var err error
				if r%2 == 0 {
					var b []byte
					b, err = os.ReadFile(path)
					n = len(b)
				} else {
					if held == nil {
						held, err = os.Open(path)
					}
					if held != nil {
						n, err = held.ReadAt(buf, int64(rand.IntN(fsize-len(buf))))
					}
				}
				after := ph.v.Load()
				switch {
				case err == nil && n > 0 && lockedThroughout(before, after):
					fail("reader %d got %d bytes of plaintext after logout returned", r, n)
				case err != nil && !errors.Is(err, syscall.EACCES):
					fail("reader %d: unexpected error %v", r, err)
				case err != nil:
					lockedReads.Add(1)
				default:
					okReads.Add(1)
				}
			}
			if held != nil {
				held.Close()
			}
		}()
	}

	// mmap readers: a MAP_SHARED mapping touched in a loop.
	for m := 0; m < 2; m++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
			path := filepath.Join(d.mnt, fmt.Sprintf("r%d.bin", m))
			for !stop.Load() {
				f, err := os.Open(path)
				if err != nil {
					if !errors.Is(err, syscall.EACCES) {
						fail("mmap open: %v", err)
					}
					time.Sleep(time.Millisecond)
					continue
				}
				data, err := syscall.Mmap(int(f.Fd()), 0, fsize, syscall.PROT_READ, syscall.MAP_SHARED)
				f.Close()
				if err != nil {
					if !errors.Is(err, syscall.EACCES) {
						fail("mmap: %v", err)
					}
					continue
				}
				for i := 0; i < 50 && !stop.Load(); i++ {
					before := ph.v.Load()
					var sum byte
					faulted := func() (faulted bool) {
						defer func() {
							if recover() != nil {
								faulted = true
							}
						}()
						for off := rand.IntN(4096); off < fsize; off += 4096 {
							sum ^= data[off]
						}
						return false
					}()
					after := ph.v.Load()
					if faulted {
						mmapFaults.Add(1)
						break
					}
					if lockedThroughout(before, after) {
						fail("mmap reader %d read plaintext pages after logout returned", m)
					}
				}
				syscall.Munmap(data)
			}
		}()
	}

	// Writers: each owns a file and a model of it.
	type write struct {
		off, n      int
		data        []byte
		before, aft uint64 // phase around the write
		reopened    bool
	}
	type model struct {
		path   string
		hist   []write
		failed []write
		want   []byte
	}
	models := make([]*model, 2)
	for w := range models {
		models[w] = &model{path: filepath.Join(d.mnt, fmt.Sprintf("w%d.bin", w)), want: make([]byte, 0)}
		if err := os.WriteFile(models[w].path, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := models[w]
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for !stop.Load() {
				f, err := os.OpenFile(m.path, os.O_RDWR, 0)
				if err != nil {
					if !errors.Is(err, syscall.EACCES) {
						fail("writer open: %v", err)
					}
					time.Sleep(time.Millisecond)
					continue
				}
				for i := 0; i < 20; i++ {
					off := rng.IntN(len(m.want) + 8192)
					data := make([]byte, 1+rng.IntN(20000))
					for j := range data {
						data[j] = byte(rng.Uint32())
					}
					before := ph.v.Load()
					n, err := f.WriteAt(data, int64(off))
					if err != nil {
						if !errors.Is(err, syscall.EACCES) || n != 0 {
							fail("writer: %d, %v", n, err)
						}
						m.failed = append(m.failed, write{off: off, n: len(data), data: data, before: before, aft: ph.v.Load()})
						break
					}
					if end := off + n; end > len(m.want) {
						m.want = append(m.want, make([]byte, end-len(m.want))...)
					}
					copy(m.want[off:], data)
					m.hist = append(m.hist, write{off: off, n: n, data: data, before: before, aft: ph.v.Load(), reopened: i == 0})
				}
				f.Close()
			}
		}()
	}

	deadline := time.Now().Add(10 * time.Minute)
	for c := 0; c < cycles; c++ {
		if time.Now().After(deadline) {
			t.Fatalf("only %d cycles in 10 minutes", c)
		}
		// Logged in for a while (the key is not set during a login's KDF).
		time.Sleep(time.Duration(50+rand.IntN(100)) * time.Millisecond)
		start := time.Now()
		if r := d.logout(); r.Status != 200 {
			t.Fatalf("logout: %d %s", r.Status, r.Raw)
		}
		if dur := time.Since(start); dur > 5*time.Second {
			t.Fatalf("logout under load took %v", dur)
		}
		ph.set(true)
		time.Sleep(time.Duration(5+rand.IntN(30)) * time.Millisecond)
		ph.set(false)
		d.mustLogin(password)
	}
	stop.Store(true)
	waitDone := make(chan struct{})
	go func() { wg.Wait(); close(waitDone) }()
	select {
	case <-waitDone:
	case <-time.After(60 * time.Second):
		t.Fatal("workers did not finish within 60s of stop: deadlock?")
	}
	for _, m := range models {
		got, err := os.ReadFile(m.path)
		if err != nil || !bytes.Equal(got, m.want) {
			first, last := -1, -1
			for i := 0; i < min(len(got), len(m.want)); i++ {
				if got[i] != m.want[i] {
					if first < 0 {
						first = i
					}
					last = i
				}
			}
			// Differing runs, and which earlier write (if any) each run's
			// bytes come from.
			for i := first; i <= last; {
				if got[i] == m.want[i] {
					i++
					continue
				}
				j := i
				for j <= last && got[j] != m.want[j] {
					j++
				}
				src := "none"
				for k := len(m.hist) - 1; k >= 0; k-- {
					w := m.hist[k]
					if w.off <= i && w.off+w.n >= j && bytes.Equal(got[i:j], w.data[i-w.off:j-w.off]) {
						src = fmt.Sprintf("write #%d [%d,%d) phase %x->%x", k, w.off, w.off+w.n, w.before, w.aft)
						break
					}
				}
				lastw := "none"
				for k := len(m.hist) - 1; k >= 0; k-- {
					w := m.hist[k]
					if w.off <= i && w.off+w.n > i {
						lastw = fmt.Sprintf("write #%d [%d,%d) phase %x->%x", k, w.off, w.off+w.n, w.before, w.aft)
						break
					}
				}
				other := "nowhere"
				if j-i >= 16 {
					for _, om := range models {
						for k, w := range om.hist {
							if p := bytes.Index(w.data, got[i:i+16]); p >= 0 {
								other = fmt.Sprintf("%s write #%d at data offset %d (file offset %d)", filepath.Base(om.path), k, p, w.off+p)
							}
						}
						for k, w := range om.failed {
							if p := bytes.Index(w.data, got[i:i+16]); p >= 0 {
								other = fmt.Sprintf("%s FAILED write #%d [%d,%d) phase %x->%x at data offset %d (file offset %d)", filepath.Base(om.path), k, w.off, w.off+w.n, w.before, w.aft, p, w.off+p)
							}
						}
					}
				}
				t.Logf("run [%d,%d) (block %d..%d): holds %s; last write there %s; zeros %d; first 16 bytes found in %s", i, j, i/4096, (j-1)/4096, src, lastw, bytes.Count(got[i:j], []byte{0}), other)
				i = j
			}
			os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0)
			again, _ := os.ReadFile(m.path)
			t.Fatalf("%s: %d bytes, want %d (err %v): a successful write was lost (bytes %d..%d differ); after drop_caches equal=%v",
				m.path, len(got), len(m.want), err, first, last, bytes.Equal(again, m.want))
		}
	}
	t.Logf("%d cycles: %d plaintext reads, %d EACCES reads, %d mmap faults, %d violations",
		cycles, okReads.Load(), lockedReads.Load(), mmapFaults.Load(), violations.Load())
	if lockedReads.Load() == 0 || okReads.Load() == 0 {
		t.Fatal("the load never saw both states; the test exercised nothing")
	}
}

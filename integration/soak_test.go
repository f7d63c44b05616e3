package integration

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestSoak is the long run of issue 7, off by default: MOUNTD_SOAK=10m
// runs a random-operation model checker on many encrypted files for that
// long, with logout/login cycles and migrations of freshly dropped
// plaintext files, and samples the daemon's memory. Every operation that
// succeeded must be reflected in the files; memory must stay flat.
//
//	MOUNTD_SOAK=10m MOUNTD_INTEGRATION_RACE=false go test -run TestSoak -timeout 30m -v ./integration
//
// (without MOUNTD_INTEGRATION_RACE=false the daemon carries the race
// detector, which multiplies its memory).
func TestSoak(t *testing.T) {
	dur, err := time.ParseDuration(os.Getenv("MOUNTD_SOAK"))
	if err != nil || dur <= 0 {
		t.Skip("set MOUNTD_SOAK=10m to run the soak test")
	}
	d := newDaemon(t, "--kdf-time", "2", "--kdf-memory", "19", "--kdf-threads", "1")
	d.start()
	d.mustLogin(password)

	const workers, filesPer = 4, 6
	var ops, mismatches, lockedOps atomic.Int64
	var stop atomic.Bool
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 99))
			models := make([][]byte, filesPer)
			path := func(i int) string { return filepath.Join(d.mnt, fmt.Sprintf("soak-%d-%d.bin", w, i)) }
			for i := range models {
				if err := os.WriteFile(path(i), nil, 0o600); err != nil {
					t.Error(err)
					return
				}
			}
			for !stop.Load() {
				i := rng.IntN(filesPer)
				m := &models[i]
				f, err := os.OpenFile(path(i), os.O_RDWR, 0)
				if err != nil {
					if errors.Is(err, syscall.EACCES) {
						lockedOps.Add(1)
						time.Sleep(5 * time.Millisecond)
						continue
					}
					t.Errorf("open: %v", err)
					return
				}
				for k := 0; k < 10; k++ {
					ops.Add(1)
					var err error
					switch op := rng.IntN(10); {
					case op < 5: // pwrite straddling block boundaries
						off := rng.IntN(len(*m) + 3*4096)
						data := make([]byte, 1+rng.IntN(3*4096))
						for j := range data {
							data[j] = byte(rng.Uint32())
						}
						var n int
						if n, err = f.WriteAt(data, int64(off)); err == nil {
							if end := off + n; end > len(*m) {
								*m = append(*m, make([]byte, end-len(*m))...)
							}
							copy((*m)[off:], data)
						}
					case op < 6: // truncate
						size := rng.IntN(len(*m) + 2*4096)
						if err = f.Truncate(int64(size)); err == nil {
							if size > len(*m) {
								*m = append(*m, make([]byte, size-len(*m))...)
							}
							*m = (*m)[:size]
						}
					default: // read and compare
						off := rng.IntN(len(*m) + 1)
						buf := make([]byte, rng.IntN(4*4096))
						var n int
						n, err = f.ReadAt(buf, int64(off))
						if err == nil || (n < len(buf) && errors.Is(err, io.EOF)) {
							err = nil
							want := (*m)[off:min(off+len(buf), len(*m))]
							if !bytes.Equal(buf[:n], want) {
								mismatches.Add(1)
								t.Errorf("%s: read [%d,+%d) differs from the model", path(i), off, len(buf))
							}
						}
					}
					if err != nil {
						if !errors.Is(err, syscall.EACCES) {
							t.Errorf("%s: %v", path(i), err)
						}
						lockedOps.Add(1)
						break
					}
				}
				f.Close()
			}
			// Final check, logged in.
			for i := range models {
				got, err := os.ReadFile(path(i))
				if err != nil || !bytes.Equal(got, models[i]) {
					mismatches.Add(1)
					t.Errorf("%s: final content differs from the model (%d vs %d bytes, %v)", path(i), len(got), len(models[i]), err)
				}
			}
		}()
	}

	var rss []int64
	migrations, cycles := 0, 0
	deadline := time.Now().Add(dur)
	next := time.Now()
	for time.Now().Before(deadline) && !t.Failed() {
		time.Sleep(time.Duration(200+rand.IntN(800)) * time.Millisecond)
		// Logout, drop plaintext .bin files straight into the backing
		// dir, log in, and migrate them while the workers run.
		if r := d.logout(); r.Status != 200 {
			t.Fatalf("logout: %d", r.Status)
		}
		dir := filepath.Join(d.data, fmt.Sprintf("drop-%d", cycles%5))
		os.MkdirAll(dir, 0o755)
		for j := 0; j < 20; j++ {
			os.WriteFile(filepath.Join(dir, fmt.Sprintf("p%d.bin", j)), bytes.Repeat([]byte{byte(j)}, rand.IntN(20000)+1), 0o644)
		}
		time.Sleep(time.Duration(rand.IntN(50)) * time.Millisecond)
		d.mustLogin(password)
		cycles++
		if r := d.do("POST", "/api/system/encrypt_existing_files", "", ""); r.Status == 202 || r.Status == 200 {
			migrations++
		}
		if time.Now().After(next) {
			rss = append(rss, currentRSSMiB(t, d.cmd.Process.Pid))
			next = time.Now().Add(10 * time.Second)
		}
	}
	stop.Store(true)
	wg.Wait()
	// Let the last migration finish, then every dropped file must be
	// encrypted and readable.
	waitFor := time.Now().Add(2 * time.Minute)
	for {
		st := d.status(false)
		task, _ := st["task"].(map[string]any)
		if task == nil || task["state"] != "running" || time.Now().After(waitFor) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	st := d.status(true)
	t.Logf("soak %v: %d ops, %d refused while locked, %d logout/login cycles, %d migrations started, %d mismatches; files %v; RSS samples (MiB) %v; peak %d MiB",
		dur, ops.Load(), lockedOps.Load(), cycles, migrations, mismatches.Load(), st["files"], rss, peakRSSMiB(t, d.cmd.Process.Pid))
	if mismatches.Load() != 0 {
		t.Fatal("model mismatches")
	}
	if len(rss) >= 4 {
		early := max(rss[1], rss[2])
		if late := rss[len(rss)-1]; late > early+32 {
			t.Fatalf("memory grew from %d to %d MiB", early, late)
		}
	}
}

func currentRSSMiB(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/statm", pid))
	if err != nil {
		t.Fatal(err)
	}
	var size, res int64
	fmt.Sscan(string(b), &size, &res)
	return res * int64(os.Getpagesize()) >> 20
}

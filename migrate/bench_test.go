package migrate

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/task"
)

// heapPeak samples the heap in use until stop is called and returns the
// peak, in bytes.
func heapPeak() (stop func() uint64) {
	var peak atomic.Uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	})
	return func() uint64 { close(done); wg.Wait(); return peak.Load() }
}

// TestMigrateBoundedMemory: converting a large file keeps the heap small.
func TestMigrateBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 128 MiB")
	}
	e := newEnv(t, envOpts{timeout: 3 * time.Minute})
	const size = 128 << 20
	f, err := os.Create(e.b("huge.bin"))
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(pattern(1, 4096), 0)
	f.WriteAt(pattern(2, 4096), size-4096)
	f.Close()
	m := mountedMigrator(t, e, Options{})
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	stop := heapPeak()
	s := migRun(t, m)
	peak := stop()
	if s.State != task.Succeeded || s.FilesDone != 1 {
		t.Fatalf("%+v", s)
	}
	grew := int64(peak) - int64(before.HeapInuse)
	t.Logf("heap in use: %d MiB before, peak %d MiB", before.HeapInuse>>20, peak>>20)
	if grew > 48<<20 {
		t.Errorf("heap grew by %d MiB converting a %d MiB file", grew>>20, size>>20)
	}
	if !e.isEncrypted("huge.bin") {
		t.Fatal("not encrypted")
	}
}

// benchTree writes the benchmark tree under dir: many small files and a
// few large ones, all protected. It returns the total size.
func benchTree(b *testing.B, dir string, small, large int, largeSize int64) int64 {
	b.Helper()
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], 42)
	rng := rand.New(rand.NewChaCha8(key))
	buf := make([]byte, largeSize)
	rand.NewChaCha8(key).Read(buf)
	var total int64
	for i := range small {
		n := 1 + rng.IntN(64<<10)
		p := filepath.Join(dir, fmt.Sprintf("d%02d", i%20), fmt.Sprintf("s%05d.bin", i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, buf[i*997%(len(buf)-n):][:n], 0o644); err != nil {
			b.Fatal(err)
		}
		total += int64(n)
	}
	for i := range large {
		p := filepath.Join(dir, "large", fmt.Sprintf("l%d.bin", i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		buf[0] = byte(i)
		if err := os.WriteFile(p, buf, 0o644); err != nil {
			b.Fatal(err)
		}
		total += largeSize
	}
	return total
}

func timeCmd(b *testing.B, name string, args ...string) time.Duration {
	b.Helper()
	t0 := time.Now()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		b.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return time.Since(t0)
}

// BenchmarkMigrate compares the migration of a tree of many small files
// and a few large ones with `cp -a` of the same tree (and `cp -a` then
// sync, as the migration fsyncs every file), all on the same filesystem
// and from the page cache. Run with -bench Migrate -benchtime 1x; the
// environment variables MIGRATE_BENCH_SMALL, _LARGE and _LARGE_MIB change
// the tree (default 2000 small files of 1 B to 64 KiB, 6 of 32 MiB).
func BenchmarkMigrate(b *testing.B) {
	small, large, largeMiB := envInt("MIGRATE_BENCH_SMALL", 2000), envInt("MIGRATE_BENCH_LARGE", 6), envInt("MIGRATE_BENCH_LARGE_MIB", 32)
	e := newEnv(b, envOpts{timeout: 30 * time.Minute})
	src := tempDir(b, "bench-src")
	total := benchTree(b, src, small, large, int64(largeMiB)<<20)
	mib := float64(total) / (1 << 20)
	b.Logf("tree: %d small + %d x %d MiB files, %.1f MiB", small, large, largeMiB, mib)

	var cpDur, cpSyncDur, migDur time.Duration
	var peak uint64
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		unix.Sync()
		dst := filepath.Join(tempDir(b, "bench-cp"), "t")
		d := timeCmd(b, "cp", "-a", src, dst)
		cpDur += d
		t0 := time.Now()
		unix.Sync()
		cpSyncDur += d + time.Since(t0)
		// Trees are removed only at the end: on ext4 without a journal
		// (as on the CI machines), every file created within 30 s of an
		// inode removal scans past the removed inodes, which would slow
		// whichever of cp and the migration comes after a removal.

		rel := fmt.Sprintf("tree%d", i)
		timeCmd(b, "cp", "-a", src, e.b(rel))
		unix.Sync()
		m := New(e.root, e.kr, Options{Workers: envInt("MIGRATE_BENCH_WORKERS", 0)})
		runtime.GC()
		stop := heapPeak()
		b.StartTimer()
		t0 = time.Now()
		s, _, err := m.Start(b.Context())
		if err != nil {
			b.Fatal(err)
		}
		s = m.wait(s.ID)
		migDur += time.Since(t0)
		b.StopTimer()
		peak = max(peak, stop())
		m.Close()
		if s.State != task.Succeeded || s.FilesDone != int64(small+large) {
			b.Fatalf("%+v", s)
		}
		b.StartTimer()
	}
	n := float64(b.N)
	migRate := mib / (migDur.Seconds() / n)
	cpRate := mib / (cpDur.Seconds() / n)
	cpSyncRate := mib / (cpSyncDur.Seconds() / n)
	b.ReportMetric(migRate, "migrate-MiB/s")
	b.ReportMetric(cpRate, "cp-a-MiB/s")
	b.ReportMetric(cpSyncRate, "cp-a+sync-MiB/s")
	b.ReportMetric(migRate/cpRate, "ratio-cp-a")
	b.ReportMetric(migRate/cpSyncRate, "ratio-cp-a+sync")
	b.ReportMetric(float64(peak>>20), "peak-heap-MiB")
}

func envInt(name string, def int) int {
	var v int
	if _, err := fmt.Sscan(os.Getenv(name), &v); err == nil && v > 0 {
		return v
	}
	return def
}

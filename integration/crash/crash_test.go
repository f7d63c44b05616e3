package crash

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestCrash runs every workload through mountd on a recorded disk, then
// rebuilds the disk as a power cut could have left it at many points and
// checks, through a freshly started mountd on each, that everything that
// was acknowledged is there. See README.md in this directory.
func TestCrash(t *testing.T) {
	c := loadConfig(t)
	for _, fsType := range c.fsTypes {
		for _, sector := range c.sectors {
			t.Run(fmt.Sprintf("%s-%d", fsType, sector), func(t *testing.T) {
				requireTools(t, fsType)
				for _, mk := range workloads {
					w := mk(c.full)
					t.Run(w.name, func(t *testing.T) { runWorkload(t, c, fsType, sector, w) })
				}
			})
		}
	}
}

// wctx is what a workload runs with.
type wctx struct {
	mnt  string // the mountd mount
	data string // the backing data directory
	d    *daemon
	rec  *recorder
	rng  *rand.Rand
	acks []ack
}

// ack records that the operation that just returned was acknowledged.
func (w *wctx) ack(v any) { w.acks = append(w.acks, ack{flush: w.rec.lastFlush(), v: v}) }

// writeback writes a backing file's dirty pages to the disk without a
// flush and without committing its metadata, as the kernel's background
// writeback may do at any moment.
func (w *wctx) writeback(name string) error {
	f, err := os.Open(filepath.Join(w.data, name))
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WAIT_BEFORE|unix.SYNC_FILE_RANGE_WRITE|unix.SYNC_FILE_RANGE_WAIT_AFTER)
}

// cctx is what a workload's check runs with: one crash state, mounted.
type cctx struct {
	mnt, data string
	d         *daemon
	acked     []ack
	bad       []string
	notes     []string
}

func (c *cctx) fail(format string, args ...any) { c.bad = append(c.bad, fmt.Sprintf(format, args...)) }
func (c *cctx) note(format string, args ...any) {
	c.notes = append(c.notes, fmt.Sprintf(format, args...))
}

// workload is one kind of application behaviour.
type workload struct {
	name string
	// prepare writes into the backing directory before the daemon starts.
	prepare func(w *wctx) error
	// setup runs through the mount before the recorded part.
	setup func(w *wctx) error
	// run is the recorded part.
	run func(w *wctx) error
	// passwords lists the passwords that may open the verifier in a
	// state with these acks, most likely first.
	passwords func(acked []ack) []string
	// check checks one crash state.
	check func(c *cctx)
	// beforeLogin, when set, checks the crash state's backing directory
	// with the daemon started but before the check logs in (before a
	// login can change it).
	beforeLogin func(c *cctx)
	// env is added to the environment of the daemon that runs the
	// recorded part.
	env []string
}

const password = "crash harness password"

func defaultPasswords([]ack) []string { return []string{password} }

func runWorkload(t *testing.T, c config, fsType string, sector int, w *workload) {
	rec := record(t, fsType, sector, w)
	seed := fnv.New64a()
	fmt.Fprintf(seed, "%s/%s/%d", w.name, fsType, sector)
	states := genStates(rec, sector, c.maxStates, seed.Sum64())
	t.Logf("%s on %s (%d-byte atomic sectors): %d log events in the workload, %d acknowledgements, %d crash states to check",
		w.name, fsType, sector, rec.end-rec.start, len(rec.acks), len(states))

	workers := 1
	if c.full {
		workers = 2
	}
	type result struct {
		bad, notes []string
		err        error
	}
	results := make([]result, len(states))
	images := make(chan int)
	var mu sync.Mutex // guards the builder
	b := newBuilder(rec, sector)
	var wg sync.WaitGroup
	for i := 0; i < workers; i++ {
		wg.Go(func() {
			for i := range images {
				mu.Lock()
				im := b.image(states[i])
				mu.Unlock()
				bad, notes, err := checkState(t.TempDir(), fsType, im, w, rec.acked(states[i]))
				results[i] = result{bad, notes, err}
				if len(bad) > 0 && c.keep != "" {
					os.MkdirAll(c.keep, 0o755)
					im.writeFile(filepath.Join(c.keep, fmt.Sprintf("%s-%s-%d-state%d.img", w.name, fsType, sector, i)))
				}
			}
		})
	}
	for i := range states {
		images <- i
	}
	close(images)
	wg.Wait()

	byKind := map[string][2]int{} // kind -> checked, violated
	violated, errs := 0, 0
	shown := 0
	for i, r := range results {
		k := byKind[states[i].kind]
		k[0]++
		if r.err != nil {
			errs++
			t.Errorf("state %d (%s): harness error: %v", i, states[i].desc, r.err)
			continue
		}
		for _, n := range r.notes {
			t.Logf("state %d (%s): note: %s", i, states[i].desc, n)
		}
		if len(r.bad) > 0 {
			violated++
			k[1]++
			if shown < 15 {
				shown++
				t.Logf("state %d (%s):\n\t%s", i, states[i].desc, strings.Join(r.bad, "\n\t"))
			}
		}
		byKind[states[i].kind] = k
	}
	summary := fmt.Sprintf("%s on %s, %d-byte sectors: %d crash states checked (prefix %d, torn %d, subset %d), %d lost acknowledged data or could not be read",
		w.name, fsType, sector, len(states), byKind["prefix"][0], byKind["torn"][0], byKind["subset"][0], violated)
	fmt.Println("crash harness: " + summary)
	t.Log(summary)
	if violated > 0 {
		t.Errorf("%d of %d crash states violate the invariants (prefix %d/%d, torn %d/%d, subset %d/%d)", violated, len(states),
			byKind["prefix"][1], byKind["prefix"][0], byKind["torn"][1], byKind["torn"][0], byKind["subset"][1], byKind["subset"][0])
	}
}

// record runs w through mountd on a disk served by the recorder.
func record(t *testing.T, fsType string, sector int, w *workload) *recording {
	dir := t.TempDir()
	basePath := filepath.Join(dir, "base.img")
	mkfs(t, fsType, basePath)
	base, err := loadImage(basePath)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(basePath)
	rec := &recording{base: base.clone()}

	recDir, fsDir, mnt := filepath.Join(dir, "rec"), filepath.Join(dir, "fs"), filepath.Join(dir, "mnt")
	for _, d := range []string{recDir, fsDir, mnt} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	r, srv, err := mountRecorder(recDir, base)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Unmount() })
	dev := mustCmd(t, "losetup", "--direct-io=on", "--sector-size", fmt.Sprint(sector), "-f", "--show", diskPath(recDir))
	t.Cleanup(func() { cmd(time.Minute, "losetup", "-d", dev) })
	mustCmd(t, "mount", "-t", fsType, dev, fsDir)
	t.Cleanup(func() { unmount(fsDir) })
	data := filepath.Join(fsDir, "Client_Data")
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}

	wc := &wctx{mnt: mnt, data: data, rec: r, rng: rand.New(rand.NewPCG(1, 2))}
	if w.prepare != nil {
		if err := w.prepare(wc); err != nil {
			t.Fatal(err)
		}
	}
	d, err := startDaemon(data, mnt, filepath.Join(dir, "mountd.log"), w.env...)
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			d.stop()
		}
	})
	wc.d = d
	if err := d.login(password); err != nil {
		t.Fatal(err)
	}
	if w.setup != nil {
		if err := d.watch(5*time.Minute, func() error { return w.setup(wc) }); err != nil {
			t.Fatalf("setup: %v\n%s", err, d.output())
		}
	}
	syncfs(t, fsDir)
	rec.start = r.position()
	if err := d.watch(10*time.Minute, func() error { return w.run(wc) }); err != nil {
		t.Fatalf("run: %v\n%s", err, d.output())
	}
	rec.end = r.position()
	rec.acks = wc.acks
	stopped = true
	if err := d.stop(); err != nil {
		t.Fatal(err)
	}
	// Unmount now: a second mount of the same file system (the crash
	// states) would be refused (xfs: duplicate UUID).
	if err := unmount(fsDir); err != nil {
		t.Fatal(err)
	}
	rec.events = r.events()
	return rec
}

func syncfs(t *testing.T, dir string) {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		t.Fatal(err)
	}
}

// checkState writes im to a file, checks and mounts the file system on it
// as a reboot would, starts mountd on it, logs in and runs w's check.
func checkState(dir, fsType string, im *image, w *workload, acked []ack) (bad, notes []string, err error) {
	img := filepath.Join(dir, "state.img")
	if err := im.writeFile(img); err != nil {
		return nil, nil, err
	}
	defer os.Remove(img)
	if fsType == "ext4" {
		note, err := fsck(fsType, img)
		if err != nil {
			return []string{"file system beyond repair: " + err.Error()}, nil, nil
		}
		if note != "" {
			notes = append(notes, note)
		}
	}
	fsDir, mnt := filepath.Join(dir, "fs"), filepath.Join(dir, "mnt")
	os.Mkdir(fsDir, 0o700)
	os.Mkdir(mnt, 0o700)
	opts := "loop"
	if fsType == "xfs" {
		opts += ",nouuid" // parallel checks mount copies of one file system
	}
	if _, err := cmd(2*time.Minute, "mount", "-t", fsType, "-o", opts, img, fsDir); err != nil {
		return []string{"does not mount: " + err.Error()}, notes, nil
	}
	umounted := false
	defer func() {
		if !umounted {
			unmount(fsDir)
		}
	}()
	data := filepath.Join(fsDir, "Client_Data")
	d, err := startDaemon(data, mnt, filepath.Join(dir, "mountd.log"))
	if err != nil {
		return nil, notes, err
	}
	c := &cctx{mnt: mnt, data: data, d: d, acked: acked}
	if err := d.watch(5*time.Minute, func() error { check(c, w, acked); return nil }); err != nil {
		c.fail("check: %v", err)
	}
	if err := d.stop(); err != nil {
		return c.bad, c.notes, err
	}
	umounted = true
	if err := unmount(fsDir); err != nil {
		return c.bad, c.notes, err
	}
	if fsType == "xfs" {
		if _, err := fsck(fsType, img); err != nil {
			c.fail("xfs_repair -n after the check: %v", err)
		}
	}
	return c.bad, c.notes, nil
}

// check logs in and runs w's check.
func check(c *cctx, w *workload, acked []ack) {
	d := c.d
	func() {
		defer func() {
			if p := recover(); p != nil {
				c.fail("check panicked: %v", p)
			}
		}()
		if w.beforeLogin != nil {
			w.beforeLogin(c)
		}
		pws := defaultPasswords(acked)
		if w.passwords != nil {
			pws = w.passwords(acked)
		}
		var lerr error
		for _, pw := range pws {
			if lerr = d.login(pw); lerr == nil {
				break
			}
		}
		if lerr != nil {
			c.fail("no acknowledged password opens the verifier: %v", lerr)
			return
		}
		w.check(c)
	}()
}

// isEIO reports whether err is an I/O error (what mountd returns for
// content that fails authentication).
func isEIO(err error) bool { return errors.Is(err, syscall.EIO) }

package fs

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// saveLoopHelper is the body of a helper process (TestMain): it saves
// the file path n times the way many programs do, under a temporary name
// that is not a protected name's temporary (tmpXXXX, as Python's
// tempfile): create, write, fsync, close, rename onto path. It prints a
// line every 50 saves, so the test can tell progress from a hang.
func saveLoopHelper(path string, n int) int {
	dir, base := filepath.Split(path)
	for i := 1; i <= n; i++ {
		f, err := os.CreateTemp(dir, "tmp")
		if err == nil {
			data := append(bytes.Repeat(marker, 100), fmt.Sprintf("%s save %d\n", base, i)...)
			if _, err = f.Write(data); err == nil {
				err = f.Sync()
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err == nil {
				err = os.Rename(f.Name(), path)
			}
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "save %d of %s: %v\n", i, path, err)
			return 1
		}
		if i%50 == 0 || i == n {
			fmt.Printf("%d\n", i)
		}
	}
	return 0
}

// TestSaveLoopNoHang: two processes save two protected files of one
// directory in a loop, thousands of times, while the background
// conversion encrypts each save after its rename. On ext4 the temp file
// created next often gets the inode number of the plaintext the
// conversion just replaced; a conversion that told the kernel of the
// replaced name while still holding its claim on that number deadlocked
// against the create (the kernel's directory lock) and hung the mount
// (issue 17: after 249 saves). Every save must complete; a stall of two
// minutes with no save is the hang.
func TestSaveLoopNoHang(t *testing.T) {
	saves := 2000
	if testing.Short() {
		saves = 300
	}
	e := newEnv(t, envOpts{timeout: 20 * time.Minute})
	if err := os.Mkdir(e.m("docs"), 0o755); err != nil {
		t.Fatal(err)
	}
	a := e.recordAttempts()

	type progress struct {
		name string
		n    int
		err  error
	}
	ch := make(chan progress)
	quit := make(chan struct{})
	stop := sync.OnceFunc(func() { close(quit) })
	names := []string{"a.bin", "b.bin"}
	for _, name := range names {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), "MOUNTD_SAVELOOP_HELPER="+e.m("docs/"+name), "MOUNTD_SAVELOOP_N="+strconv.Itoa(saves))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		t.Cleanup(func() { _ = cmd.Process.Kill(); stop(); <-exited })
		go func() {
			defer close(exited)
			send := func(p progress) {
				select {
				case ch <- p:
				case <-quit:
				}
			}
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				n, _ := strconv.Atoi(sc.Text())
				send(progress{name: name, n: n})
			}
			_, _ = io.Copy(io.Discard, out)
			err := cmd.Wait()
			if err != nil {
				err = fmt.Errorf("%w: %s", err, stderr.Bytes())
			}
			send(progress{name: name, n: -1, err: err})
		}()
	}

	done := map[string]int{}
	running := len(names)
	stall := time.NewTimer(2 * time.Minute)
	defer stall.Stop()
	for running > 0 {
		select {
		case p := <-ch:
			if p.n < 0 {
				if p.err != nil {
					t.Fatalf("%s: %v", p.name, p.err)
				}
				running--
				continue
			}
			done[p.name] = p.n
			stall.Reset(2 * time.Minute)
		case <-stall.C:
			// Abort the FUSE connection (as the watchdog does), so
			// the helpers and the cleanup are not stuck in the hang.
			_ = unix.Unmount(e.mnt, unix.MNT_FORCE)
			t.Fatalf("hung: no save completed for two minutes (saves done: %v)", done)
		}
	}
	for _, name := range names {
		if done[name] != saves {
			t.Fatalf("%s: %d saves of %d", name, done[name], saves)
		}
	}

	// The background conversion was active, and the last saves end up
	// encrypted with their content.
	for _, name := range names {
		rel := "docs/" + name
		waitFor(t, time.Minute, rel+" to be encrypted", func() bool { return e.isEncrypted(rel) })
		want := append(bytes.Repeat(marker, 100), fmt.Sprintf("%s save %d\n", name, saves)...)
		if got := mustRead(t, e.m(rel)); !bytes.Equal(got, want) {
			t.Errorf("%s: content of the last save differs", rel)
		}
	}
	waitFor(t, time.Minute, "the converter to go idle", e.root.conv.idle)
	converted := 0
	a.mu.Lock()
	for _, at := range a.seen {
		if at.out.Done() {
			converted++
		}
	}
	a.mu.Unlock()
	t.Logf("%d saves each; %d conversions", saves, converted)
	if converted == 0 {
		t.Error("nothing was converted: the loop did not exercise the background conversion")
	}
	e.noTempFiles("docs")
}

package fs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/crypto"
)

// idle reports whether the converter has nothing queued or in progress.
func (c *converter) idle() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending) == 0 && c.active == 0
}

// attempts records the converter's attempts (rel and outcome), in order,
// and lets a test wait for one.
type attempts struct {
	t    testing.TB
	mu   sync.Mutex
	cond sync.Cond
	seen []attempt
}

type attempt struct {
	rel string
	out Outcome
}

func (e *testEnv) recordAttempts() *attempts {
	a := &attempts{t: e.t}
	a.cond.L = &a.mu
	e.root.conv.mu.Lock()
	e.root.conv.attempted = func(rel string, out Outcome) {
		a.mu.Lock()
		a.seen = append(a.seen, attempt{rel, out})
		a.cond.Broadcast()
		a.mu.Unlock()
	}
	e.root.conv.mu.Unlock()
	return a
}

// waitFor waits until an attempt on rel matches ok and returns it, and
// fails the test after a minute (the test's watchdog aborts the mount,
// but nothing would wake this wait).
func (a *attempts) waitFor(rel string, ok func(Outcome) bool) Outcome {
	a.t.Helper()
	return a.waitWithin(a.t, time.Minute, rel, ok)
}

// waitWithin is waitFor with the bound d, failing t.
func (a *attempts) waitWithin(t testing.TB, d time.Duration, rel string, ok func(Outcome) bool) Outcome {
	t.Helper()
	expired := false
	timer := time.AfterFunc(d, func() {
		a.mu.Lock()
		expired = true
		a.cond.Broadcast()
		a.mu.Unlock()
	})
	defer timer.Stop()
	a.mu.Lock()
	defer a.mu.Unlock()
	for {
		for _, at := range a.seen {
			if at.rel == rel && ok(at.out) {
				return at.out
			}
		}
		if expired {
			t.Fatalf("no attempt on %s within %v", rel, d)
		}
		a.cond.Wait()
	}
}

func (a *attempts) rels() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, at := range a.seen {
		out = append(out, at.rel)
	}
	return out
}

func (e *testEnv) noTempFiles(dir string) {
	e.t.Helper()
	ents, err := os.ReadDir(e.b(dir))
	if err != nil {
		e.t.Fatal(err)
	}
	for _, en := range ents {
		if strings.HasPrefix(en.Name(), tempPrefix) {
			e.t.Errorf("temp file left behind: %s", en.Name())
		}
	}
}

// TestAtomicSave: a plaintext file renamed onto a protected name while the
// key is set ends up encrypted, keeping its content and metadata.
func TestAtomicSave(t *testing.T) {
	e := newEnv(t, envOpts{})
	data := markerData(20000)
	mustWrite(t, e.m("tmp4821"), data)
	if err := os.Chmod(e.m("tmp4821"), 0o640); err != nil {
		t.Fatal(err)
	}
	mtime := time.Unix(1700000000, 123456789)
	if err := os.Chtimes(e.m("tmp4821"), mtime, mtime); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(e.m("tmp4821"), "user.tag", []byte("kept"), 0); err != nil {
		t.Logf("no xattrs here: %v", err)
	}
	if e.isEncrypted("tmp4821") {
		t.Fatal("temp file already encrypted")
	}
	if err := os.Rename(e.m("tmp4821"), e.m("doc.bin")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "doc.bin to be encrypted", func() bool { return e.isEncrypted("doc.bin") })
	waitFor(t, 10*time.Second, "the converter to go idle", e.root.conv.idle)
	if bytes.Contains(e.backingBytes("doc.bin"), marker) {
		t.Error("plaintext left in doc.bin")
	}
	if got := mustRead(t, e.m("doc.bin")); !bytes.Equal(got, data) {
		t.Error("doc.bin content differs after conversion")
	}
	fi, err := os.Stat(e.m("doc.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o640 || !fi.ModTime().Equal(mtime) || fi.Size() != int64(len(data)) {
		t.Errorf("metadata not kept: mode %v mtime %v size %d", fi.Mode(), fi.ModTime(), fi.Size())
	}
	buf := make([]byte, 16)
	if n, err := unix.Getxattr(e.m("doc.bin"), "user.tag", buf); err == nil && string(buf[:n]) != "kept" {
		t.Errorf("xattr %q", buf[:n])
	}
	e.noTempFiles(".")
}

// TestAtomicSaveBusy: a file still open through the mount is converted
// only after it is closed, and no write made meanwhile is lost.
func TestAtomicSaveBusy(t *testing.T) {
	e := newEnv(t, envOpts{})
	first, second := markerData(5000), bytes.Repeat([]byte("second-half."), 500)
	f, err := os.Create(e.m("held.tmp"))
	if err != nil {
		t.Fatal(err)
	}
	f.Write(first)
	att := e.recordAttempts()
	if err := os.Rename(e.m("held.tmp"), e.m("held.bin")); err != nil {
		t.Fatal(err)
	}
	att.waitFor("held.bin", func(o Outcome) bool { return errors.Is(o.Err, ErrBusy) })
	if e.isEncrypted("held.bin") {
		t.Fatal("converted while open")
	}
	f.Write(second)
	f.Close()
	waitFor(t, 10*time.Second, "held.bin to be encrypted", func() bool { return e.isEncrypted("held.bin") })
	if got := mustRead(t, e.m("held.bin")); !bytes.Equal(got, append(first, second...)) {
		t.Error("content differs: a write was lost")
	}
}

// TestAtomicSaveNotConverted: hard-linked files and non-protected names
// stay plaintext; a rename while logged out is encrypted after the login
// (issue 17: it waits, recorded, instead of staying plaintext).
func TestAtomicSaveNotConverted(t *testing.T) {
	e := newEnv(t, envOpts{})
	att := e.recordAttempts()
	mustWrite(t, e.m("hl.tmp"), marker)
	if err := os.Link(e.m("hl.tmp"), e.m("hl.other")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(e.m("hl.tmp"), e.m("hl.bin")); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, e.m("x.tmp"), marker)
	if err := os.Rename(e.m("x.tmp"), e.m("x.txt")); err != nil {
		t.Fatal(err)
	}
	e.logout()
	mustWrite(t, e.m("lo.tmp"), marker)
	if err := os.Rename(e.m("lo.tmp"), e.m("lo.bin")); err != nil {
		t.Fatal(err)
	}
	e.login()
	// hl.bin was queued (then skipped for its second name) and lo.bin
	// after the login; x.txt never was: its name is not protected.
	att.waitFor("hl.bin", func(o Outcome) bool { return o.Skip == SkipHardLinks })
	att.waitFor("lo.bin", Outcome.Done)
	waitFor(t, 30*time.Second, "the converter to go idle", e.root.conv.idle)
	for _, rel := range att.rels() {
		if rel != "hl.bin" && rel != "lo.bin" {
			t.Errorf("converter tried %s, want only hl.bin and lo.bin", rel)
		}
	}
	if !e.isEncrypted("lo.bin") {
		t.Error("lo.bin, renamed while logged out, not encrypted after the login")
	}
	for _, n := range []string{"hl.bin", "x.txt"} {
		if e.isEncrypted(n) {
			t.Errorf("%s was encrypted", n)
		}
	}
}

// TestConvertWhileReading: conversions of files that a reader keeps
// opening never make it read wrong data.
func TestConvertWhileReading(t *testing.T) {
	e := newEnv(t, envOpts{})
	const files = 12
	content := func(i int) []byte { return markerData(3000 + 4096*i) }
	for i := 0; i < files; i++ {
		mustWrite(t, e.m(fmt.Sprintf("c%d.tmp", i)), content(i))
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			for i := 0; i < files; i++ {
				select {
				case <-stop:
					return
				default:
				}
				name := fmt.Sprintf("c%d.bin", i)
				got, err := os.ReadFile(e.m(name))
				if errors.Is(err, os.ErrNotExist) {
					continue
				}
				if err != nil || !bytes.Equal(got, content(i)) {
					t.Errorf("%s: %v (%d bytes)", name, err, len(got))
					return
				}
			}
		}
	}()
	for i := 0; i < files; i++ {
		if err := os.Rename(e.m(fmt.Sprintf("c%d.tmp", i)), e.m(fmt.Sprintf("c%d.bin", i))); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 30*time.Second, "all files to be encrypted", func() bool {
		for i := 0; i < files; i++ {
			b, err := os.ReadFile(e.b(fmt.Sprintf("c%d.bin", i)))
			if errors.Is(err, os.ErrNotExist) {
				// On sshfs an open that races the commit's rename can
				// find the replaced file gone from the server.
				return false
			}
			if err != nil {
				t.Fatal(err)
			}
			if !crypto.HasMagic(b) {
				return false
			}
		}
		return true
	})
	close(stop)
	wg.Wait()
	waitFor(t, 10*time.Second, "the converter to go idle", e.root.conv.idle)
	e.noTempFiles(".")
}

// TestEncryptInPlace exercises the conversion hook directly.
func TestEncryptInPlace(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := context.Background()
	data := markerData(70000)
	if err := os.Mkdir(e.b("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, e.b("d/a.bin"), data)
	mustWrite(t, e.b("empty.bin"), nil)

	// Open through the mount: busy.
	f, err := os.Open(e.m("d/a.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if out := e.root.encryptInPlace(ctx, "d/a.bin"); !errors.Is(out.Err, ErrBusy) || !out.Retry() {
		t.Errorf("open file: %+v, want busy", out)
	}
	f.Close()
	e.waitIdle()

	if out := e.root.encryptInPlace(ctx, "d/a.bin"); !out.Done() {
		t.Fatalf("convert: %+v", out)
	}
	if !e.isEncrypted("d/a.bin") || bytes.Contains(e.backingBytes("d/a.bin"), marker) {
		t.Fatal("not encrypted")
	}
	if got := mustRead(t, e.m("d/a.bin")); !bytes.Equal(got, data) {
		t.Fatal("content differs")
	}
	// Already encrypted, empty, missing, auth/, a directory, a hard
	// link: skipped, with the reason.
	mustWrite(t, e.b("two.bin"), data)
	if err := os.Link(e.b("two.bin"), e.b("two-again.bin")); err != nil {
		t.Fatal(err)
	}
	for rel, want := range map[string]SkipReason{
		"d/a.bin": SkipEncrypted, "empty.bin": SkipEmpty, "nope.bin": SkipGone, "nodir/x.bin": SkipGone,
		"auth/verifier.bin": SkipOther, "d": SkipNotRegular, "two.bin": SkipHardLinks,
	} {
		if out := e.root.encryptInPlace(ctx, rel); out.Skip != want || out.Err != nil {
			t.Errorf("%s: %+v, want skipped (%d)", rel, out, want)
		}
	}
	// Cancelled: nothing changes, no temp file.
	mustWrite(t, e.b("d/c.bin"), data)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if out := e.root.encryptInPlace(cctx, "d/c.bin"); !errors.Is(out.Err, context.Canceled) {
		t.Errorf("cancelled: %+v", out)
	}
	if e.isEncrypted("d/c.bin") {
		t.Error("cancelled conversion changed the file")
	}
	// Logged out: ErrLocked.
	e.logout()
	if out := e.root.encryptInPlace(ctx, "d/c.bin"); !errors.Is(out.Err, crypto.ErrLocked) {
		t.Errorf("logged out: %+v", out)
	}
	e.noTempFiles("d")
}

// TestScan counts protected files by content, outside auth/.
func TestScan(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := context.Background()
	if any, err := e.root.AnyEncrypted(ctx); err != nil || any {
		t.Errorf("AnyEncrypted on a fresh dir = %v, %v", any, err)
	}
	mustWrite(t, e.m("a.bin"), marker)
	if err := os.MkdirAll(e.m("sub/deeper"), 0o755); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, e.m("sub/deeper/d.bin"), marker)
	mustWrite(t, e.m("c.txt"), marker)
	e.logout()
	mustWrite(t, e.m("b.bin"), marker)
	mustWrite(t, e.m("sub/e.bin"), nil)

	enc, plain, err := e.root.Scan(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if enc != 2 || plain != 2 {
		t.Errorf("Scan = %d encrypted, %d plaintext; want 2, 2", enc, plain)
	}
	if any, err := e.root.AnyEncrypted(ctx); err != nil || !any {
		t.Errorf("AnyEncrypted = %v, %v", any, err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, err := e.root.Scan(cctx); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled scan: %v", err)
	}
}

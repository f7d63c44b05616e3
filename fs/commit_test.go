package fs

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mountd/mountd/crypto"
)

// content returns what the backing file name holds for a reader with the
// key: its plaintext, decrypted when it carries the magic.
func (e *testEnv) content(name string) []byte {
	e.t.Helper()
	f, err := os.Open(e.b(name))
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	raw, err := io.ReadAll(f)
	if err != nil {
		e.t.Fatal(err)
	}
	if !crypto.HasMagic(raw) {
		return raw
	}
	cf, err := crypto.OpenFile(e.kr, f)
	if err != nil {
		e.t.Fatalf("%s: %v", name, err)
	}
	size, err := cf.Size()
	if err != nil {
		e.t.Fatalf("%s: %v", name, err)
	}
	buf := make([]byte, size)
	if n, err := cf.ReadAt(buf, 0); int64(n) != size || (err != nil && !errors.Is(err, io.EOF)) {
		e.t.Fatalf("%s: read %d of %d: %v", name, n, size, err)
	}
	return buf
}

// temps lists the conversion temp files below the backing directory.
func (e *testEnv) temps() []string {
	e.t.Helper()
	var out []string
	err := filepath.WalkDir(e.backing, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), tempPrefix) {
			out = append(out, strings.TrimPrefix(p, e.backing+"/"))
		}
		return nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// TestRenameCommit: with commits forced onto the rename path (the one
// taken where the filesystem has no RENAME_EXCHANGE), atomic saves and
// direct conversions end encrypted, whole, with their metadata, and leave
// no temp file; what is not a candidate is still skipped.
func TestRenameCommit(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.root.conv.caps.forceRename = true
	data := markerData(50000)
	mustWrite(t, e.m("doc.tmp"), data)
	if err := os.Chmod(e.m("doc.tmp"), 0o604); err != nil {
		t.Fatal(err)
	}
	mtime := time.Unix(1700000000, 0)
	if err := os.Chtimes(e.m("doc.tmp"), mtime, mtime); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(e.m("doc.tmp"), e.m("doc.bin")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "doc.bin to be encrypted", func() bool { return e.isEncrypted("doc.bin") })
	waitFor(t, 10*time.Second, "the converter to go idle", e.root.conv.idle)
	if got := mustRead(t, e.m("doc.bin")); !bytes.Equal(got, data) {
		t.Error("doc.bin differs after the conversion")
	}
	fi, err := os.Stat(e.m("doc.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o604 || !fi.ModTime().Equal(mtime) {
		t.Errorf("metadata not kept: %v %v", fi.Mode(), fi.ModTime())
	}

	mustWrite(t, e.b("a.bin"), data)
	mustWrite(t, e.b("two.bin"), data)
	if err := os.Link(e.b("two.bin"), e.b("two-again.bin")); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if out := e.root.encryptInPlace(ctx, "a.bin"); !out.Done() {
		t.Fatalf("a.bin: %+v", out)
	}
	if !e.isEncrypted("a.bin") || !bytes.Equal(e.content("a.bin"), data) {
		t.Error("a.bin not converted whole")
	}
	if out := e.root.encryptInPlace(ctx, "two.bin"); out.Skip != SkipHardLinks {
		t.Errorf("hard link: %+v", out)
	}
	if tmp := e.temps(); len(tmp) > 0 {
		t.Errorf("temp files left: %v", tmp)
	}
}

// TestCommitCrashStates stops a conversion's commit at each of its steps,
// on both paths, as a kill -9 would (the temp file stays, nothing is
// cleaned up), then runs the start-up recovery (RemoveStaleTemps): every
// file is there and whole, old plaintext or its encrypted copy; no temp
// file is left; and converting again finishes the job.
func TestCommitCrashStates(t *testing.T) { runCommitCrashStates(t, false) }

// commitCrash is a point where a commit is stopped as by a crash.
type commitCrash struct {
	rename bool // the rename path (else the exchange)
	step   commitStep
	keep   bool // KeepOld: the migration's way (old plaintext removed later)
	moved  bool // the copy is in place after the crash
}

// commitCrashCases are every step of both commit paths.
var commitCrashCases = []commitCrash{
	{false, stepChecked, false, false},
	{false, stepExchanged, false, true},
	{false, stepRemoved, false, true},
	{false, stepRemoved, true, true},
	{true, stepChecked, false, false},
	{true, stepRenamed, false, true},
}

func (c commitCrash) name() string {
	name := "exchange/" + stepNames[c.step]
	if c.rename {
		name = "rename/" + stepNames[c.step]
	}
	if c.keep {
		name += "/keepold"
	}
	return name
}

// runCommitCrashStates runs TestCommitCrashStates; natural means on a
// filesystem without RENAME_EXCHANGE, found out as in production: only
// the rename path's steps, nothing forced.
func runCommitCrashStates(t *testing.T, natural bool) {
	for _, tc := range commitCrashCases {
		if natural && !tc.rename {
			continue
		}
		name := tc.name()
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, envOpts{})
			e.root.conv.caps.forceRename = tc.rename && !natural
			e.root.conv.caps.crash = func(rel string, s commitStep) bool { return rel == "d/x.bin" && s == tc.step }
			data := markerData(3*crypto.BlockSize + 77)
			other := markerData(5000)
			if err := os.Mkdir(e.b("d"), 0o755); err != nil {
				t.Fatal(err)
			}
			mustWrite(t, e.b("d/x.bin"), data)
			mustWrite(t, e.b("d/y.bin"), other)

			c, out := e.root.PrepareConversion(context.Background(), "d/x.bin", PrepareOptions{})
			if c == nil {
				t.Fatalf("prepare: %+v", out)
			}
			if err := c.Sync(); err != nil {
				t.Fatal(err)
			}
			var kept []string
			o := CommitOptions{}
			if tc.keep {
				o.KeepOld = func(rel string) { kept = append(kept, rel) }
			}
			if out := c.Commit(o); !errors.Is(out.Err, errCrashed) {
				t.Fatalf("commit: %+v, want the simulated crash", out)
			}
			if got := e.isEncrypted("d/x.bin"); got != tc.moved {
				t.Fatalf("after the crash: encrypted %v, want %v", got, tc.moved)
			}
			if !bytes.Equal(e.content("d/x.bin"), data) {
				t.Fatal("after the crash: d/x.bin is not whole")
			}
			if tc.keep && len(kept) != 1 {
				t.Errorf("KeepOld got %v", kept)
			}

			// The daemon's start: recovery, then the migration again.
			removed, err := RemoveStaleTemps(e.backing, nil)
			if err != nil {
				t.Fatal(err)
			}
			wantRemoved := 1 // the copy, or the old plaintext
			if tc.step == stepRenamed || tc.step == stepRemoved && !tc.keep {
				wantRemoved = 0
			}
			if removed != wantRemoved {
				t.Errorf("recovery removed %d temp files, want %d", removed, wantRemoved)
			}
			if tmp := e.temps(); len(tmp) > 0 {
				t.Errorf("temp files after recovery: %v", tmp)
			}
			for name, want := range map[string][]byte{"d/x.bin": data, "d/y.bin": other} {
				if got := e.content(name); !bytes.Equal(got, want) {
					t.Errorf("%s not whole after recovery (%d bytes, want %d)", name, len(got), len(want))
				}
			}
			e.root.conv.caps.crash = nil
			e.waitIdle()
			for _, rel := range []string{"d/x.bin", "d/y.bin"} {
				if out := e.root.encryptInPlace(context.Background(), rel); !out.Done() && out.Skip != SkipEncrypted {
					t.Errorf("%s again: %+v", rel, out)
				}
			}
			for name, want := range map[string][]byte{"d/x.bin": data, "d/y.bin": other} {
				if !e.isEncrypted(name) || !bytes.Equal(e.content(name), want) {
					t.Errorf("%s not converted whole after the restart", name)
				}
				if got := mustRead(t, e.m(name)); !bytes.Equal(got, want) {
					t.Errorf("%s through the mount differs", name)
				}
			}
		})
	}
}

var stepNames = map[commitStep]string{
	stepChecked: "checked", stepExchanged: "exchanged", stepRemoved: "removed", stepRenamed: "renamed",
}

// TestRenameCommitHoldsNames: a rename onto the file's name through the
// mount that arrives between a rename commit's check and its rename waits
// for the commit, so the file renamed in is not lost under the copy (an
// exchange would have swapped it back; a rename cannot).
func TestRenameCommitHoldsNames(t *testing.T) {
	e := newEnv(t, envOpts{})
	cc := &e.root.conv.caps
	cc.forceRename = true
	data, newer := markerData(9000), []byte("the user's newer version")
	mustWrite(t, e.b("f.bin"), data)
	mustWrite(t, e.m("newer.tmp"), newer)
	e.waitIdle()

	waiting := make(chan struct{})
	cc.nameWait = func() { close(waiting) }
	renamed := make(chan error, 1)
	cc.crash = func(rel string, s commitStep) bool {
		if s == stepChecked {
			// The commit holds names: the rename through the mount must
			// wait for it.
			go func() { renamed <- os.Rename(e.m("newer.tmp"), e.m("f.bin")) }()
			<-waiting
		}
		return false
	}
	if out := e.root.encryptInPlace(context.Background(), "f.bin"); !out.Done() {
		t.Fatalf("convert: %+v", out)
	}
	if err := <-renamed; err != nil {
		t.Fatal(err)
	}
	// The file renamed in is an atomic save: it is converted in turn.
	waitFor(t, time.Minute, "the converter to go idle", e.root.conv.idle)
	if got := e.content("f.bin"); !bytes.Equal(got, newer) {
		t.Errorf("f.bin holds %q, want the file renamed onto it after the commit", got[:min(len(got), 40)])
	}
	if tmp := e.temps(); len(tmp) > 0 {
		t.Errorf("temp files left: %v", tmp)
	}
}

// TestRenameCommitSeesChanges: a file replaced or changed in the backing
// directory itself after its copy was made is not replaced by the copy.
func TestRenameCommitSeesChanges(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.root.conv.caps.forceRename = true
	data := markerData(9000)
	for _, tc := range []struct {
		name   string
		change func(p string)
		want   []byte
	}{
		{"replaced", func(p string) { mustWrite(t, p+".new", []byte("other")); must(t, os.Rename(p+".new", p)) }, []byte("other")},
		{"appended", func(p string) {
			f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
			must(t, err)
			_, err = f.Write([]byte("more"))
			must(t, err)
			must(t, f.Close())
		}, append(append([]byte(nil), data...), "more"...)},
		{"linked", func(p string) { must(t, os.Link(p, p+".link")) }, data},
	} {
		if tc.name == "linked" && netBacking != "" {
			continue // sshfs shows every file with one link (SFTP has no link count)
		}
		rel := tc.name + ".bin"
		mustWrite(t, e.b(rel), data)
		c, out := e.root.PrepareConversion(context.Background(), rel, PrepareOptions{})
		if c == nil {
			t.Fatalf("%s: prepare: %+v", rel, out)
		}
		tc.change(e.b(rel))
		if out := c.Commit(CommitOptions{}); !errors.Is(out.Err, ErrChanged) {
			t.Errorf("%s: commit %+v, want ErrChanged", rel, out)
		}
		if got := e.content(rel); !bytes.Equal(got, tc.want) || e.isEncrypted(rel) {
			t.Errorf("%s: content changed by the refused commit", rel)
		}
	}
	if tmp := e.temps(); len(tmp) > 0 {
		t.Errorf("temp files left: %v", tmp)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestExchangeUndoFailsKeepsFile: a file put at the name in the backing
// directory between the check and the exchange, which the exchange then
// cannot give back, is kept under a name of its own, not left at the
// temp name for the start-up recovery to delete.
func TestExchangeUndoFailsKeepsFile(t *testing.T) {
	e := newEnv(t, envOpts{allowWarn: true})
	cc := &e.root.conv.caps
	cc.failUndo = true
	data, intruder := markerData(9000), []byte("put in place meanwhile")
	mustWrite(t, e.b("x.bin"), data)
	cc.crash = func(rel string, s commitStep) bool {
		if s == stepChecked {
			mustWrite(t, e.b("other"), intruder)
			if err := os.Rename(e.b("other"), e.b("x.bin")); err != nil {
				t.Error(err)
			}
		}
		return false
	}
	out := e.root.encryptInPlace(context.Background(), "x.bin")
	if out.Done() {
		t.Fatal("the conversion succeeded over a file put in place")
	}
	cc.crash = nil
	if _, err := RemoveStaleTemps(e.backing, nil); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(e.backing)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, d := range ents {
		if strings.HasPrefix(d.Name(), "x.bin.mountd-conflict-") {
			got, err := os.ReadFile(e.b(d.Name()))
			found = err == nil && bytes.Equal(got, intruder)
		}
	}
	if !found {
		t.Fatalf("the file put in place is gone after recovery: %v", ents)
	}
	warned := false
	for _, en := range e.hook.AllEntries() {
		warned = warned || strings.Contains(en.Message, "kept under this name")
	}
	if !warned {
		t.Error("no warning naming the kept file")
	}
}

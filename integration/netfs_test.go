package integration

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mountd/mountd/crypto"
	"github.com/mountd/mountd/internal/sshfsbed"
)

// Tests with the data directory on sshfs over loopback (internal/sshfsbed):
// a network filesystem without RENAME_EXCHANGE, whose syncfs does not
// reach the server, and whose locks do not cross mounts. Without sshd and
// sshfs they are skipped loudly (and fail under CI=true).

// netBed is an sshd exporting a directory, and the test's mounts of it.
type netBed struct {
	t      *testing.T
	srv    *sshfsbed.Server
	export string // the server's side: what is on its disk
}

func newNetBed(t *testing.T) *netBed {
	t.Helper()
	requireFUSE(t)
	b := &netBed{t: t, srv: sshfsbed.Start(t), export: filepath.Join(t.TempDir(), "export")}
	if err := os.Mkdir(b.export, 0o755); err != nil {
		t.Fatal(err)
	}
	return b
}

// mount makes a new sshfs mount of the export (another "host").
func (b *netBed) mount() string {
	b.t.Helper()
	mnt := filepath.Join(b.t.TempDir(), "sshfs")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		b.t.Fatal(err)
	}
	b.srv.Mount(b.t, b.export, mnt)
	return mnt
}

// daemon prepares a daemon whose data directory is Client_Data on the
// sshfs mount mnt.
func (b *netBed) daemon(mnt string, extra ...string) *daemon {
	d := newDaemon(b.t, append(append([]string{}, migFastKDF...), extra...)...)
	d.data = filepath.Join(mnt, "Client_Data")
	return d
}

// TestNetFSAtomicSaves: on sshfs, saves the way editors make them (write
// a temp file, fsync, rename it onto the name) end encrypted on the
// server's disk, repeatedly onto one name and onto many names. (Before the
// rename commit every one stayed plaintext: "cannot encrypt atomic save;
// it stays plaintext error=invalid argument".)
func TestNetFSAtomicSaves(t *testing.T) {
	b := newNetBed(t)
	d := b.daemon(b.mount())
	d.start()
	d.mustLogin(password)
	server := filepath.Join(b.export, "Client_Data")

	save := func(name string, data []byte) {
		t.Helper()
		// A temp name unrelated to the protected one (a temporary of it
		// is encrypted from its first byte: nothing to convert).
		tmp := filepath.Join(d.mnt, ".tmpsave-"+strings.TrimSuffix(name, ".bin"))
		f, err := os.Create(tmp)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(d.mnt, name)); err != nil {
			t.Fatal(err)
		}
	}
	want := map[string][]byte{}
	var last []byte
	for i := range 100 {
		last = fmt.Appendf(migContent(uint64(i), int64(2000+i*37)), "save %d", i)
		save("x.bin", last)
		name := fmt.Sprintf("doc-%03d.bin", i)
		want[name] = migContent(uint64(500+i), int64(100+i*911))
		save(name, want[name])
	}
	want["x.bin"] = last
	plain := func() (n int) {
		for name := range want {
			raw, err := os.ReadFile(filepath.Join(server, name))
			if err != nil {
				t.Fatal(err)
			}
			if !crypto.HasMagic(raw) {
				n++
			}
		}
		return n
	}
	// The server's disk is external state: poll with a deadline.
	deadline := time.Now().Add(2 * time.Minute)
	for n := plain(); n > 0; n = plain() {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d saved files still plaintext on the server after 2 minutes", n, len(want))
		}
		time.Sleep(50 * time.Millisecond)
	}
	for name, data := range want {
		got, err := os.ReadFile(filepath.Join(d.mnt, name))
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s through the mount: %d bytes (%v), want %d", name, len(got), err, len(data))
		}
	}
	migNoTemps(t, server)
}

// TestNetFSMigrate: on sshfs, encrypt_existing_files converts a tree of
// awkward sizes and names; a second run does nothing. (Before the rename
// commit every candidate failed with EINVAL and the task ended failed.)
func TestNetFSMigrate(t *testing.T) {
	b := newNetBed(t)
	d := b.daemon(b.mount())
	server := filepath.Join(b.export, "Client_Data")
	tr := migAwkwardTree(t, server, 150, 2, 3<<20+5)
	d.start()
	d.mustLogin(password)
	tk := migWait(t, d, migStart(t, d).ID, nil)
	if tk.State != "succeeded" || tk.FilesDone != tr.nonEmpty() || tk.FilesFailed != 0 {
		t.Fatalf("task: %v", tk.raw)
	}
	migCheckComplete(t, tk)
	migCheckAllEncrypted(t, d, tr)
	migNoTemps(t, server)
	again := migWait(t, d, migStart(t, d).ID, nil)
	if again.State != "succeeded" || again.FilesDone != 0 {
		t.Fatalf("second run: %v", again.raw)
	}
}

// TestNetFSKill9DuringMigration: on sshfs, kill -9 at random points of the
// migration, three times. After each kill every file on the server is
// whole (its original plaintext or a complete ciphertext) and none is
// missing; the restarted daemon removes the temp files; the last run
// finishes the job.
func TestNetFSKill9DuringMigration(t *testing.T) {
	b := newNetBed(t)
	d := b.daemon(b.mount())
	server := filepath.Join(b.export, "Client_Data")
	tr := migAwkwardTree(t, server, 200, 3, 6<<20)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 21))
	for round := range 3 {
		d.start()
		d.mustLogin(password)
		tk := migStart(t, d)
		frac := 0.1 + rng.Float64()*0.8
		got := migWait(t, d, tk.ID, func(tk migTask) bool {
			return float64(tk.BytesDone) > frac*float64(tk.BytesTotal)
		})
		if got.State != "running" {
			t.Logf("round %d: the task ended before the kill", round)
		}
		d.kill()
		enc := migCheckWhole(t, server, tr)
		var temps int
		filepath.WalkDir(server, func(p string, e os.DirEntry, err error) error {
			if err == nil && len(e.Name()) > 12 && e.Name()[:12] == ".mountd-tmp-" {
				temps++
			}
			return nil
		})
		t.Logf("round %d: killed at %.0f %% of the bytes: %d files encrypted, %d temp files", round, frac*100, enc, temps)
		if t.Failed() {
			return
		}
	}
	d.start()
	migNoTemps(t, server)
	d.mustLogin(password)
	tk := migWait(t, d, migStart(t, d).ID, nil)
	if tk.State != "succeeded" {
		t.Fatalf("last run: %v", tk.raw)
	}
	migCheckAllEncrypted(t, d, tr)
	migNoTemps(t, server)
}

// mountdOut runs mountd (runMountd) and returns its stdout and stderr
// together, and its exit code.
func mountdOut(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	out, errs, code := runMountd(t, env, args...)
	return out + errs, code
}

// TestNetFSOneWriterAcrossHosts: two sshfs mounts of one export stand for
// two hosts (MOUNTD_HOST_ID names each); flock does not cross them, the
// lease does. A daemon on host beta is refused, naming alpha, while
// alpha's daemon runs, and starts once it stops; beta killed (its host
// "down") keeps alpha out until the lease is broken, which break-lease
// refuses while the lease is live unless forced; a daemon whose lease is
// broken stops: clears the key, unmounts, exits.
func TestNetFSOneWriterAcrossHosts(t *testing.T) {
	b := newNetBed(t)
	m1, m2 := b.mount(), b.mount()
	alpha, beta := b.daemon(m1, "--lease-ttl", "15s"), b.daemon(m2)
	alpha.env = []string{"MOUNTD_HOST_ID=alpha"}
	beta.env = []string{"MOUNTD_HOST_ID=beta"}
	serveArgs := func(d *daemon) []string {
		return append([]string{"--data", d.data, "--create", "--mount", d.mnt, "--listen", d.addr}, d.extraFlags...)
	}

	alpha.start()
	alpha.mustLogin(password)
	if err := os.WriteFile(filepath.Join(alpha.mnt, "a.bin"), []byte("from alpha"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code := mountdOut(t, beta.env, serveArgs(beta)...)
	if code != 6 || !strings.Contains(out, "on host alpha") || !strings.Contains(out, alpha.mnt) {
		t.Fatalf("beta while alpha serves: exit %d, want 6 naming alpha:\n%s", code, out)
	}
	if isMounted(beta.mnt) {
		t.Fatal("the refused daemon mounted")
	}
	if err := alpha.stop(); err != nil {
		t.Fatalf("alpha stop: %v", err)
	}

	beta.start()
	beta.mustLogin(password)
	if got, err := os.ReadFile(filepath.Join(beta.mnt, "a.bin")); err != nil || string(got) != "from alpha" {
		t.Fatalf("beta reads a.bin: %q %v", got, err)
	}
	beta.kill() // beta's host goes down: its lease stays
	out, code = mountdOut(t, alpha.env, serveArgs(alpha)...)
	if code != 6 || !strings.Contains(out, "on host beta") || !strings.Contains(out, "lease runs until") {
		t.Fatalf("alpha under beta's live lease: exit %d, want 6:\n%s", code, out)
	}
	out, code = mountdOut(t, alpha.env, "break-lease", "--data", alpha.data)
	if code != 6 || !strings.Contains(out, "not expired") {
		t.Fatalf("break-lease of a live lease: exit %d, want 6:\n%s", code, out)
	}
	if out, code = mountdOut(t, alpha.env, "break-lease", "--force", "--data", alpha.data); code != 0 ||
		!strings.Contains(out, "host beta") {
		t.Fatalf("break-lease --force: exit %d:\n%s", code, out)
	}

	alpha.start()
	alpha.mustLogin(password)
	// Someone breaks alpha's lease (wrongly believing alpha down): alpha
	// finds out at its next renewal (within 5 s here) and stops.
	if out, code = mountdOut(t, beta.env, "break-lease", "--force", "--data", beta.data); code != 0 {
		t.Fatalf("break-lease --force of alpha's lease: exit %d:\n%s", code, out)
	}
	select {
	case <-alpha.exited:
	case <-time.After(time.Minute):
		t.Fatal("alpha still runs a minute after its lease was broken")
	}
	if alpha.exitErr == nil || !strings.Contains(alpha.out.String(), "lease is lost") {
		t.Fatalf("alpha exited with %v; log:\n%s", alpha.exitErr, alpha.out.String())
	}
	if isMounted(alpha.mnt) {
		t.Fatal("alpha's mount is still there after it stopped")
	}
}

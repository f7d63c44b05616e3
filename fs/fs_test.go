package fs

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"syscall"
	"testing"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/crypto"
)

// marker is a recognisable plaintext: it must never appear in the backing
// file of a protected file.
var marker = []byte("MOUNTD-PLAINTEXT-MARKER-0123456789")

func markerData(n int) []byte {
	return bytes.Repeat(marker, n/len(marker)+1)[:n]
}

func TestCryptFileNoPassthrough(t *testing.T) {
	// The kernel must never get a backing descriptor for a protected or
	// encrypted file: cryptFile must not offer one.
	pt := reflect.TypeOf((*gofs.FilePassthroughFder)(nil)).Elem()
	if reflect.TypeOf(&cryptFile{}).Implements(pt) {
		t.Fatal("cryptFile implements FilePassthroughFder")
	}
	if !reflect.TypeOf(&passthroughFile{}).Implements(pt) {
		t.Fatal("passthroughFile should offer passthrough")
	}
}

func TestToErrno(t *testing.T) {
	cases := []struct {
		err  error
		want syscall.Errno
	}{
		{nil, 0},
		{crypto.ErrLocked, syscall.EACCES},
		{crypto.ErrUnauthenticated, syscall.EIO},
		{crypto.ErrBadHeader, syscall.EIO},
		{crypto.ErrBadSize, syscall.EIO},
		{crypto.ErrWrongKey, syscall.EIO},
		{&os.PathError{Op: "open", Path: "x", Err: syscall.ENOENT}, syscall.ENOENT},
		{os.ErrNotExist, syscall.ENOENT},
		{syscall.ENOSPC, syscall.ENOSPC},
	}
	for _, c := range cases {
		if got := toErrno(c.err); got != c.want {
			t.Errorf("toErrno(%v) = %v, want %v", c.err, got, c.want)
		}
	}
	if b, ok := blockOf(fmt.Errorf("read: %w", &crypto.BlockError{Block: 17, Err: crypto.ErrUnauthenticated})); !ok || b != 17 {
		t.Errorf("blockOf = %d, %v; want 17", b, ok)
	}
}

// TestProtectedContentOnDisk checks by behaviour that protected files are
// encrypted on disk (so no passthrough handle ever wrote them) and that
// other files are stored byte for byte.
func TestProtectedContentOnDisk(t *testing.T) {
	e := newEnv(t, envOpts{})
	data := markerData(3*crypto.BlockSize + 123)

	mustWrite(t, e.m("secret.bin"), data)
	mustWrite(t, e.m("plain.txt"), data)
	if err := os.Mkdir(e.m("sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, e.m("sub/deep.bin"), data)

	for _, name := range []string{"secret.bin", "sub/deep.bin"} {
		raw := e.backingBytes(name)
		if !crypto.HasMagic(raw) {
			t.Errorf("%s: backing file is not encrypted", name)
		}
		if bytes.Contains(raw, marker) {
			t.Errorf("%s: plaintext marker in the backing file", name)
		}
		h, err := crypto.ParseHeader(raw)
		if err != nil || h.Version != crypto.Version {
			t.Errorf("%s: header %+v, %v", name, h, err)
		}
		if want := h.CipherSize(int64(len(data))); int64(len(raw)) != want {
			t.Errorf("%s: backing size %d, want %d", name, len(raw), want)
		}
		if got := mustRead(t, e.m(name)); !bytes.Equal(got, data) {
			t.Errorf("%s: read back differs", name)
		}
		fi, err := os.Stat(e.m(name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() != int64(len(data)) {
			t.Errorf("%s: stat size %d, want %d", name, fi.Size(), len(data))
		}
		// statx asking for more than the basic fields (FUSE_STATX).
		var x unix.Statx_t
		if err := unix.Statx(unix.AT_FDCWD, e.m(name), unix.AT_STATX_FORCE_SYNC, unix.STATX_BASIC_STATS|unix.STATX_BTIME, &x); err != nil {
			t.Fatal(err)
		}
		if x.Size != uint64(len(data)) {
			t.Errorf("%s: statx size %d, want %d", name, x.Size, len(data))
		}
	}
	if raw := e.backingBytes("plain.txt"); !bytes.Equal(raw, data) {
		t.Error("plain.txt: backing file differs from what was written")
	}

	// Writes at an offset, through an fd, also never leak.
	f, err := os.OpenFile(e.m("secret.bin"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(marker, 5000); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if bytes.Contains(e.backingBytes("secret.bin"), marker) {
		t.Error("marker in backing file after pwrite")
	}
}

// TestPassthroughBehaviour: plaintext files with non-protected names are
// served by the kernel (passthrough) while protected and encrypted files
// always go through the daemon, whatever their name.
func TestPassthroughBehaviour(t *testing.T) {
	e := newEnv(t, envOpts{})
	data := markerData(100000)
	mustWrite(t, e.m("plain.dat"), data)
	mustWrite(t, e.m("secret.bin"), data)

	before := e.root.stats.plainReads.Load()
	if got := mustRead(t, e.m("plain.dat")); !bytes.Equal(got, data) {
		t.Fatal("plain.dat read back differs")
	}
	if n := e.root.stats.plainReads.Load() - before; n != 0 {
		if os.Getuid() == 0 {
			t.Errorf("plain.dat: %d reads reached the daemon; want kernel passthrough", n)
		} else {
			t.Logf("no passthrough (not root): %d daemon reads", n)
		}
	}

	cr := e.root.stats.cryptReads.Load()
	if got := mustRead(t, e.m("secret.bin")); !bytes.Equal(got, data) {
		t.Fatal("secret.bin read back differs")
	}
	if e.root.stats.cryptReads.Load() == cr {
		t.Error("secret.bin was read without the daemon decrypting")
	}

	// Content decides: an encrypted file under a non-protected name is
	// still decrypted, never passed through.
	if err := os.Rename(e.m("secret.bin"), e.m("renamed.dat")); err != nil {
		t.Fatal(err)
	}
	if !e.isEncrypted("renamed.dat") {
		t.Fatal("rename changed the content")
	}
	if got := mustRead(t, e.m("renamed.dat")); !bytes.Equal(got, data) {
		t.Error("renamed.dat: want the plaintext")
	}
	f, err := os.OpenFile(e.m("renamed.dat"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(marker, 777); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if bytes.Contains(e.backingBytes("renamed.dat"), marker) {
		t.Error("write to an encrypted file with a plain name reached the disk as plaintext")
	}

	// A protected plaintext file (created while logged out) is served by
	// the daemon, not passed through.
	e.logout()
	mustWrite(t, e.m("later.bin"), data)
	if e.isEncrypted("later.bin") {
		t.Fatal("file created while logged out is encrypted")
	}
	pr := e.root.stats.plainReads.Load()
	if got := mustRead(t, e.m("later.bin")); !bytes.Equal(got, data) {
		t.Fatal("later.bin read back differs")
	}
	if e.root.stats.plainReads.Load() == pr {
		t.Error("protected plaintext file was passed through")
	}
	_, err = os.ReadFile(e.m("renamed.dat"))
	wantErrno(t, err, syscall.EACCES, "read encrypted renamed.dat logged out")
}

// TestLoggedOut checks DESIGN §5 while the key is cleared.
func TestLoggedOut(t *testing.T) {
	e := newEnv(t, envOpts{})
	data := markerData(10000)
	mustWrite(t, e.m("enc.bin"), data)
	mustWrite(t, e.m("plain.txt"), []byte("plain"))
	before := e.backingBytes("enc.bin")

	e.logout()

	fi, err := os.Stat(e.m("enc.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != int64(len(data)) {
		t.Errorf("stat size logged out %d, want %d", fi.Size(), len(data))
	}
	ents, err := os.ReadDir(e.mnt)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, en := range ents {
		names = append(names, en.Name())
	}
	sort.Strings(names)
	if want := []string{"enc.bin", "plain.txt"}; !reflect.DeepEqual(names, want) {
		t.Errorf("readdir %v, want %v", names, want)
	}

	_, err = os.ReadFile(e.m("enc.bin"))
	wantErrno(t, err, syscall.EACCES, "read")
	_, err = os.OpenFile(e.m("enc.bin"), os.O_WRONLY, 0)
	wantErrno(t, err, syscall.EACCES, "open for writing")
	_, err = os.OpenFile(e.m("enc.bin"), os.O_WRONLY|os.O_TRUNC, 0)
	wantErrno(t, err, syscall.EACCES, "open O_TRUNC")
	wantErrno(t, os.Truncate(e.m("enc.bin"), 5), syscall.EACCES, "truncate")
	wantErrno(t, os.Truncate(e.m("enc.bin"), 50000), syscall.EACCES, "truncate up")
	if !bytes.Equal(e.backingBytes("enc.bin"), before) {
		t.Error("backing file changed by a logged-out write/truncate")
	}

	// Plaintext works; new protected files are plaintext.
	if got := mustRead(t, e.m("plain.txt")); string(got) != "plain" {
		t.Errorf("plain.txt = %q", got)
	}
	mustWrite(t, e.m("new.bin"), data)
	if e.isEncrypted("new.bin") {
		t.Error("new.bin created logged out is encrypted")
	}
	if got := mustRead(t, e.m("new.bin")); !bytes.Equal(got, data) {
		t.Error("new.bin read back differs")
	}
	// Namespace operations work on encrypted files.
	if err := os.Rename(e.m("enc.bin"), e.m("moved.bin")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(e.m("moved.bin"), 0o600); err != nil {
		t.Fatal(err)
	}

	e.login()
	if got := mustRead(t, e.m("moved.bin")); !bytes.Equal(got, data) {
		t.Error("after re-login: moved.bin differs")
	}
	// new.bin, written logged out, is encrypted after the login (in the
	// background, or by this append at the latest: issue 17); the
	// append is encrypted.
	f, err := os.OpenFile(e.m("new.bin"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("more")); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if !e.isEncrypted("new.bin") {
		t.Error("new.bin, written logged out, still plaintext after an append logged in")
	}
	if got := mustRead(t, e.m("new.bin")); !bytes.Equal(got, append(append([]byte{}, data...), "more"...)) {
		t.Error("new.bin differs after the append")
	}
}

// TestFirstWriteIntoEmpty: an empty protected file gets encrypted by its
// first write while the key is set, and stays plaintext when written
// logged out.
func TestFirstWriteIntoEmpty(t *testing.T) {
	e := newEnv(t, envOpts{loggedOut: true})
	for _, n := range []string{"a.bin", "b.bin", "c.bin"} {
		mustWrite(t, e.m(n), nil)
	}
	mustWrite(t, e.m("logged-out.bin"), nil)
	f, err := os.OpenFile(e.m("logged-out.bin"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(marker)
	f.Close()
	if e.isEncrypted("logged-out.bin") {
		t.Error("first write while logged out encrypted the file")
	}

	// b.bin is opened before login and written after it.
	fb, err := os.OpenFile(e.m("b.bin"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()

	e.login()
	fa, err := os.OpenFile(e.m("a.bin"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fa.Write(marker)
	fa.Close()
	fb.WriteAt(marker, 4000)
	if err := os.Truncate(e.m("c.bin"), 5000); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a.bin", "b.bin", "c.bin"} {
		raw := e.backingBytes(n)
		if !crypto.HasMagic(raw) || bytes.Contains(raw, marker) {
			t.Errorf("%s: not encrypted after the first write with the key set", n)
		}
	}
	got := make([]byte, 4000+len(marker))
	if _, err := fb.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[4000:], marker) || !bytes.Equal(got[:4000], make([]byte, 4000)) {
		t.Error("b.bin content wrong")
	}
	if fi, _ := os.Stat(e.m("c.bin")); fi.Size() != 5000 {
		t.Errorf("c.bin size %d", fi.Size())
	}
}

// TestAuthHidden: auth/ is invisible and untouchable through the mount.
func TestAuthHidden(t *testing.T) {
	e := newEnv(t, envOpts{})
	verifier := e.backingBytes("auth/verifier.bin")

	ents, err := os.ReadDir(e.mnt)
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range ents {
		if en.Name() == "auth" {
			t.Error("auth listed in the mount root")
		}
	}
	_, err = os.Stat(e.m("auth"))
	wantErrno(t, err, syscall.ENOENT, "stat auth")
	_, err = os.Stat(e.m("auth/verifier.bin"))
	wantErrno(t, err, syscall.ENOENT, "stat auth/verifier.bin")
	_, err = os.ReadFile(e.m("auth/verifier.bin"))
	wantErrno(t, err, syscall.ENOENT, "read auth/verifier.bin")

	wantErrno(t, os.Mkdir(e.m("auth"), 0o755), syscall.EPERM, "mkdir auth")
	_, err = os.Create(e.m("auth"))
	wantErrno(t, err, syscall.EPERM, "create auth")
	wantErrno(t, os.Symlink("x", e.m("auth")), syscall.EPERM, "symlink auth")
	mustWrite(t, e.m("f"), []byte("x"))
	wantErrno(t, os.Rename(e.m("f"), e.m("auth")), syscall.EPERM, "rename onto auth")
	wantErrno(t, os.Link(e.m("f"), e.m("auth")), syscall.EPERM, "link to auth")
	wantErrno(t, unix.Mknod(e.m("auth"), unix.S_IFIFO|0o644, 0), syscall.EPERM, "mknod auth")
	wantErrno(t, os.Remove(e.m("auth")), syscall.ENOENT, "remove auth")
	wantErrno(t, os.Remove(e.m("auth/verifier.bin")), syscall.ENOENT, "remove verifier")

	// Only the root's auth is reserved.
	if err := os.MkdirAll(e.m("sub/auth"), 0o755); err != nil {
		t.Fatalf("sub/auth: %v", err)
	}
	if !bytes.Equal(e.backingBytes("auth/verifier.bin"), verifier) {
		t.Error("verifier changed")
	}
}

// TestStatfsAndXattr: a few pass-through operations on encrypted files.
func TestStatfsAndXattr(t *testing.T) {
	e := newEnv(t, envOpts{})
	mustWrite(t, e.m("x.bin"), marker)
	if err := unix.Setxattr(e.m("x.bin"), "user.k", []byte("v"), 0); err != nil {
		t.Skipf("xattrs: %v", err)
	}
	buf := make([]byte, 16)
	n, err := unix.Getxattr(e.m("x.bin"), "user.k", buf)
	if err != nil || string(buf[:n]) != "v" {
		t.Errorf("getxattr = %q, %v", buf[:n], err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(e.mnt, &st); err != nil || st.Blocks == 0 {
		t.Errorf("statfs: %v %+v", err, st)
	}
	// Hard link of an encrypted file shares its content.
	if err := os.Link(e.m("x.bin"), e.m("y.dat")); err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, e.m("y.dat")); !bytes.Equal(got, marker) {
		t.Error("hard link reads differently")
	}
	if err := os.Symlink("x.bin", e.m("ln")); err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, e.m("ln")); !bytes.Equal(got, marker) {
		t.Error("symlink reads differently")
	}
	if tgt, err := os.Readlink(e.m("ln")); err != nil || tgt != "x.bin" {
		t.Errorf("readlink %q %v", tgt, err)
	}
	_ = filepath.Join
}

// TestUnprobedNames: attribute lookups read the header only of protected
// names (so a cold "ls -l" does not read every file's data). An encrypted
// file renamed through the mount keeps its plaintext size; one placed
// under a plain name behind the mount's back shows its stored size until
// it is opened, and is decrypted either way.
func TestUnprobedNames(t *testing.T) {
	e := newEnv(t, envOpts{})
	data := pattern(3, 3*4096+100)
	mustWrite(t, e.m("a.bin"), data)
	if err := os.Rename(e.m("a.bin"), e.m("a.dat")); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(e.m("a.dat")); err != nil || fi.Size() != int64(len(data)) {
		t.Fatalf("renamed encrypted file: size %v, %v; want %d", fi.Size(), err, len(data))
	}

	// Behind the mount's back: an encrypted file under a plain name.
	raw := e.backingBytes("a.dat")
	if err := os.WriteFile(e.b("b.dat"), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	reads := e.root.stats.headerReads.Load()
	fi, err := os.Stat(e.m("b.dat"))
	if err != nil || fi.Size() != int64(len(raw)) {
		t.Fatalf("unopened b.dat: size %v, %v; want the stored %d", fi.Size(), err, len(raw))
	}
	if n := e.root.stats.headerReads.Load() - reads; n != 0 {
		t.Fatalf("stat of a plain name read %d headers", n)
	}
	if got := mustRead(t, e.m("b.dat")); !bytes.Equal(got, data) {
		t.Fatal("b.dat not decrypted on open")
	}
	if fi, err := os.Stat(e.m("b.dat")); err != nil || fi.Size() != int64(len(data)) {
		t.Fatalf("opened b.dat: size %v, %v; want %d", fi.Size(), err, len(data))
	}
	// Protected names are always probed.
	if err := os.WriteFile(e.b("c.bin"), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(e.m("c.bin")); err != nil || fi.Size() != int64(len(data)) {
		t.Fatalf("c.bin: size %v, %v; want %d", fi.Size(), err, len(data))
	}
}

// TestReadRepliesAreSlices: both kinds of read reply have go-fuse's
// Slices method, so go-fuse writes them with one writev and releases them
// after it, without first trying to splice them.
func TestReadRepliesAreSlices(t *testing.T) {
	type slicer interface {
		Slices() ([][]byte, fuse.Status)
	}
	for _, r := range []fuse.ReadResult{dataResult(nil), &prefetchResult{}} {
		if _, ok := r.(slicer); !ok {
			t.Errorf("%T has no Slices method: go-fuse tries to splice it first", r)
		}
	}
}

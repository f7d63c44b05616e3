package main

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/mountd/mountd/crypto"
)

// sizes are the awkward plaintext sizes every tree holds.
var sizes = []int{0, 1, 4095, 4096, 4097, 3*crypto.BlockSize + 5, 300 << 10}

// fixture is a data directory with a password, encrypted files of the
// awkward sizes, a large one, plaintext files and symlinks.
type fixture struct {
	data  string
	kr    *crypto.Keyring
	plain map[string][]byte // what every regular file holds, by path
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	data, _ := initData(t, "pw")
	fx := &fixture{data: data, kr: keyring(t, data, "pw"), plain: map[string][]byte{}}
	for _, n := range sizes {
		fx.encrypted(t, filepath.Join("enc", sizeName(n)), randomBytes(n))
	}
	fx.encrypted(t, "big.bin", randomBytes(40*crypto.BlockSize))
	fx.encrypted(t, "not-protected-name.txt", []byte("encrypted whatever its name"))
	fx.file(t, "notes.txt", []byte("plain notes\n"))
	fx.file(t, "enc/readme", nil)
	os.Symlink("../notes.txt", filepath.Join(data, "enc/link"))
	os.Symlink("/etc/passwd", filepath.Join(data, "evil.bin"))     // never followed
	os.Symlink("/etc", filepath.Join(data, "etc-dir"))             // never entered
	os.Symlink("/nonexistent/x.bin", filepath.Join(data, "dangl")) // dangling
	return fx
}

func sizeName(n int) string { return strconv.Itoa(n) + ".bin" }

func itoa(n int) string { return strconv.Itoa(n) }

func (fx *fixture) encrypted(t *testing.T, rel string, plain []byte) {
	t.Helper()
	writeEncrypted(t, fx.kr, fx.data, rel, plain)
	fx.plain[rel] = plain
}

func (fx *fixture) file(t *testing.T, rel string, b []byte) {
	t.Helper()
	p := filepath.Join(fx.data, rel)
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	fx.plain[rel] = b
}

// copy returns a copy of the fixture in a new directory (cp -a: modes,
// times, links), sharing the keyring.
func (fx *fixture) copy(t *testing.T) *fixture {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "data")
	if out, err := exec.Command("cp", "-a", fx.data, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp -a: %v %s", err, out)
	}
	return &fixture{data: dst, kr: fx.kr, plain: maps.Clone(fx.plain)}
}

// patch rewrites the backing file rel with f.
func (fx *fixture) patch(t *testing.T, rel string, f func(b []byte) []byte) {
	t.Helper()
	p := filepath.Join(fx.data, rel)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, f(b), 0o644); err != nil {
		t.Fatal(err)
	}
}

// blockAt is the ciphertext offset of block i of a file in the current
// format (the tests corrupt files; fsck itself never computes this).
func blockAt(i int) int {
	h := crypto.Header{Version: crypto.Version}
	return int(h.CipherOffset(blockStart(int64(i))))
}

// blockStart is the plaintext offset of block i in the current format.
func blockStart(i int64) int64 {
	start, _ := crypto.Header{Version: crypto.Version}.BlockRange(i)
	return start
}

func runFsck(t *testing.T, data string, stdin string, extra ...string) (int, *fsckReport, string) {
	t.Helper()
	code, out, errs := mountd(t, stdin, append([]string{"fsck", "--data", data, "--json"}, extra...)...)
	var rep fsckReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("fsck: exit %d, not JSON: %v\n%s\n%s", code, err, out, errs)
	}
	if rep.Exit != code {
		t.Fatalf("report says exit %d, process %d", rep.Exit, code)
	}
	return code, &rep, errs
}

func TestFsckClean(t *testing.T) {
	fx := newFixture(t)
	setAtimesOld(t, fx.data)
	before := treeState(t, fx.data, "auth/lock")
	code, rep, errs := runFsck(t, fx.data, "pw\n")
	if code != 0 || !rep.Clean || len(rep.Findings) != 0 {
		t.Fatalf("clean tree: exit %d %+v %s", code, rep, errs)
	}
	wantEnc := int64(len(sizes) + 2)
	if c := rep.Counts; c.Encrypted != wantEnc || c.Authenticated != wantEnc || c.PlainOther != 2 || c.Symlinks != 4 || c.Versions[crypto.Version] != wantEnc {
		t.Fatalf("counts: %+v", c)
	}
	var total int64
	for rel, b := range fx.plain {
		if rel != "notes.txt" && rel != "enc/readme" {
			total += int64(len(b))
		}
	}
	if rep.Counts.PlainBytes != total {
		t.Fatalf("authenticated %d bytes, want %d", rep.Counts.PlainBytes, total)
	}
	// Reading changed nothing, access times included.
	if after := treeState(t, fx.data, "auth/lock"); !mapsEqual(before, after) {
		t.Fatalf("fsck changed the tree:\nbefore %v\nafter  %v", before, after)
	}
	// The text form says clean too.
	code, out, _ := mountd(t, "pw\n", "fsck", "--data", fx.data)
	if code != 0 || !strings.HasSuffix(out, ": clean\n") {
		t.Fatalf("text: %d %s", code, out)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestFsckFindsDamage: each kind of damage, alone in an otherwise clean
// tree, is named by path (and first bad block) in the output, with the
// documented exit code.
func TestFsckFindsDamage(t *testing.T) {
	other, _ := initData(t, "other")
	otherKR := keyring(t, other, "other")
	cases := []struct {
		name   string
		damage func(t *testing.T, fx *fixture)
		path   string
		kind   string
		block  int64 // -1: none
		exit   int
	}{
		{"flipped bit", func(t *testing.T, fx *fixture) {
			fx.patch(t, "big.bin", func(b []byte) []byte { b[blockAt(7)+500] ^= 0x20; return b })
		}, "big.bin", findCorrupt, 7, exitDamaged},
		{"flipped bit in the tag of the last block", func(t *testing.T, fx *fixture) {
			// Block 1 holds 4097 - blockStart(1) bytes; its tag ends the sealed part of its slot.
			last := blockAt(1) + crypto.PageOverhead + int(4097-blockStart(1)) - 1
			fx.patch(t, "enc/4097.bin", func(b []byte) []byte { b[last] ^= 1; return b })
		}, "enc/4097.bin", findCorrupt, 1, exitDamaged},
		{"flipped header bit", func(t *testing.T, fx *fixture) {
			fx.patch(t, "enc/4096.bin", func(b []byte) []byte { b[20] ^= 1; return b })
		}, "enc/4096.bin", findCorrupt, 0, exitDamaged},
		{"cut at the end of a page, the size lost", func(t *testing.T, fx *fixture) {
			fx.patch(t, "big.bin", func(b []byte) []byte { return b[:blockAt(20)] })
		}, "big.bin", findCorrupt, 20, exitDamaged},
		{"cut with more past the last page than a block holds", func(t *testing.T, fx *fixture) {
			fx.patch(t, "big.bin", func(b []byte) []byte { return b[:blockAt(20)+4090] })
		}, "big.bin", findCorrupt, 20, exitDamaged},
		{"cut, the last block holding less than the size says", func(t *testing.T, fx *fixture) {
			fx.patch(t, "enc/4097.bin", func(b []byte) []byte { return b[:blockAt(2)] })
		}, "enc/4097.bin", findCorrupt, 1, exitDamaged},
		{"truncated inside the header", func(t *testing.T, fx *fixture) {
			fx.patch(t, "enc/1.bin", func(b []byte) []byte { return b[:20] })
		}, "enc/1.bin", findBadHeader, -1, exitDamaged},
		{"swapped blocks", func(t *testing.T, fx *fixture) {
			fx.patch(t, "big.bin", func(b []byte) []byte {
				x, y := blockAt(3), blockAt(4)
				blk := bytes.Clone(b[x:y])
				copy(b[x:y], b[y:y+(y-x)])
				copy(b[y:], blk)
				return b
			})
		}, "big.bin", findCorrupt, 3, exitDamaged},
		{"zeroed block", func(t *testing.T, fx *fixture) {
			fx.patch(t, "big.bin", func(b []byte) []byte { clear(b[blockAt(39):blockAt(40)]); return b })
		}, "big.bin", findCorrupt, 39, exitDamaged},
		{"block from another file", func(t *testing.T, fx *fixture) {
			donor, _ := os.ReadFile(filepath.Join(fx.data, "enc/4097.bin"))
			fx.patch(t, "enc/4096.bin", func(b []byte) []byte { copy(b[blockAt(0):], donor[blockAt(0):blockAt(1)]); return b })
		}, "enc/4096.bin", findCorrupt, 0, exitDamaged},
		{"foreign header", func(t *testing.T, fx *fixture) {
			writeEncrypted(t, otherKR, fx.data, "enc/sub/foreign.bin", []byte("another key's file"))
		}, "enc/sub/foreign.bin", findForeignKey, -1, exitDamaged},
		{"unsupported version", func(t *testing.T, fx *fixture) {
			fx.patch(t, "enc/4095.bin", func(b []byte) []byte { b[7] = 0x7f; return b })
		}, "enc/4095.bin", findBadHeader, -1, exitDamaged},
		{"plaintext protected file", func(t *testing.T, fx *fixture) {
			fx.file(t, "enc/plain.bin", []byte("should have been encrypted"))
		}, "enc/plain.bin", findPlainProtected, -1, exitPlaintext},
		{"stray temp", func(t *testing.T, fx *fixture) {
			fx.file(t, "enc/.mountd-tmp-0123456789abcdef", []byte("half"))
		}, "enc/.mountd-tmp-0123456789abcdef", findStrayTemp, -1, exitLeftovers},
		{"stray verifier temp", func(t *testing.T, fx *fixture) {
			os.WriteFile(filepath.Join(fx.data, "auth/.verifier.tmp-00112233"), []byte("half"), 0o600)
		}, "auth/.verifier.tmp-00112233", findStrayVerifierTm, -1, exitLeftovers},
	}
	template := newFixture(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fx := template.copy(t)
			tc.damage(t, fx)
			setAtimesOld(t, fx.data)
			before := treeState(t, fx.data, "auth/lock")
			code, rep, errs := runFsck(t, fx.data, "pw\n")
			if code != tc.exit || rep.Clean {
				t.Fatalf("exit %d, want %d: %+v %s", code, tc.exit, rep.Findings, errs)
			}
			if len(rep.Findings) != 1 {
				t.Fatalf("want exactly one finding: %+v", rep.Findings)
			}
			f := rep.Findings[0]
			if f.Path != tc.path || f.Kind != tc.kind {
				t.Fatalf("finding %+v, want %s %s", f, tc.path, tc.kind)
			}
			if tc.block >= 0 && (f.Block == nil || *f.Block != tc.block || *f.Offset != blockStart(tc.block)) {
				t.Fatalf("first bad block %v, want %d: %s", f.Block, tc.block, f.Detail)
			}
			if after := treeState(t, fx.data, "auth/lock"); !mapsEqual(before, after) {
				t.Fatal("fsck changed the tree")
			}
			// The text form names the path (and block).
			_, out, _ := mountd(t, "pw\n", "fsck", "--data", fx.data)
			want := tc.path + ": "
			if tc.block >= 0 {
				want += "block " + itoa(int(tc.block))
			}
			if !strings.Contains(out, want) && !(tc.block >= 0 && strings.Contains(out, tc.path+": truncated in the middle of block "+itoa(int(tc.block)))) {
				t.Fatalf("text output lacks %q:\n%s", want, out)
			}
		})
	}
}

// TestFsckHardLinks: a damaged file with two names is checked once and
// reported under both.
func TestFsckHardLinks(t *testing.T) {
	fx := newFixture(t)
	fx.patch(t, "enc/4097.bin", func(b []byte) []byte { b[blockAt(0)+30] ^= 1; return b })
	os.Link(filepath.Join(fx.data, "enc/4097.bin"), filepath.Join(fx.data, "zz-second-name.bin"))
	code, rep, _ := runFsck(t, fx.data, "pw\n")
	if code != exitDamaged || len(rep.Findings) != 2 || rep.Findings[0].Path != "enc/4097.bin" || rep.Findings[1].Path != "zz-second-name.bin" {
		t.Fatalf("exit %d: %+v", code, rep.Findings)
	}
}

// TestFsckWithoutVerifier: with no verifier, fsck asks for no password;
// encrypted files then mean damage (nothing can decrypt them); a tree
// without any is clean.
func TestFsckWithoutVerifier(t *testing.T) {
	fx := newFixture(t)
	os.Remove(crypto.VerifierPath(fx.data))
	code, rep, _ := runFsck(t, fx.data, "")
	if code != exitDamaged || rep.Verifier != "missing" || rep.Findings[0].Kind != findNoVerifier {
		t.Fatalf("exit %d: %+v", code, rep)
	}
	plain := t.TempDir()
	os.WriteFile(filepath.Join(plain, "a.txt"), []byte("x"), 0o600)
	if code, rep, _ := runFsck(t, plain, ""); code != 0 || !rep.Clean || rep.Verifier != "missing" {
		t.Fatalf("plain tree: exit %d: %+v", code, rep)
	}
	// A directory mountd never used (a mistyped --data) gains nothing:
	// no auth/, no lock.
	if code, _, errs := mountd(t, "", "info", "--data", plain); code != 0 {
		t.Fatalf("info: %d %s", code, errs)
	}
	if code, _, errs := mountd(t, "", "export", "--data", plain, "--out", filepath.Join(t.TempDir(), "o")); code != 0 {
		t.Fatalf("export: %d %s", code, errs)
	}
	if entries, _ := os.ReadDir(plain); len(entries) != 1 {
		t.Fatalf("the plain directory now holds %d entries", len(entries))
	}
	os.WriteFile(crypto.VerifierPath(fx.data), []byte("MTDVRF\x00\x02garbage"), 0o600)
	if code, rep, _ := runFsck(t, fx.data, ""); code != exitDamaged || rep.Findings[0].Kind != findBadVerifier {
		t.Fatalf("corrupt verifier: exit %d: %+v", code, rep)
	}
}

func TestInfo(t *testing.T) {
	fx := newFixture(t)
	fx.file(t, "p.bin", []byte("plain"))
	other, _ := initData(t, "other")
	writeEncrypted(t, keyring(t, other, "other"), fx.data, "foreign.bin", []byte("x"))
	code, out, errs := mountd(t, "", "info", "--data", fx.data, "--json")
	var rep infoReport
	if code != 0 || json.Unmarshal([]byte(out), &rep) != nil {
		t.Fatalf("info: exit %d %s %s", code, out, errs)
	}
	v, _ := crypto.ReadVerifier(crypto.VerifierPath(fx.data))
	c := rep.Counts
	if rep.Verifier == nil || rep.Verifier.Version != 2 || rep.Verifier.KeyID != hexID(v.KeyID) ||
		rep.Verifier.KDF.Time != 2 || rep.Verifier.KDF.MemoryKiB != 19*1024 || len(rep.Verifier.Slots) != 2 ||
		c.Encrypted != int64(len(sizes)+3) || c.ForeignKey != 1 || c.PlainProtected != 1 || c.PlainOther != 2 {
		t.Fatalf("info: %+v %+v", rep.Verifier, c)
	}
	code, out, _ = mountd(t, "", "info", "--data", fx.data)
	for _, want := range []string{"format version 2", "key slots:       password, recovery", "argon2id t=2 m=19 MiB p=1", "(1 under another master key)", "1 under protected names (*.bin)"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("info text lacks %q:\n%s", want, out)
		}
	}
}

func hexID(id crypto.KeyID) string { return hex.EncodeToString(id[:]) }

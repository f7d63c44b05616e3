package crypto

import (
	"bytes"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	iofs "io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var updateKAT = flag.Bool("update-kat", false, "rewrite crypto/testdata known-answer files")

// Known-answer vectors: ciphertext files produced by this package and
// checked in. Decrypting them must keep working forever; a change that
// breaks old files fails here.
//
//	kat-<name>.enc   a version 1 file (frozen)
//	kat2-<name>.enc  a version 2 file
//	kat-<name>.plain its plaintext
//	kat.key             the master key, hex
//	kat-verifier.bin    a version 1 verifier wrapping that key under katPassword
//	kat-verifier-v2.bin a version 2 verifier wrapping it under katPassword
//	                    (password slot) and the recovery key in
//	kat-recovery-key.txt (recovery slot), whose raw bytes are katRecoveryKey
//
// -update-kat writes only the files that are missing: vectors once checked
// in are never regenerated (random nonces would change them). Content
// files are written in the current version (Version).
const katPassword = "mountd known-answer password ü"

var katPlaintexts = map[string][]byte{
	"empty":     {},
	"short":     []byte("hello, mountd\n"),
	"oneblock":  bytes.Repeat([]byte{0x5a}, BlockSize),
	"threepart": append(bytes.Repeat([]byte("0123456789"), 1000), 'x'),
}

func katRecoveryKey() []byte {
	k := make([]byte, RecoveryKeySize)
	for i := range k {
		k[i] = byte(i*11 + 5)
	}
	return k
}

func katKey() []byte {
	k := make([]byte, KeySize)
	for i := range k {
		k[i] = byte(i*7 + 3)
	}
	return k
}

func TestKnownAnswer(t *testing.T) {
	dir := "testdata"
	if *updateKAT {
		writeKAT(t, dir)
	}
	keyHex, err := os.ReadFile(filepath.Join(dir, "kat.key"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := hex.DecodeString(string(bytes.TrimSpace(keyHex)))
	if err != nil || !bytes.Equal(key, katKey()) {
		t.Fatalf("kat.key: %v", err)
	}
	k := NewKeyring()
	if err := k.setKeyForTest(key); err != nil {
		t.Fatal(err)
	}
	for v, prefix := range katPrefix {
		for name := range katPlaintexts {
			t.Run(prefix+name, func(t *testing.T) {
				want, err := os.ReadFile(filepath.Join(dir, "kat-"+name+".plain"))
				if err != nil {
					t.Fatal(err)
				}
				b, err := os.Open(filepath.Join(dir, prefix+name+".enc"))
				if err != nil {
					t.Fatal(err)
				}
				defer b.Close()
				f, err := OpenFile(k, b)
				if err != nil {
					t.Fatal(err)
				}
				if f.Header().Version != v {
					t.Fatalf("version %d, want %d", f.Header().Version, v)
				}
				if got := readAll(t, f); !bytes.Equal(got, want) {
					t.Fatalf("decrypted %d bytes, differs from %d-byte plaintext", len(got), len(want))
				}
				if err := f.Verify(func(d Damage) error { return fmt.Errorf("damage %+v", d) }); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
	id, _ := k.KeyID()
	unlocked := func(t *testing.T, k2 *Keyring) {
		t.Helper()
		if id2, _ := k2.KeyID(); id2 != id {
			t.Fatal("verifier unwraps a different key")
		}
	}
	t.Run("verifier", func(t *testing.T) {
		v, err := ReadVerifier(filepath.Join(dir, "kat-verifier.bin"))
		if err != nil {
			t.Fatal(err)
		}
		if v.Version != 1 || v.Recovery {
			t.Fatalf("version %d, recovery %v", v.Version, v.Recovery)
		}
		k2 := NewKeyring()
		if err := k2.Unlock(v, []byte(katPassword)); err != nil {
			t.Fatal(err)
		}
		unlocked(t, k2)
	})
	t.Run("verifier-v2", func(t *testing.T) {
		v, err := ReadVerifier(filepath.Join(dir, "kat-verifier-v2.bin"))
		if err != nil {
			t.Fatal(err)
		}
		if v.Version != 2 || !v.Recovery || v.KeyID != id {
			t.Fatalf("version %d, recovery %v", v.Version, v.Recovery)
		}
		k2 := NewKeyring()
		if err := k2.Unlock(v, []byte(katPassword)); err != nil {
			t.Fatal(err)
		}
		unlocked(t, k2)
		text, err := os.ReadFile(filepath.Join(dir, "kat-recovery-key.txt"))
		if err != nil {
			t.Fatal(err)
		}
		if got := FormatRecoveryKey(katRecoveryKey()); string(got) != string(bytes.TrimSpace(text)) {
			t.Fatalf("recovery key text %q, want %q", text, got)
		}
		k3 := NewKeyring()
		if err := k3.UnlockRecovery(v, text); err != nil {
			t.Fatal(err)
		}
		unlocked(t, k3)
	})
}

// TestKnownAnswerEncoding checks the checked-in content files bit for bit
// against docs/FORMAT.md's encoder (specEncode): with the file-id and the
// nonces a vector holds, the page's rules give exactly its bytes, in both
// versions — the layout, the lengths, the aad, the zeros after each version
// 2 slot and the bytes past its last page.
func TestKnownAnswerEncoding(t *testing.T) {
	for v, prefix := range katPrefix {
		for name := range katPlaintexts {
			t.Run(prefix+name, func(t *testing.T) {
				enc, err := os.ReadFile(filepath.Join("testdata", prefix+name+".enc"))
				if err != nil {
					t.Fatal(err)
				}
				plain, err := os.ReadFile(filepath.Join("testdata", "kat-"+name+".plain"))
				if err != nil {
					t.Fatal(err)
				}
				if enc[7] != v {
					t.Fatalf("version byte %d, want %d", enc[7], v)
				}
				want := specEncode(t, v, katKey(), enc[16:32], specNonces(enc, len(plain)), plain)
				if !bytes.Equal(enc, want) {
					t.Fatalf("%d bytes differ from the %d the spec encodes (first difference at %d)", len(enc), len(want), firstDiff(enc, want))
				}
			})
		}
	}
}

// TestWriterMatchesSpec is the known answer for today's writer: a file
// written through File (in one write, or appended in pieces that rewrite
// the last block many times) is byte for byte what docs/FORMAT.md's encoder
// makes of its plaintext with the file-id and nonces it drew.
func TestWriterMatchesSpec(t *testing.T) {
	k := NewKeyring()
	if err := k.setKeyForTest(katKey()); err != nil {
		t.Fatal(err)
	}
	plains := map[string][]byte{
		"two-full-blocks": bytes.Repeat([]byte{0xa5}, 4032+4064),
		"one-byte-more":   bytes.Repeat([]byte{0x3c}, 4032+1),
		"large":           bytes.Repeat([]byte("mountd format 2 "), 5000),
	}
	for name, p := range katPlaintexts {
		plains["kat-"+name] = p
	}
	for name, plain := range plains {
		for _, piece := range []int{0, 1000, 4095} {
			t.Run(fmt.Sprintf("%s/pieces-%d", name, piece), func(t *testing.T) {
				mb := &memBacking{}
				f, err := CreateFile(k, mb)
				if err != nil {
					t.Fatal(err)
				}
				step := piece
				if step == 0 {
					step = max(len(plain), 1)
				}
				for off := 0; off < len(plain); off += step {
					if _, err := f.WriteAt(plain[off:min(off+step, len(plain))], int64(off)); err != nil {
						t.Fatal(err)
					}
				}
				got := mb.b
				if got[7] != Version {
					t.Fatalf("written in version %d, not %d", got[7], Version)
				}
				want := specEncode(t, Version, katKey(), got[16:32], specNonces(got, len(plain)), plain)
				if !bytes.Equal(got, want) {
					t.Fatalf("wrote %d bytes, the spec encodes %d (first difference at %d)", len(got), len(want), firstDiff(got, want))
				}
			})
		}
	}
}

// TestFormatDocExamples checks the worked examples of docs/FORMAT.md: each
// hex dump is the start of the known-answer file it names, and a stated
// length is that file's.
func TestFormatDocExamples(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "docs", "FORMAT.md"))
	if err != nil {
		t.Fatal(err)
	}
	sections := strings.Split(string(doc), "#### Worked example")[1:]
	if len(sections) < 2 {
		t.Fatalf("%d worked examples in FORMAT.md, want one per content version", len(sections))
	}
	name := regexp.MustCompile("`crypto/testdata/(kat2?-[a-z]+\\.enc)`")
	length := regexp.MustCompile(`It is (\d+) bytes long|\((\d+) = `)
	dumpLine := regexp.MustCompile(`(?m)^([0-9a-f]{8}): ((?:[0-9a-f]{2,4} ?)+)`)
	versions := map[byte]bool{}
	for _, sec := range sections {
		sec = strings.SplitN(sec, "\n#", 2)[0]
		m := name.FindStringSubmatch(sec)
		if m == nil {
			t.Fatal("a worked example names no known-answer file")
		}
		file, err := os.ReadFile(filepath.Join("testdata", m[1]))
		if err != nil {
			t.Fatal(err)
		}
		versions[file[7]] = true
		if l := length.FindStringSubmatch(sec); l != nil {
			if n := l[1] + l[2]; n != fmt.Sprint(len(file)) {
				t.Errorf("%s: FORMAT.md says %s bytes, the file has %d", m[1], n, len(file))
			}
		}
		lines := dumpLine.FindAllStringSubmatch(sec, -1)
		if len(lines) == 0 {
			t.Fatalf("%s: no hex dump", m[1])
		}
		var dump []byte
		for _, l := range lines {
			var off int
			fmt.Sscanf(l[1], "%x", &off)
			if off != len(dump) {
				t.Fatalf("%s: dump line at %s, want %08x", m[1], l[1], len(dump))
			}
			b, err := hex.DecodeString(strings.ReplaceAll(strings.TrimSpace(l[2]), " ", ""))
			if err != nil {
				t.Fatalf("%s: dump line %s: %v", m[1], l[1], err)
			}
			dump = append(dump, b...)
		}
		if len(dump) > len(file) || !bytes.Equal(dump, file[:len(dump)]) {
			t.Errorf("%s: FORMAT.md's dump differs from the file (first difference at %d)", m[1], firstDiff(dump, file))
		}
	}
	if !versions[1] || !versions[2] {
		t.Fatalf("worked examples cover versions %v, want 1 and 2", versions)
	}
}

// firstDiff is the first offset at which a and b differ (or the shorter
// length).
func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// katPrefix names the known-answer files of each version.
var katPrefix = map[uint8]string{1: "kat-", 2: "kat2-"}

func writeKAT(t *testing.T, dir string) {
	t.Helper()
	k := NewKeyring()
	if err := k.setKeyForTest(katKey()); err != nil {
		t.Fatal(err)
	}
	// create writes name unless it exists already.
	create := func(name string, data []byte) {
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if errors.Is(err, iofs.ErrExist) {
			return
		}
		if err == nil {
			_, err = f.Write(data)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", name)
	}
	create("kat.key", []byte(hex.EncodeToString(katKey())+"\n"))
	for name, plain := range katPlaintexts {
		mb := &memBacking{}
		f, err := CreateFile(k, mb)
		if err == nil {
			_, err = f.WriteAt(plain, 0)
		}
		if err != nil {
			t.Fatal(err)
		}
		create(katPrefix[Version]+name+".enc", mb.b)
		create("kat-"+name+".plain", plain)
	}
	v, err := build(katKey(), nil, []byte(katPassword), testKDF, katRecoveryKey())
	if err != nil {
		t.Fatal(err)
	}
	create("kat-verifier-v2.bin", v.Marshal())
	create("kat-recovery-key.txt", append(FormatRecoveryKey(katRecoveryKey()), '\n'))
}

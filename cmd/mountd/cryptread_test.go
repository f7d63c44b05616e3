package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"github.com/mountd/mountd/crypto"
)

// bigEncrypted writes an encrypted file of n plaintext bytes with the
// given blocks damaged, and returns it open for reading with its
// plaintext and data directory.
func bigEncrypted(t *testing.T, n int, damage ...int) (*cryptFile, []byte, string) {
	t.Helper()
	data, _ := initData(t, "pw")
	kr := keyring(t, data, "pw")
	plain := randomBytes(n)
	writeEncrypted(t, kr, data, "big.bin", plain)
	p := filepath.Join(data, "big.bin")
	b, _ := os.ReadFile(p)
	for _, blk := range damage {
		b[blockAt(blk)+40] ^= 0x80
	}
	os.WriteFile(p, b, 0o600)
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	cf, err := openCrypt(kr, f, int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	return cf, plain, data
}

// readEdge is the block the k-th read of stream (of scanBuf bytes) ends
// before: reads end on a block boundary, scanBuf*k falls inside the block
// before it.
func readEdge(k int) int {
	h := crypto.Header{Version: crypto.Version}
	return int(h.BlockOf(int64(k)*scanBuf)) + 1
}

// TestStreamZeroFills: export's path over a file of several reads writes
// every authentic byte in order and zeros for each bad block (at the
// start, at read edges, inside, beyond the reads in flight), through the
// pipe writer with export's buffers, and reports the bad blocks in order.
func TestStreamZeroFills(t *testing.T) {
	bad := []int{0, readEdge(1) - 1, readEdge(1), readEdge(2) + 3, readEdge(3) + 1, readEdge(5) - 1, readEdge(5)}
	cf, plain, _ := bigEncrypted(t, 5*scanBuf+5*crypto.BlockSize+77, bad...)
	want := bytes.Clone(plain)
	for _, b := range bad {
		clear(want[blockStart(int64(b)):min(blockStart(int64(b)+1), int64(len(want)))])
	}
	for _, tc := range []struct {
		name string
		bufs [][]byte
	}{
		{"export's buffers", splitBuf(make([]byte, exportBuf), readDepth+1)},
		// Buffers smaller than a block: a damaged block spans reads.
		{"buffers of 1000 bytes", splitBuf(make([]byte, 1000*(readDepth+1)), readDepth+1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			pw := newPipeWriter(&out, tc.bufs)
			var got []int64
			err := cf.stream(readDepth, pw.get, pw.emit, func(b badBlock) bool { got = append(got, b.Block); return true })
			if cerr := pw.close(); err == nil {
				err = cerr
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out.Bytes(), want) {
				t.Fatalf("%d bytes out, not the plaintext with the bad blocks zeroed", out.Len())
			}
			if fmt.Sprint(got) != fmt.Sprint(bad) {
				t.Fatalf("bad blocks %v, want %v", got, bad)
			}
		})
	}
}

// TestStreamFirstBadBlock: fsck's path (reads in flight, stop at the
// first bad block) names exactly the first damaged block wherever it
// sits, when a later read fails as well, and hands on every byte before
// it and none of it or after it; mountd fsck reports the same block.
func TestStreamFirstBadBlock(t *testing.T) {
	const size = 5*scanBuf + 3*crypto.BlockSize + 77
	last := int((size - 1) / crypto.BlockSize)
	cases := []struct {
		name   string
		damage []int
	}{
		{"first block", []int{0}},
		{"end of the first read", []int{readEdge(1) - 1}},
		{"start of the second read", []int{readEdge(1)}},
		{"middle of the file", []int{(readEdge(2) + readEdge(3)) / 2}},
		{"beyond the reads in flight", []int{readEdge(readDepth) + 1}},
		{"last block", []int{last}},
		{"a later read fails too", []int{last, readEdge(4) + 1, readEdge(2) + 7}},
		{"two in one read", []int{readEdge(1) + 9, readEdge(1) + 3}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cf, plain, data := bigEncrypted(t, size, tc.damage...)
			first := slices.Min(tc.damage)
			ring := newBufRing(readDepth, scanBuf)
			var out bytes.Buffer
			var named []badBlock
			err := cf.stream(readDepth, ring.get, func(p []byte) error {
				out.Write(p)
				ring.put(p)
				return nil
			}, func(b badBlock) bool { named = append(named, b); return false })
			if err != nil {
				t.Fatal(err)
			}
			if len(named) != 1 || named[0].Block != int64(first) || named[0].Off != blockStart(int64(first)) {
				t.Fatalf("named %+v, want block %d only", named, first)
			}
			if !bytes.Equal(out.Bytes(), plain[:blockStart(int64(first))]) {
				t.Fatalf("%d bytes handed on, want the %d before block %d", out.Len(), blockStart(int64(first)), first)
			}
			code, rep, errs := runFsck(t, data, "pw\n")
			if code == 0 || len(rep.Findings) != 1 || rep.Findings[0].Block == nil || *rep.Findings[0].Block != int64(first) {
				t.Fatalf("fsck: exit %d, %+v: %s", code, rep.Findings, errs)
			}
		})
	}
}

// benchTree makes a data directory of files encrypted files of size
// plaintext bytes each and returns it with the keyring.
func benchTree(b *testing.B, files, size int) (string, *crypto.Keyring) {
	b.Helper()
	data, _ := initData(b, "pw")
	kr := keyring(b, data, "pw")
	plain := randomBytes(size)
	for i := range files {
		writeEncrypted(b, kr, data, fmt.Sprintf("big-%d.bin", i), plain)
	}
	return data, kr
}

// BenchmarkStream: the decrypt path of fsck (stream through a ring of
// buffers) and of export (stream through the pipe writer into a new
// file) over one 64 MiB file, warm cache: "before" reads 4 MiB at a time, reading and
// decrypting in turn (fsck and export before the reads were pipelined),
// "now" is what they use.
func BenchmarkStream(b *testing.B) {
	const size = 64 << 20
	data, kr := benchTree(b, 1, size)
	f, err := os.Open(filepath.Join(data, "big-0.bin"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	open := func() *cryptFile {
		cf, err := openCrypt(kr, f, fi.Size())
		if err != nil {
			b.Fatal(err)
		}
		return cf
	}
	noBad := func(bb badBlock) bool { b.Fatalf("bad block %d", bb.Block); return false }
	for _, cf := range []struct {
		name        string
		depth, size int
	}{{"before", 1, 4 << 20}, {"now", readDepth, scanBuf}} {
		depth := cf.depth
		b.Run("fsck/"+cf.name, func(b *testing.B) {
			ring := newBufRing(depth, cf.size)
			b.SetBytes(size)
			for b.Loop() {
				if err := open().stream(depth, ring.get, func(p []byte) error { ring.put(p); return nil }, noBad); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("export/"+cf.name, func(b *testing.B) {
			buf := make([]byte, (depth+1)*cf.size)
			out := filepath.Join(b.TempDir(), "out")
			b.SetBytes(size)
			for b.Loop() {
				w, err := os.Create(out)
				if err != nil {
					b.Fatal(err)
				}
				pw := newPipeWriter(w, splitBuf(buf, depth+1))
				err = open().stream(depth, pw.get, pw.emit, noBad)
				if cerr := pw.close(); err == nil {
					err = cerr
				}
				if cerr := w.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				os.Remove(out)
				b.StartTimer()
			}
		})
	}
}

// BenchmarkOffline: mountd fsck and mountd export, as the command runs
// them, over 4 files of 32 MiB (warm cache; bench/offline.sh compares
// them with cat and cp -a, cold and warm).
func BenchmarkOffline(b *testing.B) {
	const files, size = 4, 32 << 20
	data, _ := benchTree(b, files, size)
	pw := filepath.Join(b.TempDir(), "pw")
	os.WriteFile(pw, []byte("pw\n"), 0o600)
	b.Run("fsck", func(b *testing.B) {
		b.SetBytes(files * size)
		for b.Loop() {
			if code, _, errs := mountd(b, "", "fsck", "--data", data, "--password-file", pw); code != 0 {
				b.Fatalf("fsck: exit %d: %s", code, errs)
			}
		}
	})
	b.Run("export", func(b *testing.B) {
		b.SetBytes(files * size)
		tmp := b.TempDir()
		i := 0
		for b.Loop() {
			out := filepath.Join(tmp, strconv.Itoa(i))
			i++
			if code, _, errs := mountd(b, "", "export", "--data", data, "--out", out, "--password-file", pw); code != 0 {
				b.Fatalf("export: exit %d: %s", code, errs)
			}
			b.StopTimer()
			os.RemoveAll(out)
			b.StartTimer()
		}
	})
}

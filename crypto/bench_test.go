package crypto

import (
	"crypto/rand"
	"fmt"
	"testing"
)

// BenchmarkSealOpenBlock measures the raw AEAD cost of one 4 KiB block.
func BenchmarkSealOpenBlock(b *testing.B) {
	k := newTestKeyring(b, 1)
	h, _ := k.NewHeader()
	k.mu.RLock()
	aead, err := k.fileAEAD(&h)
	k.mu.RUnlock()
	if err != nil {
		b.Fatal(err)
	}
	pt := make([]byte, PageBlockSize)
	ct := make([]byte, PageSize)
	var buf [aadSize]byte
	aad := h.aad(&buf, 7, []byte{0x0f, 0xe0, 0, 0})
	b.SetBytes(PageBlockSize)
	b.ReportAllocs()
	for b.Loop() {
		rand.Read(ct[:NonceSize])
		aead.Seal(ct[NonceSize:NonceSize], ct[:NonceSize], pt, aad)
		if _, err := aead.Open(pt[:0], ct[:NonceSize], ct[NonceSize:NonceSize+PageBlockSize+TagSize], aad); err != nil {
			b.Fatal(err)
		}
	}
}

func benchFile(b *testing.B, size int) (*File, []byte) {
	k := newTestKeyring(b, 2)
	f, _ := newTestFile(b, k)
	buf := make([]byte, size)
	rand.Read(buf)
	return f, buf
}

// BenchmarkWrite1MiB writes 1 MiB requests sequentially (64 MiB, rewritten).
func BenchmarkWrite1MiB(b *testing.B) {
	f, buf := benchFile(b, chunkPlain)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := f.WriteAt(buf, int64(i%64)*int64(len(buf))); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkRead1MiB reads 1 MiB requests sequentially from a 64 MiB file.
func BenchmarkRead1MiB(b *testing.B) {
	f, buf := benchFile(b, chunkPlain)
	for i := 0; i < 64; i++ {
		f.WriteAt(buf, int64(i)*int64(len(buf)))
	}
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := f.ReadAt(buf, int64(i%64)*int64(len(buf))); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkRandomWrite4K rewrites aligned 4 KiB blocks of a 64 MiB file.
func BenchmarkRandomWrite4K(b *testing.B) {
	f, buf := benchFile(b, chunkPlain)
	for i := 0; i < 64; i++ {
		f.WriteAt(buf, int64(i)*int64(len(buf)))
	}
	b.SetBytes(BlockSize)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := f.WriteAt(buf[:BlockSize], int64((i*7919)%(64*256))*BlockSize); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkRandomRead4K reads aligned 4 KiB blocks of a 64 MiB file.
func BenchmarkRandomRead4K(b *testing.B) {
	f, buf := benchFile(b, chunkPlain)
	for i := 0; i < 64; i++ {
		f.WriteAt(buf, int64(i)*int64(len(buf)))
	}
	b.SetBytes(BlockSize)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := f.ReadAt(buf[:BlockSize], int64((i*7919)%(64*256))*BlockSize); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkAppendFsync appends 200-byte records to a file on disk, each
// followed by an fsync of the backing file (what an fsync through the
// mount does), in both formats: the log and database pattern that a
// power loss must not hurt (FORMAT.md, section 5).
func BenchmarkAppendFsync(b *testing.B) {
	for _, v := range []uint8{1, 2} {
		b.Run(fmt.Sprintf("v%d", v), func(b *testing.B) {
			k := newTestKeyring(b, 3)
			rec := make([]byte, 200)
			rand.Read(rec)
			f, bk := newFileV(b, k, v, rec)
			off := int64(len(rec))
			b.SetBytes(int64(len(rec)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := f.WriteAt(rec, off); err != nil {
					b.Fatal(err)
				}
				if err := bk.Sync(); err != nil {
					b.Fatal(err)
				}
				off += int64(len(rec))
			}
		})
	}
}

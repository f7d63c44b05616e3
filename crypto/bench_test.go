package crypto

import (
	"crypto/rand"
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
	pt := make([]byte, BlockSize)
	ct := make([]byte, CipherBlockSize)
	var aad [aadSize]byte
	h.aad(&aad, 7)
	b.SetBytes(BlockSize)
	b.ReportAllocs()
	for b.Loop() {
		rand.Read(ct[:NonceSize])
		aead.Seal(ct[NonceSize:NonceSize], ct[:NonceSize], pt, aad[:])
		if _, err := aead.Open(pt[:0], ct[:NonceSize], ct[NonceSize:], aad[:]); err != nil {
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

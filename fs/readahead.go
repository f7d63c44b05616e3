package fs

import (
	"golang.org/x/sys/unix"

	"mountd/crypto"
)

// Daemon-side readahead for encrypted files. They are opened with direct
// I/O, so the kernel does no readahead on the mount: each read request
// arrives only when the application asks, and its backing pread would wait
// for the disk. When reads run sequentially, readAhead asks the kernel to
// start reading the next stretch of the backing file, so the next request
// finds its ciphertext in the page cache.

const (
	// readAheadMin is the request size from which a sequential read
	// triggers readahead (smaller ones are left to the kernel's own
	// readahead on the backing file).
	readAheadMin = 64 << 10
	// readAheadWindow is how much plaintext ahead of a sequential read is
	// requested.
	readAheadWindow = 8 << 20
)

// readAhead notes a read of n bytes at off and, if it continues the last
// one, starts reading the ciphertext that follows it.
func (st *inodeState) readAhead(off int64, n int) {
	end := off + int64(n)
	prev := st.nextRead.Swap(end)
	if n < readAheadMin || off != prev {
		return
	}
	first := end / crypto.BlockSize
	cOff := crypto.HeaderSize + first*crypto.CipherBlockSize
	cLen := int64(readAheadWindow/crypto.BlockSize) * crypto.CipherBlockSize
	_ = unix.Fadvise(st.fd, cOff, cLen, unix.FADV_WILLNEED)
}

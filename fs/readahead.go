package fs

import (
	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/crypto"
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
	// readAheadStep is the least ciphertext asked for at once: about
	// half a window.
	readAheadStep = readAheadWindow / 2
)

// sequential notes a read of n bytes at off and reports whether it
// continues the previous one and is large enough to read ahead for.
func (st *inodeState) sequential(off int64, n int) bool {
	prev := st.nextRead.Swap(off + int64(n))
	return n >= readAheadMin && off == prev
}

// readAhead makes sure the ciphertext from the plaintext offset end to
// readAheadWindow past it is being read. It asks the kernel for half a
// window at a time: FADV_WILLNEED walks every page it is given, cached or
// not, so asking for the whole window on every request cost more than
// the decryption.
// h is the file's header, which says where its blocks are.
func (st *inodeState) readAhead(h crypto.Header, end int64) {
	want := h.CipherOffset(end + readAheadWindow)
	have := st.raEnd.Load()
	if from := h.CipherOffset(end); have < from || have > want {
		have = from // a new stream, or one that went back
	}
	if want-have < readAheadStep {
		return
	}
	st.raEnd.Store(want)
	_ = unix.Fadvise(st.fd, have, want-have, unix.FADV_WILLNEED)
}

package fs

import (
	"errors"
	"io"
	"sync"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// Plaintext prefetch for sequential reads of encrypted files. Encrypted
// files are on direct I/O, so the kernel sends the next read only when
// the application asks for it, and the daemon would read and decrypt each
// request while the reader waits. When a large read continues the
// previous one, the daemon decrypts the request that would follow, in the
// background, into a buffer of its own; the next read, if it asks for
// exactly that, is answered from the buffer. Decryption then overlaps the
// kernel's copy to the application, which is what the page cache's
// readahead gives a plaintext file.
//
// Correctness: an inode has at most prefetchDepth prefetches, for the
// requests that would follow the last read. Everything that changes
// an inode's content, size or backing descriptor takes st.mu with
// lockChange (openfile.go), which waits for the prefetches to finish and
// discards them (dropPrefetch); prefetches start only from reads, under
// st.mu shared. So a prefetch never overlaps a change, and a read served
// from one returns what a read at that moment would have. A prefetch's
// goroutine takes no lock of the inode (lockChange waits for it while
// holding st.mu); doc.go has the whole lock order.
//
// Secrets: the buffers hold plaintext. A read is served from a prefetch
// only under Root.gate with the key set (as a crypto read would be), and
// the logout listener discards every prefetch and zeroes its buffer
// (clearPrefetches) before the key is zeroed. A buffer whose bytes were
// already served and are being sent to the kernel is zeroed when go-fuse
// reports the send done (prefetchResult.Done); one whose read failed
// part-way is zeroed whole at once. A prefetch still running at
// logout fails with ErrLocked, or finishes before the listener, which
// waits for it.

const (
	// prefetchMax is the largest read that can be prefetched: the
	// buffer size, one maximal FUSE request.
	prefetchMax = 1 << 20
	// prefetchDepth is how many requests ahead a stream is read.
	prefetchDepth = 2
	// prefetchBufs bounds the buffers, and so the prefetches at once.
	prefetchBufs = 8
)

// prefetch is one background read of [off, off+n).
type prefetch struct {
	off  int64
	n    int
	buf  []byte
	m    int   // bytes read
	err  error // as returned by crypto.File.ReadAt
	done chan struct{}
}

// prefetchPool holds the buffers of a Root. A buffer is zeroed when it
// comes back, so the free ones hold no plaintext.
type prefetchPool struct {
	mu   sync.Mutex
	free [][]byte
	made int
}

func (p *prefetchPool) get() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.free); n > 0 {
		b := p.free[n-1]
		p.free = p.free[:n-1]
		return b
	}
	if p.made >= prefetchBufs {
		return nil
	}
	p.made++
	return make([]byte, prefetchMax)
}

// put zeroes the used part of pf's buffer and frees it.
func (p *prefetchPool) put(pf *prefetch) {
	clear(pf.buf[:pf.m])
	p.mu.Lock()
	p.free = append(p.free, pf.buf)
	p.mu.Unlock()
}

// startPrefetch makes sure the requests of n bytes that follow off are
// being read in the background, prefetchDepth of them (and the backing
// file ahead of them: readAhead), as far as buffers allow, and reports
// whether the next one is. Caller holds st.mu shared, and st.cf is set.
func (r *Root) startPrefetch(st *inodeState, off int64, n int) bool {
	if n > prefetchMax {
		return false
	}
	st.pfMu.Lock()
	defer st.pfMu.Unlock()
	if k := len(st.pf); k > 0 {
		if head := st.pf[0]; head.off != off || head.n != n {
			return true // another reader's stream: leave it be
		}
		off = st.pf[k-1].off + int64(n)
	}
	cf := st.cf
	for len(st.pf) < prefetchDepth {
		buf := r.pf.get()
		if buf == nil {
			break
		}
		pf := &prefetch{off: off, n: n, buf: buf, done: make(chan struct{})}
		st.pf = append(st.pf, pf)
		go func() {
			defer close(pf.done)
			st.readAhead(cf.Header(), pf.off)
			m, err := cf.ReadAt(pf.buf[:pf.n], pf.off)
			if err != nil && !errors.Is(err, io.EOF) {
				// A read that failed part-way reports no bytes but may
				// have decrypted some: put zeroes only the first m.
				clear(pf.buf[:pf.n])
				m = 0
			}
			pf.m, pf.err = max(m, 0), err
		}()
		off += int64(n)
	}
	return len(st.pf) > 0
}

// takePrefetch answers a read of n bytes at off from st's first
// prefetch, if it read exactly that without error: it returns the result
// to give the kernel, which frees the buffer once sent. A prefetch that
// does not match is discarded with the ones after it. Caller holds st.mu
// shared and Root.gate shared, and has checked the key.
func (r *Root) takePrefetch(st *inodeState, n int, off int64) fuse.ReadResult {
	st.pfMu.Lock()
	if len(st.pf) == 0 {
		st.pfMu.Unlock()
		return nil
	}
	pf := st.pf[0]
	if pf.off != off || pf.n != n {
		stale := st.pf
		st.pf = nil
		st.pfMu.Unlock()
		r.discard(stale)
		return nil
	}
	st.pf = append(st.pf[:0], st.pf[1:]...)
	st.pfMu.Unlock()
	<-pf.done
	if pf.err != nil && !errors.Is(pf.err, io.EOF) {
		r.pf.put(pf)
		return nil // a read error is left for the read itself to report
	}
	return &prefetchResult{pool: &r.pf, pf: pf}
}

// prefetchResult hands a prefetch buffer to go-fuse, which calls Done
// once the reply is sent.
type prefetchResult struct {
	pool *prefetchPool
	pf   *prefetch
}

func (p *prefetchResult) Bytes([]byte) ([]byte, fuse.Status) { return p.pf.buf[:p.pf.m], fuse.OK }
func (p *prefetchResult) Size() int                          { return p.pf.m }
func (p *prefetchResult) Done()                              { p.pool.put(p.pf) }

// Slices hands the reply to go-fuse as one slice, as dataResult does.
func (p *prefetchResult) Slices() ([][]byte, fuse.Status) {
	return [][]byte{p.pf.buf[:p.pf.m]}, fuse.OK
}

// discard waits for the prefetches and frees their buffers.
func (r *Root) discard(pfs []*prefetch) {
	for _, pf := range pfs {
		<-pf.done
		r.pf.put(pf)
	}
}

// dropPrefetch discards st's prefetches, after waiting for them.
func (r *Root) dropPrefetch(st *inodeState) {
	st.pfMu.Lock()
	pfs := st.pf
	st.pf = nil
	st.pfMu.Unlock()
	r.discard(pfs)
}

// clearPrefetches discards every prefetch (zeroing its buffer). The
// logout listener calls it once the Keyring is locked, so a prefetch that
// starts afterwards decrypts nothing.
func (r *Root) clearPrefetches() {
	for _, st := range r.files.states() {
		r.dropPrefetch(st)
	}
}

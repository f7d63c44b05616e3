package fs

import (
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/crypto"
)

// inodeState is the open-file table entry of one backing inode: what all
// handles on it share. It exists while the inode has handles open through
// the mount (or while encryptInPlace converts it) and is keyed by the
// backing device and inode number, so hard links and renames share one.
//
// All cryptFile handles do their I/O through one backing descriptor and,
// for an encrypted inode, one crypto.File, under mu: reads shared, writes,
// truncates and (re)binding exclusive. So read-modify-write cycles on a
// block never interleave and no update is lost.
type inodeState struct {
	key fileKey

	// Guarded by Root.tableMu.
	refs       int  // handles and temporary users
	converting bool // encryptInPlace owns the inode; opens wait

	mu          sync.RWMutex
	file        *os.File     // shared backing descriptor (nil until a cryptFile needs it)
	fd          int          // file's descriptor number
	writable    bool         // file is open for writing
	cf          *crypto.File // set once the content is known to be encrypted
	cryptRefs   int          // open cryptFile handles
	passthrough int          // open passthroughFile handles

	nextRead atomic.Int64 // where a sequential read would continue (readahead.go)
	raEnd    atomic.Int64 // end of the backing range asked to be read ahead

	pfMu sync.Mutex
	pf   []*prefetch // pending plaintext prefetches, in order (prefetch.go)
}

// acquire returns the table entry of key with a reference taken,
// creating it if needed. It waits while the inode is being converted and
// reports whether it did: the caller's descriptor may then point at the
// inode that the conversion replaced.
func (r *Root) acquire(key fileKey) (st *inodeState, waited bool) {
	r.tableMu.Lock()
	defer r.tableMu.Unlock()
	for {
		st = r.table[key]
		if st == nil {
			st = &inodeState{key: key, fd: -1}
			r.table[key] = st
			break
		}
		if !st.converting {
			break
		}
		waited = true
		r.tableCond.Wait()
	}
	st.refs++
	return st, waited
}

// release drops a reference taken by acquire. The last one closes the
// shared descriptor.
func (r *Root) release(st *inodeState) {
	r.tableMu.Lock()
	st.refs--
	last := st.refs == 0
	if last && r.table[st.key] == st {
		delete(r.table, st.key)
	}
	r.tableMu.Unlock()
	if !last {
		return
	}
	r.lockChange(st)
	if st.file != nil {
		st.file.Close()
		st.file, st.fd, st.writable = nil, -1, false
	}
	st.cf = nil
	st.mu.Unlock()
}

// openRefs returns how many handles and users key has (0 if none).
// Caller holds tableMu.
func (r *Root) openRefsLocked(key fileKey) int {
	if st := r.table[key]; st != nil {
		return st.refs
	}
	return 0
}

// attach offers fd, an open descriptor of the inode, as the shared
// backing descriptor, and reports whether st took ownership of it. A
// writable descriptor replaces a read-only one. Caller holds st.mu
// exclusively.
func (st *inodeState) attach(fd int, writable bool) bool {
	switch {
	case st.file == nil:
	case writable && !st.writable:
		old := st.file
		defer old.Close()
	default:
		return false
	}
	st.file = os.NewFile(uintptr(fd), "backing")
	st.fd = fd
	st.writable = writable
	if st.cf != nil {
		st.cf.SetBacking(st.file)
	}
	return true
}

// adopt gives fd (consumed) to st; see attach.
func (st *inodeState) adopt(fd int, writable bool) {
	if !st.attach(fd, writable) {
		unix.Close(fd)
	}
}

package fs

import (
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/crypto"
)

// The open-file table and the locks that guard an inode's content. This
// file is their one home: the table (fileTable), its references (acquire,
// release), the claims of conversions (claim), and the paired
// lockChange/unlockChange that every change of an inode's content, size or
// backing descriptor goes through. doc.go has the lock order of the whole
// package and the logout chain; the rules here are the part about files.

// fileTable is the open-file table: one inodeState per backing inode that
// has handles open through the mount, or that a conversion claims.
type fileTable struct {
	mu   sync.Mutex
	cond sync.Cond // on mu; broadcast when a claim is dropped
	m    map[fileKey]*inodeState

	// seq counts conversions that replaced an inode, so an open can tell
	// that the descriptor it opened may point at the replaced one.
	seq atomic.Uint64
}

func (t *fileTable) init() {
	t.m = map[fileKey]*inodeState{}
	t.cond.L = &t.mu
}

// states returns the entries of the table at this moment.
func (t *fileTable) states() []*inodeState {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]*inodeState, 0, len(t.m))
	for _, st := range t.m {
		out = append(out, st)
	}
	return out
}

// handleSet holds the file and directory handles that the kernel has not
// released. A RELEASE the kernel still has queued when the filesystem is
// unmounted is never sent (unmounting aborts the connection, and a close
// sends its RELEASE in the background), so the handle's descriptors would
// stay open: Server.Unmount releases what is left once the server has
// stopped (a backing directory on a FUSE filesystem such as sshfs could
// not be unmounted otherwise).
type handleSet struct {
	mu sync.Mutex
	m  map[leftRelease]struct{}
}

// leftRelease is a handle's Release, run for a handle the kernel never
// released.
type leftRelease interface{ releaseLeft() }

func (s *handleSet) add(h leftRelease) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[leftRelease]struct{}{}
	}
	s.m[h] = struct{}{}
}

// remove reports whether h was in the set: a handle is released once.
func (s *handleSet) remove(h leftRelease) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.m[h]
	delete(s.m, h)
	return ok
}

// releaseLeft releases every handle left, with no request of the mount
// in flight or to come (the server has stopped). It returns how many.
func (s *handleSet) releaseLeft() int {
	s.mu.Lock()
	left := make([]leftRelease, 0, len(s.m))
	for h := range s.m {
		left = append(left, h)
	}
	s.mu.Unlock()
	for _, h := range left {
		h.releaseLeft() // takes h out of the set, as the kernel's release would
	}
	return len(left)
}

// inodeState is the open-file table entry of one backing inode: what all
// handles on it share. It exists while the inode has handles open through
// the mount (or while a conversion claims it) and is keyed by the backing
// device and inode number, so hard links and renames share one.
//
// All cryptFile handles do their I/O through one backing descriptor and,
// for an encrypted inode, one crypto.File, under mu: reads shared, writes,
// truncates and (re)binding exclusive (lockChange). So read-modify-write
// cycles on a block never interleave and no update is lost.
type inodeState struct {
	key fileKey

	// Guarded by fileTable.mu.
	refs       int  // handles and temporary users
	converting bool // a conversion claims the inode; opens wait

	mu          sync.RWMutex
	file        *os.File     // shared backing descriptor (nil until a cryptFile needs it)
	fd          int          // file's descriptor number
	writable    bool         // file is open for writing
	cf          *crypto.File // set once the content is known to be encrypted
	cryptRefs   int          // open cryptFile handles
	passthrough int          // open passthroughFile handles
	noted       bool         // a logged-out write was recorded (converter.noteWrite)

	lockers atomic.Int32 // cryptFile handles with a lock descriptor (file_lock.go)

	nextRead atomic.Int64 // where a sequential read would continue (readahead.go)
	raEnd    atomic.Int64 // end of the backing range asked to be read ahead

	pfMu sync.Mutex  // taken under mu (either mode), never the other way
	pf   []*prefetch // pending plaintext prefetches, in order (prefetch.go)
}

// acquire returns the table entry of key with a reference taken,
// creating it if needed. It waits while a conversion claims the inode and
// reports whether it did: the caller's descriptor may then point at the
// inode that the conversion replaced.
func (r *Root) acquire(key fileKey) (st *inodeState, waited bool) {
	t := &r.files
	t.mu.Lock()
	defer t.mu.Unlock()
	for {
		st = t.m[key]
		if st == nil {
			st = &inodeState{key: key, fd: -1}
			t.m[key] = st
			break
		}
		if !st.converting {
			break
		}
		waited = true
		t.cond.Wait()
	}
	st.refs++
	return st, waited
}

// acquireOpened opens a backing descriptor with open and takes a
// reference on its table entry. If a conversion replaced the inode
// between the open and the reference (the open waited for a claim, or a
// conversion committed meanwhile and the descriptor's file has no name
// any more), it opens again, up to three times; retry false (O_TMPFILE)
// never does. On success the caller owns fd and the reference.
func (r *Root) acquireOpened(retry bool, open func() (fd int, created bool, err error)) (st *inodeState, fd int, x unix.Statx_t, created bool, err error) {
	for attempt := 0; ; attempt++ {
		seq := r.files.seq.Load()
		fd, created, err = open()
		if err != nil {
			return nil, -1, x, false, err
		}
		if err = fstatx(fd, &x); err != nil {
			unix.Close(fd)
			return nil, -1, x, false, err
		}
		st, waited := r.acquire(keyOf(&x))
		if retry && attempt < 3 && (waited || r.files.seq.Load() != seq) {
			var now unix.Statx_t
			if waited || fstatx(fd, &now) != nil || now.Nlink == 0 {
				r.release(st)
				unix.Close(fd)
				continue
			}
		}
		return st, fd, x, created, nil
	}
}

// release drops a reference taken by acquire. The last one closes the
// shared descriptor.
func (r *Root) release(st *inodeState) {
	t := &r.files
	t.mu.Lock()
	st.refs--
	last := st.refs == 0
	if last && t.m[st.key] == st {
		delete(t.m, st.key)
	}
	t.mu.Unlock()
	if !last {
		return
	}
	r.lockChange(st)
	if st.file != nil {
		st.file.Close()
		st.file, st.fd, st.writable = nil, -1, false
	}
	st.cf = nil
	r.unlockChange(st)
	// A file waiting for encryption may have been this one.
	r.conv.released()
}

// claim claims inode key for a conversion: it fails (false) while the
// inode has handles or another claim, and while it holds, opens of the
// inode wait in acquire. drop ends it; call it exactly once, before any
// kernel notification about the inode (doc.go).
func (r *Root) claim(key fileKey) (drop func(), ok bool) {
	t := &r.files
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m[key] != nil {
		return nil, false
	}
	c := &inodeState{key: key, fd: -1, converting: true}
	t.m[key] = c
	return func() {
		t.mu.Lock()
		if t.m[key] == c {
			delete(t.m, key)
		}
		t.cond.Broadcast()
		t.mu.Unlock()
	}, true
}

// replaced records that a conversion exchanged an inode for another (see
// fileTable.seq).
func (r *Root) replaced() { r.files.seq.Add(1) }

// rekey moves st to key, the inode that a conversion under its handles
// put in place of st's (convertOpen), replacing the claim on key, and
// wakes the opens that wait for that claim. Caller holds st.mu
// exclusively.
func (t *fileTable) rekey(st *inodeState, key fileKey) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m[st.key] == st {
		delete(t.m, st.key)
	}
	st.key = key
	t.m[key] = st
	t.cond.Broadcast()
}

// lockChange takes st.mu exclusively to change the inode's content, size
// or backing descriptor, and discards its prefetches first (waiting for
// those running). Every such change goes through it, so no prefetch
// outlives a change (prefetch.go). Pair it with unlockChange.
func (r *Root) lockChange(st *inodeState) {
	st.mu.Lock()
	r.dropPrefetch(st)
}

// unlockChange ends what lockChange began.
func (r *Root) unlockChange(st *inodeState) { st.mu.Unlock() }

// attach offers fd, an open descriptor of the inode, as the shared
// backing descriptor, and reports whether st took ownership of it. A
// writable descriptor replaces a read-only one. Caller holds st.mu
// exclusively (lockChange).
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

package fs

import (
	"container/list"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The backing directory (backing.go has the rules every access follows):
// directories of nodes.

// bdir is a directory descriptor borrowed for one request.
type bdir struct {
	fd int
	e  *dirEntry // nil for the root descriptor
	c  *dirCache
}

func (d bdir) release() {
	if d.e != nil {
		d.c.release(d.e)
	}
}

// dirOf returns a descriptor of directory node n's backing directory,
// checked to be n's inode. Release it when done.
func (r *Root) dirOf(n *node) (bdir, error) {
	if n == nil {
		return bdir{}, syscall.ENOENT
	}
	if n.isRoot() {
		return bdir{fd: r.rootFd}, nil
	}
	if e := r.dirs.get(n); e != nil {
		return bdir{fd: e.fd, e: e, c: &r.dirs}, nil
	}
	fd, err := r.beneath(n.rel(), unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return bdir{}, staleErr(err)
	}
	var x unix.Statx_t
	if err := fstatx(fd, &x); err != nil {
		unix.Close(fd)
		return bdir{}, err
	}
	if !r.isNode(n, &x) {
		unix.Close(fd)
		return bdir{}, syscall.ESTALE
	}
	return bdir{fd: fd, e: r.dirs.add(n, fd), c: &r.dirs}, nil
}

// parentOf returns the directory that holds n and n's name in it.
func (r *Root) parentOf(n *node) (bdir, string, error) {
	name, parent := n.Parent()
	if parent == nil {
		return bdir{}, "", syscall.ENOENT
	}
	d, err := r.dirOf(nodeOf(parent))
	return d, name, err
}

// dirCache keeps directory descriptors of nodes, so that a request does
// not look up the node's path again. An entry is checked to be the node's
// inode when it is made, and a descriptor keeps pointing at its directory
// whatever happens to names, so renames through the mount need no
// invalidation. What a descriptor does not follow is its directory being
// moved out of the backing directory by someone with write access to
// both places (not possible through the mount): entries expire after the
// kernel's entry timeout, the time for which the kernel itself keeps
// using the node, so such a directory stays reachable no longer than the
// kernel keeps it. At most maxDirs descriptors are kept.
type dirCache struct {
	ttl time.Duration
	max int

	mu  sync.Mutex
	m   map[*node]*dirEntry
	lru list.List // of *dirEntry, most recently used first
}

type dirEntry struct {
	n    *node
	fd   int
	born time.Time
	refs int           // borrowers, plus one while in the cache; guarded by dirCache.mu
	el   *list.Element // nil once out of the cache
}

// maxDirs bounds the descriptors dirCache keeps open.
const maxDirs = 256

func (c *dirCache) init(ttl time.Duration) {
	c.ttl, c.max = ttl, maxDirs
	c.m = map[*node]*dirEntry{}
}

// get returns n's entry with a reference taken, or nil.
func (c *dirCache) get(n *node) *dirEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.m[n]
	if e == nil {
		return nil
	}
	if time.Since(e.born) >= c.ttl {
		c.removeLocked(e)
		return nil
	}
	c.lru.MoveToFront(e.el)
	e.refs++
	return e
}

// add makes an entry for fd, n's directory, and returns it with a
// reference taken (the descriptor is closed when the last goes).
func (c *dirCache) add(n *node, fd int) *dirEntry {
	e := &dirEntry{n: n, fd: fd, born: time.Now(), refs: 1}
	if c.ttl <= 0 {
		return e
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.m[n]; old != nil {
		c.removeLocked(old)
	}
	e.refs++
	e.el = c.lru.PushFront(e)
	c.m[n] = e
	// Drop the least recently used beyond max, and expired ones from
	// the cold end, so that no descriptor outlives its time for long.
	for b := c.lru.Back(); b != nil; b = c.lru.Back() {
		old := b.Value.(*dirEntry)
		if c.lru.Len() <= c.max && time.Since(old.born) < c.ttl {
			break
		}
		c.removeLocked(old)
	}
	return e
}

func (c *dirCache) release(e *dirEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.unrefLocked(e)
}

func (c *dirCache) unrefLocked(e *dirEntry) {
	if e.refs--; e.refs == 0 {
		unix.Close(e.fd)
	}
}

func (c *dirCache) removeLocked(e *dirEntry) {
	delete(c.m, e.n)
	c.lru.Remove(e.el)
	e.el = nil
	c.unrefLocked(e)
}

// drop forgets n's entry (n was removed, or the kernel forgot it).
func (c *dirCache) drop(n *node) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.m[n]; e != nil {
		c.removeLocked(e)
	}
}

// clear forgets every entry.
func (c *dirCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.m {
		c.removeLocked(e)
	}
}

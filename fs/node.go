package fs

import (
	"sync"
	"sync/atomic"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/crypto"
)

// node is one inode of the mount: a directory, file, symlink or special
// file of the backing tree. Its backing object is found from the go-fuse
// tree on every operation (its parent's directory descriptor and its
// name), and checked to be the inode the node stands for (backing.go).
type node struct {
	gofs.Inode
	root *Root

	mu  sync.Mutex
	cls classCache // guarded by mu

	// servedEpoch is 1 + the Root epoch in which the node was last
	// recorded as having served plaintext (0: never).
	servedEpoch atomic.Uint64
	// warned is set once the node has logged a corruption warning.
	warned atomic.Bool
	// plainWarned is set once the node has logged that it is a protected
	// file with plaintext on disk (convert_open.go).
	plainWarned atomic.Bool
}

func (r *Root) newNode() *node { return &node{root: r} }

func (n *node) isRoot() bool { return n == &n.root.node }

// nodeOf returns our node behind a go-fuse Inode.
func nodeOf(in *gofs.Inode) *node {
	if in == nil {
		return nil
	}
	return asNode(in.Operations())
}

func asNode(e gofs.InodeEmbedder) *node {
	switch o := e.(type) {
	case *node:
		return o
	case *Root:
		return &o.node
	}
	return nil
}

// rel returns the backing path of n relative to the backing root ("." for
// the root), as go-fuse's tree has it: it may lag behind a rename, so it
// is only resolved through dirOf, which checks what it finds. A node that
// is in no directory any more gets a path that does not exist.
func (n *node) rel() string {
	if n.isRoot() {
		return "."
	}
	if p := n.Path(n.root.EmbeddedInode()); p != "" {
		return p
	}
	return "."
}

func (n *node) childRel(name string) string {
	if n.isRoot() {
		return name
	}
	return n.rel() + "/" + name
}

// name returns the base name of n ("" when it is in no directory).
func (n *node) name() string {
	name, _ := n.Parent()
	return name
}

func isReg(x *unix.Statx_t) bool { return uint32(x.Mode)&unix.S_IFMT == unix.S_IFREG }

// needsHeader reports whether x is a file whose header decides its class.
func needsHeader(x *unix.Statx_t) bool { return isReg(x) && x.Size >= crypto.MagicSize }

// probes reports whether attribute lookups read the header of the file
// name (whose state is x) to report its plaintext size. Only protected
// names are probed: reading the first block of every file would make a
// cold "ls -l" read the data of the whole tree. Open always classifies by
// content, and its result is cached, so an encrypted file under another
// name shows its plaintext size once opened (and stays readable either way).
func (r *Root) probes(name string, x *unix.Statx_t) bool {
	return needsHeader(x) && r.encrypts(name)
}

// attrFromStatx fills a from x the way fuse.Attr.FromStat does from a
// Stat_t.
func attrFromStatx(a *fuse.Attr, x *unix.Statx_t) {
	a.Ino = x.Ino
	a.Size = x.Size
	a.Blocks = x.Blocks
	a.Atime = uint64(x.Atime.Sec)
	a.Atimensec = x.Atime.Nsec
	a.Mtime = uint64(x.Mtime.Sec)
	a.Mtimensec = x.Mtime.Nsec
	a.Ctime = uint64(x.Ctime.Sec)
	a.Ctimensec = x.Ctime.Nsec
	a.Mode = uint32(x.Mode)
	a.Nlink = x.Nlink
	a.Uid = x.Uid
	a.Gid = x.Gid
	a.Rdev = uint32(unix.Mkdev(x.Rdev_major, x.Rdev_minor))
	a.Blksize = x.Blksize
}

// stableAttr derives the go-fuse identity of a backing inode: the inode
// number (mixed with the device when it is not the backing root's) and a
// generation from the birth time, so a reused inode number is a new node.
func (r *Root) stableAttr(x *unix.Statx_t) gofs.StableAttr {
	dev := unix.Mkdev(x.Dev_major, x.Dev_minor)
	ino := x.Ino
	if dev != r.rootDev {
		ino ^= dev<<32 | dev>>32
	}
	gen := uint64(1)
	if x.Mask&unix.STATX_BTIME != 0 && (x.Btime.Sec != 0 || x.Btime.Nsec != 0) {
		gen = uint64(x.Btime.Sec)*1e9 + uint64(x.Btime.Nsec)
	}
	return gofs.StableAttr{Mode: uint32(x.Mode) & unix.S_IFMT, Ino: ino, Gen: gen}
}

// fileKey identifies a backing inode in the open-file table.
type fileKey struct{ dev, ino uint64 }

func keyOf(x *unix.Statx_t) fileKey {
	return fileKey{dev: unix.Mkdev(x.Dev_major, x.Dev_minor), ino: x.Ino}
}

// ---- content classification ----

// contentClass says what the content of a regular backing file is.
type contentClass uint8

const (
	classPlain     contentClass = iota
	classEncrypted              // a valid header and a possible size
	classBad                    // the magic, but a bad header or size
)

// statKey is what must stay unchanged for a cached classification to hold.
type statKey struct {
	ino                 uint64
	size                uint64
	btime, mtime, ctime unix.StatxTimestamp
}

func keyOfStat(x *unix.Statx_t) statKey {
	return statKey{ino: x.Ino, size: x.Size, btime: x.Btime, mtime: x.Mtime, ctime: x.Ctime}
}

type classCache struct {
	valid  bool
	key    statKey
	kidGen uint64 // Root.kidGen when classified: a plaintext result may change with it
	class  contentClass
	hdr    crypto.Header
	err    error
}

// classify returns the content class of n, a file described by x. It
// reads the header through fd when fd >= 0, else by path; the result is
// cached until the inode's size, mtime or ctime change.
func (n *node) classify(x *unix.Statx_t, fd int) (contentClass, crypto.Header, error) {
	if !needsHeader(x) {
		return classPlain, crypto.Header{}, nil
	}
	k := keyOfStat(x)
	gen := n.root.kidGen.Load()
	n.mu.Lock()
	if n.cls.valid && n.cls.key == k && (n.cls.class != classPlain || n.cls.kidGen == gen) {
		c := n.cls
		n.mu.Unlock()
		return c.class, c.hdr, c.err
	}
	n.mu.Unlock()

	var hb [crypto.HeaderSize]byte
	n.root.stats.headerReads.Add(1)
	m, err := n.readHeader(hb[:], fd, k)
	if err != nil {
		// Unreadable: it cannot be served either way. Do not cache.
		return classPlain, crypto.Header{}, nil
	}
	class, hdr, cerr := classifyHeader(hb[:m], int64(x.Size), n.root.keyID())
	n.mu.Lock()
	n.cls = classCache{valid: true, key: k, kidGen: gen, class: class, hdr: hdr, err: cerr}
	n.mu.Unlock()
	return class, hdr, cerr
}

// classCached reports whether n has a classification for x's state.
func (n *node) classCached(x *unix.Statx_t) bool {
	k := keyOfStat(x)
	gen := n.root.kidGen.Load()
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cls.valid && n.cls.key == k && (n.cls.class != classPlain || n.cls.kidGen == gen)
}

// classifyAt caches the class of n, a regular file now at name in dir.
func (r *Root) classifyAt(n *node, dir int, name string) {
	var x unix.Statx_t
	fd, err := openRegularAt(dir, name, unix.O_RDONLY|unix.O_NONBLOCK, &x)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	if r.isNode(n, &x) {
		_, _, _ = n.classify(&x, fd) // cached for later lookups; errors show then
	}
}

// invalidateClass drops the cached classification.
func (n *node) invalidateClass() {
	n.mu.Lock()
	n.cls.valid = false
	n.mu.Unlock()
}

// readHeader reads the first bytes of n through fd, or else by path,
// checking that the path still names the file whose state is k.
func (n *node) readHeader(b []byte, fd int, k statKey) (int, error) {
	if fd < 0 {
		var x unix.Statx_t
		var err error
		fd, err = n.root.openNode(n, unix.O_RDONLY|unix.O_NONBLOCK, &x)
		if err != nil {
			return 0, err
		}
		defer unix.Close(fd)
		if keyOfStat(&x) != k {
			return 0, ErrChanged
		}
	}
	if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err == nil && fl&unix.O_NOATIME == 0 {
		// A handle's descriptor that updates atime (a passthrough
		// handle's, after restoreAtime): read through a second one that
		// does not, so that a Getattr never looks like a read. Found by
		// posixtest's FstatDeleted under load.
		if nfd, err := reopenFd(fd, unix.O_RDONLY|unix.O_NONBLOCK); err == nil {
			defer unix.Close(nfd)
			fd = nfd
		}
	}
	return preadFull(fd, b, 0)
}

// preadFull reads up to len(b) bytes at off; a short result means EOF.
func preadFull(fd int, b []byte, off int64) (int, error) {
	done := 0
	for done < len(b) {
		m, err := unix.Pread(fd, b[done:], off+int64(done))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return done, err
		}
		if m == 0 {
			break
		}
		done += m
	}
	return done, nil
}

// classifyHeader classifies content whose first bytes are b and whose
// backing size is size; kid, if known, is the current key's identifier:
// a header that names it behind a damaged magic is an encrypted file's,
// damaged (damagedMagic), not plaintext.
func classifyHeader(b []byte, size int64, kid *crypto.KeyID) (contentClass, crypto.Header, error) {
	if !crypto.HasMagic(b) {
		if kid != nil && damagedMagic(b, *kid) {
			return classBad, crypto.Header{}, errDamagedMagic
		}
		return classPlain, crypto.Header{}, nil
	}
	h, err := crypto.ParseHeader(b)
	if err != nil {
		return classBad, crypto.Header{}, err
	}
	if _, err := h.PlainSize(size); err != nil {
		return classBad, h, err
	}
	return classEncrypted, h, nil
}

// classifyAttr is classify for attribute lookups: without a descriptor it
// reads the header only of files that probes says to.
func (n *node) classifyAttr(x *unix.Statx_t, fd int) (contentClass, crypto.Header) {
	if fd < 0 && !n.classCached(x) && !n.root.encrypts(n.name()) {
		return classPlain, crypto.Header{}
	}
	class, h, _ := n.classify(x, fd)
	return class, h
}

// fillAttr fills a from x, with the plaintext size for an encrypted file.
func (n *node) fillAttr(x *unix.Statx_t, fd int, a *fuse.Attr) {
	attrFromStatx(a, x)
	if !isReg(x) {
		return
	}
	if class, h := n.classifyAttr(x, fd); class == classEncrypted {
		if ps, err := h.PlainSize(int64(x.Size)); err == nil {
			a.Size = uint64(ps)
		}
	}
}

// errnoOf converts an error from a plain system call.
func errnoOf(err error) syscall.Errno {
	return toErrno(err)
}

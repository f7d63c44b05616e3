package fs

import (
	"os"
	"sync"

	"github.com/mountd/mountd/crypto"
	"golang.org/x/sys/unix"
)

// The backing directory (backing.go has the rules every access follows):
// what its filesystem can do, and how encrypted files are written there.

// Filesystem types (statfs f_type) whose syncfs does not make a file's
// data durable on the storage that holds it: FUSE sends no sync to the
// server (except virtiofs, which is not a network filesystem we can tell
// apart; it only costs fsyncs), and the SMB clients have no sync_fs.
const (
	fuseSuperMagic = 0x65735546
	smbSuperMagic  = 0x517b
	cifsMagic      = 0xff534d42
	smb2Magic      = 0xfe534d42
)

// syncfsDurable reports whether syncfs on the filesystem of fd makes its
// written files durable (false when it cannot tell).
func syncfsDurable(fd int) bool {
	var s unix.Statfs_t
	if unix.Fstatfs(fd, &s) != nil {
		return false
	}
	switch uint32(s.Type) {
	case fuseSuperMagic, smbSuperMagic, cifsMagic, smb2Magic:
		return false
	}
	return true
}

// Filesystem types (statfs f_type) whose clients make a file size change
// a round trip to the server that waits for the writes in flight: an
// encrypted file there grows by write, not by ftruncate
// (crypto.File.SetNetworkBacking; docs/FORMAT.md section 2.1).
const (
	nfsSuperMagic  = 0x6969
	cephSuperMagic = 0x00c36400
	v9fsMagic      = 0x01021997
	afsSuperMagic  = 0x5346414f
)

// growModes remembers, per device, how encrypted files on it are
// written (one statfs per device).
type growModes struct {
	force bool // Options.NetworkBacking
	mu    sync.Mutex
	modes map[uint64]writeMode
}

// writeMode is how encrypted files on one filesystem are written.
type writeMode struct {
	byWrite bool // grow by write, not ftruncate (crypto.File.SetNetworkBacking)
	direct  bool // large chunks with O_DIRECT (crypto.File.SetDirectWrites)
}

// writeModeOf is the writeMode for a filesystem of statfs type typ:
// network filesystems grow files by write; FUSE ones (sshfs) also take
// large chunks with O_DIRECT, which there hands the daemon's pages to the
// server process (NFS and SMB would wait for the server on each such write,
// local filesystems want them aligned).
func writeModeOf(typ uint32) writeMode {
	switch typ {
	case fuseSuperMagic:
		return writeMode{byWrite: true, direct: true}
	case nfsSuperMagic, smbSuperMagic, cifsMagic, smb2Magic, cephSuperMagic, v9fsMagic, afsSuperMagic:
		return writeMode{byWrite: true}
	}
	return writeMode{}
}

// openCrypt opens the encrypted file in the backing file f for reading
// and writing through r: crypto.OpenFile, written as its filesystem wants
// (tune). Every crypto.File that the mount writes comes from here or from
// createCrypt.
func (r *Root) openCrypt(f *os.File) (*crypto.File, error) {
	cf, err := crypto.OpenFile(r.kr, f)
	if err == nil {
		r.tune(cf, int(f.Fd()))
	}
	return cf, err
}

// createCrypt is crypto.CreateFile for r, written as the filesystem of f
// wants (tune).
func (r *Root) createCrypt(f *os.File) (*crypto.File, error) {
	cf, err := crypto.CreateFile(r.kr, f)
	if err == nil {
		r.tune(cf, int(f.Fd()))
	}
	return cf, err
}

// tune sets how cf, an encrypted file open on fd, is written: as its
// filesystem wants (writeModeOf), or grown by write wherever it is with
// Options.NetworkBacking (never with O_DIRECT, which a local filesystem
// would refuse for unaligned writes).
func (r *Root) tune(cf *crypto.File, fd int) {
	if r.grow.force {
		cf.SetNetworkBacking(true)
		return
	}
	// The device of an open file is the kernel's to tell: no round trip
	// to a network filesystem's server (AT_STATX_DONT_SYNC).
	var st unix.Statx_t
	if unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_STATX_DONT_SYNC, 0, &st) != nil {
		return
	}
	dev := unix.Mkdev(st.Dev_major, st.Dev_minor)
	g := &r.grow
	g.mu.Lock()
	defer g.mu.Unlock()
	m, ok := g.modes[dev]
	if !ok {
		var s unix.Statfs_t
		if unix.Fstatfs(fd, &s) != nil {
			return
		}
		m = writeModeOf(uint32(s.Type))
		if g.modes == nil {
			g.modes = map[uint64]writeMode{}
		}
		g.modes[dev] = m
	}
	cf.SetNetworkBacking(m.byWrite)
	cf.SetDirectWrites(m.direct)
}

package fs

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/crypto"
	"github.com/mountd/mountd/logkey"
)

// DefaultProtect is the protect pattern used when Options.Protect is nil.
var DefaultProtect = []string{"*.bin"}

// reservedDir is the directory at the backing root that the mount hides:
// it holds the verifier.
const reservedDir = crypto.VerifierDir

// tempPrefix starts the names of the temporary files encryptInPlace
// writes beside the file it converts.
const tempPrefix = ".mountd-tmp-"

// Log field keys.
const (
	fieldOp    = "op"
	fieldIno   = "ino"
	fieldBlock = "block"
	fieldOff   = "offset" // int64: a plaintext offset
	fieldLen   = "length" // int: a number of bytes
)

// Options configure a Root.
type Options struct {
	// Backing is the directory the filesystem serves. Required.
	Backing string

	// Protect lists filepath.Match globs matched against a file's base
	// name. New content of a matching file is encrypted while a key is
	// set. Nil means DefaultProtect; "*" protects every regular file.
	Protect []string

	// Keyring holds the master key. Required.
	Keyring *crypto.Keyring

	// Log receives the filesystem's log lines. Nil discards them.
	Log *logrus.Entry

	// AttrTimeout and EntryTimeout are the kernel's attribute and
	// directory-entry cache timeouts. Zero means one second; a negative
	// value disables the cache.
	AttrTimeout  time.Duration
	EntryTimeout time.Duration

	// ConvertRetry is how often the background encryption of atomic saves
	// retries a file that is still open (default 500ms); ConvertMaxAge is
	// how long it keeps trying (default 10 minutes).
	ConvertRetry  time.Duration
	ConvertMaxAge time.Duration

	// AllowOther lets users other than the daemon's use the mount
	// (FUSE allow_other); the kernel still checks permissions.
	AllowOther bool

	// FsName is the mount's source in /proc/self/mountinfo; empty means
	// "mountd".
	FsName string

	// Activity, if set, is called on every read and write of encrypted
	// content through the mount (the idle lock's notion of use). It must
	// be cheap and must not block.
	Activity func()
}

// Root is the filesystem: the root directory node of the go-fuse tree plus
// the state shared by all nodes. Create it with NewRoot and mount it with
// Mount (or go-fuse's fs.Mount); call Close when the mount is gone.
type Root struct {
	node

	backing string // absolute path of the backing directory
	rootFd  int    // O_PATH|O_DIRECTORY descriptor of backing
	rootDev uint64
	dirs    dirCache // directory descriptors of nodes (backing.go)
	own     owners   // making objects for other users (backing.go)
	protect []string
	kr      *crypto.Keyring
	log     *logrus.Entry

	activity func() // Options.Activity, or a no-op

	attrTimeout  time.Duration
	entryTimeout time.Duration

	removeOnClear  func()
	removeOnBefore func()

	// files is the open-file table and the conversions' claims
	// (openfile.go).
	files fileTable

	// gate orders plaintext-serving operations against logout: they
	// record their node in served while holding gate for reading, and the
	// OnClear listener swaps served out under gate for writing.
	gate     sync.RWMutex
	pf       prefetchPool // buffers of the plaintext prefetch (prefetch.go)
	epoch    uint64       // guarded by gate; bumped by every logout
	servedMu sync.Mutex
	served   map[*node]struct{}

	conv *converter

	stats stats

	closeOnce sync.Once
}

// NewRoot validates opts and returns the filesystem root. It opens the
// backing directory and registers the logout listener on the Keyring.
func NewRoot(opts Options) (*Root, error) {
	if opts.Backing == "" {
		return nil, errors.New("fs: no backing directory")
	}
	if opts.Keyring == nil {
		return nil, errors.New("fs: no keyring")
	}
	protect := opts.Protect
	if protect == nil {
		protect = DefaultProtect
	}
	for _, g := range protect {
		if _, err := filepath.Match(g, ""); err != nil {
			return nil, fmt.Errorf("fs: protect pattern %q: %w", g, err)
		}
	}
	backing, err := filepath.Abs(opts.Backing)
	if err != nil {
		return nil, fmt.Errorf("fs: backing directory: %w", err)
	}
	fd, dev, err := openBacking(backing)
	if err != nil {
		return nil, fmt.Errorf("fs: open backing directory %s: %w", backing, err)
	}
	log := opts.Log
	if log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		log = logrus.NewEntry(l)
	}
	r := &Root{
		backing:      backing,
		rootFd:       fd,
		rootDev:      dev,
		protect:      append([]string(nil), protect...),
		kr:           opts.Keyring,
		log:          log.WithField(logkey.Component, "fs"),
		attrTimeout:  timeoutOrDefault(opts.AttrTimeout),
		entryTimeout: timeoutOrDefault(opts.EntryTimeout),
		served:       map[*node]struct{}{},
		activity:     opts.Activity,
	}
	if r.activity == nil {
		r.activity = func() {}
	}
	r.node.root = r
	r.dirs.init(r.entryTimeout)
	r.own.init()
	r.files.init()
	r.conv = newConverter(r, opts.ConvertRetry, opts.ConvertMaxAge)
	r.removeOnClear = r.kr.OnClear(r.onClear)
	r.removeOnBefore = r.kr.OnBeforeClear(r.beforeClear)
	return r, nil
}

func timeoutOrDefault(d time.Duration) time.Duration {
	switch {
	case d == 0:
		return time.Second
	case d < 0:
		return 0
	}
	return d
}

// Close unregisters the logout listener, stops background conversion and
// closes the backing directory. Call it after the filesystem is unmounted.
func (r *Root) Close() {
	r.closeOnce.Do(func() {
		r.removeOnClear()
		r.removeOnBefore()
		r.conv.close()
		r.dirs.clear()
		unix.Close(r.rootFd)
	})
}

// Backing returns the absolute path of the backing directory.
func (r *Root) Backing() string { return r.backing }

// protected reports whether name (a base name) matches a protect glob.
func (r *Root) protected(name string) bool {
	for _, g := range r.protect {
		if ok, _ := filepath.Match(g, name); ok {
			return true
		}
	}
	return false
}

// hidden reports whether name in directory n is the reserved auth/
// directory, which the mount neither shows nor lets anyone create.
func (n *node) hidden(name string) bool {
	return name == reservedDir && n.isRoot()
}

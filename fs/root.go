package fs

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sync"
	"sync/atomic"
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

	// TempPatterns are the temporaries of protected names (protect.go),
	// each PREFIX{}SUFFIX: new files under such names are encrypted
	// like protected ones. Nil means DefaultTempPatterns; an empty slice
	// none (and then O_TMPFILE files are encrypted only if Protect
	// matches every name).
	TempPatterns []string

	// NoEncryptAfterLogin turns off the encryption, after the next
	// login, of protected files written through the mount while logged
	// out, and the durable record of files waiting for encryption
	// (auth/pending-encryption). Atomic saves are still encrypted in the
	// background while the key is set.
	NoEncryptAfterLogin bool

	// RequireEncryption makes a plaintext file under a protected name an
	// error (EIO, logged once with its path) while a key is set: it is
	// never served or written as plaintext. Files this run saw written
	// through the mount while logged out are the exception until they
	// are encrypted; entries of the record from an earlier run are not
	// encrypted automatically (converter.load).
	RequireEncryption bool

	// ConvertRetry is the first delay before the background encryption
	// tries again a file that is still open (default 500ms; it doubles
	// up to 30s); ConvertMaxAge is how long it keeps trying with
	// NoEncryptAfterLogin (default 10 minutes; otherwise it keeps trying).
	ConvertRetry  time.Duration
	ConvertMaxAge time.Duration

	// AllowOther lets users other than the daemon's use the mount
	// (FUSE allow_other); the kernel still checks permissions.
	AllowOther bool

	// FsName is the mount's source in /proc/self/mountinfo; empty means
	// "mountd".
	FsName string

	// NetworkBacking writes encrypted files as on a network filesystem
	// (crypto.File.SetNetworkBacking) whatever statfs says of the
	// backing filesystem: for one that mountd does not recognise.
	NetworkBacking bool

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
	dirs    dirCache  // directory descriptors of nodes (backing_dirs.go)
	grow    growModes // how encrypted files grow, per filesystem (backing_fscaps.go)
	own     owners    // making objects for other users (backing_owners.go)
	protect []string
	temps   []tempPattern // temporaries of protected names (protect.go)
	require bool          // Options.RequireEncryption
	kr      *crypto.Keyring
	log     *logrus.Entry

	activity func() // Options.Activity, or a no-op

	attrTimeout  time.Duration
	entryTimeout time.Duration

	removeOnClear  func()
	removeOnBefore func()

	// files is the open-file table and the conversions' claims
	// (openfile.go).
	files   fileTable
	handles handleSet // handles not yet released (Server.Unmount releases what is left)

	// gate orders plaintext-serving operations against logout: they
	// record their node in served while holding gate for reading, and the
	// OnClear listener swaps served out under gate for writing.
	gate     sync.RWMutex
	pf       prefetchPool // buffers of the plaintext prefetch (prefetch.go)
	epoch    uint64       // guarded by gate; bumped by every logout
	servedMu sync.Mutex
	served   map[*node]struct{}

	conv *converter

	// kid is the identifier of the last key seen set (noteKeyID), and
	// kidGen counts its changes (cached classes depend on it).
	kid    atomic.Pointer[crypto.KeyID]
	kidGen atomic.Uint64

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
	tempSpecs := opts.TempPatterns
	if tempSpecs == nil {
		tempSpecs = DefaultTempPatterns
	}
	var temps []tempPattern
	for _, p := range tempSpecs {
		tp, err := parseTempPattern(p)
		if err != nil {
			return nil, fmt.Errorf("fs: %w", err)
		}
		temps = append(temps, tp)
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
		temps:        temps,
		require:      opts.RequireEncryption,
		kr:           opts.Keyring,
		log:          log.WithField(logkey.Component, "fs"),
		attrTimeout:  timeoutOrDefault(opts.AttrTimeout),
		entryTimeout: timeoutOrDefault(opts.EntryTimeout),
		served:       map[*node]struct{}{},
		activity:     opts.Activity,
	}
	r.grow.force = opts.NetworkBacking
	if r.activity == nil {
		r.activity = func() {}
	}
	r.node.root = r
	r.dirs.init(r.entryTimeout)
	r.own.init()
	r.files.init()
	co := convOptions{retry: opts.ConvertRetry, maxAge: opts.ConvertMaxAge, afterLogin: !opts.NoEncryptAfterLogin, require: opts.RequireEncryption}
	var live []string
	if co.afterLogin {
		// The record of what waits for encryption: without it, a
		// restart would forget what this run could not encrypt.
		if co.log, live, err = openPendingLog(fd); err != nil {
			r.log.WithError(err).Warn("cannot open the record of files waiting for encryption (auth/" + pendingLogName +
				"); files written while logged out are encrypted after a login of this run only")
			co.log = nil
		}
	}
	r.conv = newConverter(r, co)
	if len(live) > 0 {
		r.conv.load(live)
		if !r.require {
			r.log.WithField(logkey.Files, logkey.Count(len(live))).Info("files wait for encryption since before the last stop; they are encrypted after the next login")
		}
	}
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

// LoggedIn tells the filesystem that a key was set (call it after every
// login): the files that wait for encryption are encrypted now.
func (r *Root) LoggedIn() {
	r.noteKeyID()
	r.conv.loggedIn()
}

// PendingEncryption returns how many protected files wait for
// encryption: written while logged out, or moved onto a protected name
// and not yet encrypted (busy, or waiting for a login).
func (r *Root) PendingEncryption() int { return r.conv.count() }

// Backing returns the absolute path of the backing directory.
func (r *Root) Backing() string { return r.backing }

// hidden reports whether name in directory n is the reserved auth/
// directory, which the mount neither shows nor lets anyone create.
func (n *node) hidden(name string) bool {
	return name == reservedDir && n.isRoot()
}

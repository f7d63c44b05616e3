package main

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"path"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode"

	"github.com/mountd/mountd/crypto"
)

// The scan behind info and fsck: a walk of the data directory that
// classifies every regular file by its content (the header decides, as in
// the daemon) and, for fsck, authenticates every block of every encrypted
// file. It reads, and never writes.

// Kinds of finding, with the exit code each one leads to (see exitFor).
const (
	findCorrupt         = "corrupt"          // a block failed authentication, or the file is cut mid-block
	findForeignKey      = "foreign_key"      // encrypted under another master key
	findBadHeader       = "bad_header"       // the magic, but an unsupported version or a malformed header
	findUnreadable      = "unreadable"       // an I/O error reading a file or listing a directory
	findNoVerifier      = "verifier_missing" // encrypted files but no verifier: nothing can decrypt them
	findBadVerifier     = "verifier_corrupt" // the verifier does not parse
	findPlainProtected  = "plaintext"        // plaintext content under a protected name
	findStrayTemp       = "stray_temp"       // a temp file of an interrupted encryption
	findStrayVerifierTm = "stray_verifier_temp"
)

// finding is one problem, by path (relative to the data directory).
type finding struct {
	Path   string `json:"path"`
	Kind   string `json:"kind"`
	Detail string `json:"detail"`
	// Block is the first damaged block (corrupt files), Offset its
	// plaintext offset.
	Block  *int64 `json:"block,omitempty"`
	Offset *int64 `json:"offset,omitempty"`
}

// damaging reports whether a finding means data cannot be read back.
func (f *finding) damaging() bool {
	switch f.Kind {
	case findPlainProtected, findStrayTemp, findStrayVerifierTm:
		return false
	}
	return true
}

// scanCounts are what a scan counted.
type scanCounts struct {
	Files          int64         `json:"files"`           // regular files (temps included)
	Encrypted      int64         `json:"encrypted"`       // files with the encryption magic
	Authenticated  int64         `json:"authenticated"`   // encrypted files whose every block was checked and is intact (fsck)
	PlainBytes     int64         `json:"plaintext_bytes"` // plaintext bytes of the encrypted files checked (fsck)
	ForeignKey     int64         `json:"foreign_key"`     // encrypted under another master key
	PlainProtected int64         `json:"plaintext_protected"`
	PlainOther     int64         `json:"plaintext_other"`
	Directories    int64         `json:"directories"`
	Symlinks       int64         `json:"symlinks"`
	Other          int64         `json:"other"` // fifos, sockets, devices
	StrayTemps     int64         `json:"stray_temps"`
	Versions       map[int]int64 `json:"content_versions"` // encrypted files by content format version
}

// scanOpts configure a scan.
type scanOpts struct {
	protect protectMatcher
	// kr, when set, authenticates every block of every encrypted file.
	kr *crypto.Keyring
	// keyID is the verifier's key-id; a header with another is
	// foreign. Zero (hasKeyID false): no verifier to compare with.
	keyID    crypto.KeyID
	hasKeyID bool
	progress *progress
}

type scanResult struct {
	counts   scanCounts
	findings []finding
}

func (r *scanResult) add(f finding) { r.findings = append(r.findings, f) }

// scanJob is one regular file for a worker.
type scanJob struct {
	rel  string
	size int64
	ent  entry
}

// scanBuf is the size of each read of an encrypted file (crypto decrypts
// its blocks on every core); readDepth of them are in flight per worker.
// Small enough that what a read copies in, decrypts and hands on stays in
// the CPU caches: with 2-4 MiB reads, export copied out of the page cache
// and into it at a fraction of the speed (bench/README.md).
const scanBuf = 256 << 10

func scanWorkers() int { return min(max(runtime.GOMAXPROCS(0), 1), 8) }

// scan walks d and returns what it found, findings sorted by path.
func scan(d *dataDir, o scanOpts) (*scanResult, error) {
	res := &scanResult{counts: scanCounts{Versions: map[int]int64{}}}
	var mu sync.Mutex // guards res from the workers
	jobs := make(chan scanJob, 64)
	var wg sync.WaitGroup
	for range scanWorkers() {
		wg.Go(func() {
			bufs := newBufRing(readDepth, scanBuf)
			for j := range jobs {
				checkFile(d, &o, j, bufs, res, &mu)
			}
		})
	}
	// Hard links are checked once; their other names share the findings.
	type devIno struct{ dev, ino uint64 }
	links := map[devIno][]string{}
	// visit counts what needs no reading and says whether the entry is a
	// job for the workers.
	visit := func(rel string, e *entry) bool {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case e.isDir():
			res.counts.Directories++
			return false
		case e.isSymlink():
			res.counts.Symlinks++
			return false
		case !e.isRegular():
			res.counts.Other++
			return false
		}
		res.counts.Files++
		if isMountdTemp(e.name) {
			res.counts.StrayTemps++
			res.add(finding{Path: rel, Kind: findStrayTemp, Detail: "temp file of an interrupted encryption; the original is whole (the daemon removes it at start)"})
			o.progress.add(1, e.st.Size)
			return false
		}
		if e.st.Nlink > 1 {
			k := devIno{e.st.Dev, e.st.Ino}
			names, seen := links[k]
			links[k] = append(names, rel)
			if seen {
				o.progress.add(1, e.st.Size)
				return false
			}
		}
		return true
	}
	err := walkTree(d.fd, func(rel string, e *entry) error {
		if visit(rel, e) {
			jobs <- scanJob{rel: rel, size: e.st.Size, ent: *e}
		}
		return nil
	}, func(rel string, err error) {
		mu.Lock()
		res.add(finding{Path: displayDir(rel), Kind: findUnreadable, Detail: "cannot list the directory: " + errText(err)})
		mu.Unlock()
	})
	close(jobs)
	wg.Wait()
	if err != nil {
		return nil, err
	}
	// Give every name of a hard-linked file its findings.
	byPath := map[string][]finding{}
	for _, f := range res.findings {
		byPath[f.Path] = append(byPath[f.Path], f)
	}
	for _, names := range links {
		for _, f := range byPath[names[0]] {
			for _, other := range names[1:] {
				g := f
				g.Path = other
				g.Detail += " (a hard link of " + names[0] + ")"
				res.add(g)
			}
		}
	}
	if err := checkAuthDir(d, res); err != nil {
		return nil, err
	}
	slices.SortStableFunc(res.findings, func(a, b finding) int { return strings.Compare(a.Path, b.Path) })
	return res, nil
}

// checkAuthDir reports the temp files a crash left beside the verifier.
func checkAuthDir(d *dataDir, res *scanResult) error {
	entries, err := listDir(d.fd, crypto.VerifierDir)
	if err != nil {
		if errors.Is(err, iofs.ErrNotExist) {
			return nil
		}
		res.add(finding{Path: crypto.VerifierDir + "/", Kind: findUnreadable, Detail: errText(err)})
		return nil
	}
	for _, e := range entries {
		if strings.HasPrefix(e.name, crypto.VerifierTempPrefix) {
			res.counts.StrayTemps++
			res.add(finding{Path: path.Join(crypto.VerifierDir, e.name), Kind: findStrayVerifierTm,
				Detail: "temp file of an interrupted password change; the verifier is whole (the daemon removes it at start)"})
		}
	}
	return nil
}

// checkFile classifies one regular file and, with a key, authenticates it.
func checkFile(d *dataDir, o *scanOpts, j scanJob, bufs *bufRing, res *scanResult, mu *sync.Mutex) {
	var done int64 // bytes reported to the progress bar
	defer func() { o.progress.add(1, j.size-done) }()
	var fnd []finding
	var c scanCounts
	defer func() {
		mu.Lock()
		res.findings = append(res.findings, fnd...)
		r := &res.counts
		r.Encrypted += c.Encrypted
		r.Authenticated += c.Authenticated
		r.PlainBytes += c.PlainBytes
		r.ForeignKey += c.ForeignKey
		r.PlainProtected += c.PlainProtected
		r.PlainOther += c.PlainOther
		for v, n := range c.Versions {
			r.Versions[v] += n
		}
		mu.Unlock()
	}()
	bad := func(kind, detail string) { fnd = append(fnd, finding{Path: j.rel, Kind: kind, Detail: detail}) }

	f, err := openRead(d.fd, j.rel, &j.ent.st)
	if err != nil {
		bad(findUnreadable, errText(err))
		return
	}
	defer f.Close()
	var hb [crypto.HeaderSize]byte
	n, err := io.ReadFull(f, hb[:])
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		bad(findUnreadable, errText(err))
		return
	}
	if !crypto.HasMagic(hb[:n]) {
		if o.protect.match(path.Base(j.rel)) {
			c.PlainProtected++
			bad(findPlainProtected, fmt.Sprintf("plaintext under a protected name (%s); mountd encrypt-existing encrypts it", strings.Join(o.protect, " ")))
		} else {
			c.PlainOther++
		}
		return
	}
	c.Encrypted++
	h, err := crypto.ParseHeader(hb[:n])
	if err != nil {
		bad(findBadHeader, "encrypted, but "+errText(err))
		return
	}
	c.Versions = map[int]int64{int(h.Version): 1}
	if o.hasKeyID && h.KeyID != o.keyID {
		c.ForeignKey++
		bad(findForeignKey, "encrypted under another master key (key-id "+hex.EncodeToString(h.KeyID[:])+"); this data directory's key cannot decrypt it")
		return
	}
	if o.kr == nil {
		if h.SizeDamaged(j.size) {
			bad(findCorrupt, "truncated: its size is one no writer makes (its end was cut)")
		}
		return
	}
	cf, err := openCrypt(o.kr, f, j.size)
	switch {
	case errors.Is(err, crypto.ErrWrongKey):
		c.ForeignKey++
		bad(findForeignKey, "encrypted under another master key (key-id "+hex.EncodeToString(h.KeyID[:])+")")
		return
	case errors.Is(err, crypto.ErrBadHeader), errors.Is(err, crypto.ErrBadSize):
		bad(findBadHeader, errText(err))
		return
	case err != nil:
		bad(findUnreadable, errText(err))
		return
	}
	var first *badBlock
	emit := func(p []byte) error {
		n := min(int64(len(p)), j.size-done)
		done += n
		o.progress.add(0, n)
		bufs.put(p)
		return nil
	}
	err = cf.stream(readDepth, bufs.get, emit, func(b badBlock) bool { first = &b; return false })
	if err != nil {
		bad(findUnreadable, errText(err))
		return
	}
	if first != nil {
		blk, off := first.Block, first.Off
		detail := fmt.Sprintf("block %d (plaintext bytes %d..%d) failed authentication", blk, off, off+first.Len-1)
		switch first.Why {
		case "truncated":
			detail = fmt.Sprintf("truncated in the middle of block %d (plaintext offset %d): the file ends in a fragment that holds no data", blk, off)
		case "incomplete":
			detail = fmt.Sprintf("block %d (plaintext bytes %d..%d) holds less than the file size says: its end was cut", blk, off, off+first.Len-1)
		}
		fnd = append(fnd, finding{Path: j.rel, Kind: findCorrupt, Detail: detail, Block: &blk, Offset: &off})
		return
	}
	c.Authenticated++
	c.PlainBytes += cf.size
}

// errText is an error's text without the package prefixes meant for
// logs.
func errText(err error) string {
	s := err.Error()
	for _, p := range []string{"crypto: ", "datadir: "} {
		s = strings.ReplaceAll(s, p, "")
	}
	return s
}

func displayDir(rel string) string {
	if rel == "" {
		return "."
	}
	return rel + "/"
}

// quotePath shows a path as is, or quoted when it holds spaces at its
// ends or characters a terminal would not show as themselves.
func quotePath(p string) string {
	if p == "" || strings.TrimSpace(p) != p || strings.IndexFunc(p, func(r rune) bool {
		return !unicode.IsPrint(r) || r == unicode.ReplacementChar
	}) >= 0 {
		return strconv.Quote(p)
	}
	return p
}

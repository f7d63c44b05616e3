package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/crypto"
)

var exportCmd = &command{
	name:    "export",
	summary: "write the decrypted tree of a data directory into an empty directory (no daemon)",
	help: `Writes what the mount would show into --out: encrypted files decrypted, other
files copied, symbolic links as links, fifos and (as root) devices, directories;
with their modes, access and modification times (directories' after their
content), extended attributes and, as root, their owners; hard links stay hard
links. auth/ (the verifier and the lock) and temp files a crash left behind are
not exported. It reads through a fixed buffer per worker, so memory does not
grow with file sizes, and shows a progress bar on a terminal.

--out must not exist or be an empty directory, and must not be inside the data
directory. Files are created 0600 and directories 0700 and get their own modes
only when complete, so no plaintext is readable by others meanwhile; still, the
export is plaintext: put it somewhere only you can read.

A block that fails authentication does not stop the export: its bytes are
written as zeros, everything else of the file is exported, and a note NAME.CORRUPT
beside it lists the zero-filled ranges. Files that cannot be decrypted at all
(another master key, an unreadable header) are not written. Both are listed at
the end, and the exit status is then 7. Asks for the password (or, with
--recovery, the recovery key). Refuses to run while a daemon serves the directory.`,
	group: groupOffline,
	setup: func(f *flag.FlagSet) runFunc {
		o := offlineFlags(f)
		out := f.String("out", "", "the `directory` to write the decrypted tree into: missing or empty")
		ko := keyFlags(f)
		asJSON := f.Bool("json", false, "print the report as JSON")
		return func(s stdio, _ []string) error {
			if *out == "" {
				return usageError{errors.New("--out is required")}
			}
			return export(s, o, *out, ko, *asJSON)
		}
	},
}

// exportBuf is each worker's memory for an encrypted file: readDepth+1
// buffers, readDepth of them read and decrypted into while the last one is
// written. It bounds the memory used per worker.
const exportBuf = (readDepth + 1) * scanBuf

// exportReport is export's result; --json prints it.
type exportReport struct {
	DataDir     string    `json:"data_dir"`
	Out         string    `json:"out"`
	Files       int64     `json:"files"`
	Decrypted   int64     `json:"decrypted"`
	Bytes       int64     `json:"bytes"`
	Directories int64     `json:"directories"`
	Symlinks    int64     `json:"symlinks"`
	HardLinks   int64     `json:"hard_links"`
	Other       int64     `json:"other"`
	Skipped     []string  `json:"skipped_temps"`
	Problems    []finding `json:"problems"`
	Warnings    []string  `json:"warnings"`
	Seconds     float64   `json:"seconds"`
	Complete    bool      `json:"complete"`
	Exit        int       `json:"exit_code"`
}

type exporter struct {
	src, dst int // data directory and output directory descriptors
	kr       *crypto.Keyring
	root     bool // running as root: owners are kept
	progress *progress

	mu      sync.Mutex // guards rep
	rep     *exportReport
	warnSet map[string]bool
}

func (x *exporter) problem(f finding) {
	x.mu.Lock()
	x.rep.Problems = append(x.rep.Problems, f)
	x.mu.Unlock()
}

// warn records a problem that loses no data (an attribute that could not
// be set); each distinct message once.
func (x *exporter) warn(rel string, err error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	msg := errText(err)
	if !x.warnSet[msg] {
		x.warnSet[msg] = true
		x.rep.Warnings = append(x.rep.Warnings, quotePath(rel)+": "+msg)
	}
}

func (x *exporter) count(fn func(r *exportReport)) {
	x.mu.Lock()
	fn(x.rep)
	x.mu.Unlock()
}

func export(s stdio, o *offlineOpts, out string, ko *keyOpts, asJSON bool) error {
	d, err := openDataDir(o.data, "export", readOnly, s.err)
	if err != nil {
		return err
	}
	defer d.close()
	outFd, outAbs, err := prepareOut(d.path, out)
	if err != nil {
		return err
	}
	defer unix.Close(outFd)
	x := &exporter{src: d.fd, dst: outFd, root: os.Geteuid() == 0, warnSet: map[string]bool{},
		rep: &exportReport{DataDir: d.path, Out: outAbs}}
	switch _, verr := d.readVerifier(); {
	case verr == nil:
		kr, _, err := d.unlock(s, ko)
		if err != nil {
			return err
		}
		defer kr.Clear()
		x.kr = kr
	case errors.Is(verr, crypto.ErrNoVerifier), errors.Is(verr, crypto.ErrBadVerifier):
		// Plaintext files can still be exported; encrypted ones are
		// reported one by one.
		fmt.Fprintf(s.err, "mountd export: %v; encrypted files will not be exported\n", verifierError(d, verr))
	default:
		return verifierError(d, verr)
	}
	start := time.Now()
	x.progress = newProgress(s.err, "export")
	if x.progress != nil {
		x.progress.setTotal(countTree(d.fd))
	}
	err = x.run()
	x.progress.done()
	if err != nil {
		return err
	}
	rep := x.rep
	rep.Seconds = time.Since(start).Seconds()
	slices.SortFunc(rep.Problems, func(a, b finding) int { return strings.Compare(a.Path, b.Path) })
	rep.Complete = len(rep.Problems) == 0
	var exitErr error
	if !rep.Complete {
		exitErr = errDamaged
	}
	rep.Exit = exitCode(exitErr)
	for _, p := range []*[]string{&rep.Skipped, &rep.Warnings} {
		if *p == nil {
			*p = []string{}
		}
	}
	if rep.Problems == nil {
		rep.Problems = []finding{}
	}
	if asJSON {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		fmt.Fprintf(s.out, "%s\n", b)
	} else {
		printExport(s.out, rep)
	}
	if exitErr != nil {
		return reported{exitErr}
	}
	return nil
}

// prepareOut makes sure out is a new or empty directory outside the data
// directory, creating it (0700), and opens it.
func prepareOut(data, out string) (int, string, error) {
	abs, err := filepath.Abs(out)
	if err != nil {
		return -1, "", err
	}
	// Where it is (or would be), symlinks resolved, before anything is
	// created.
	real, err := filepath.EvalSymlinks(abs)
	create := errors.Is(err, os.ErrNotExist)
	if create {
		var parent string
		if parent, err = filepath.EvalSymlinks(filepath.Dir(abs)); err == nil {
			real = filepath.Join(parent, filepath.Base(abs))
		}
	}
	if err != nil {
		return -1, "", fmt.Errorf("--out: %w", err)
	}
	realData, err := filepath.EvalSymlinks(data)
	if err != nil {
		return -1, "", err
	}
	if real == realData || strings.HasPrefix(real+"/", realData+"/") {
		return -1, "", usageError{fmt.Errorf("--out %s is inside the data directory %s", abs, data)}
	}
	if create {
		if err := os.Mkdir(real, 0o700); err != nil {
			return -1, "", fmt.Errorf("--out: %w", err)
		}
	}
	f, err := os.Open(real)
	if err != nil {
		return -1, "", fmt.Errorf("--out: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.IsDir() {
		return -1, "", fmt.Errorf("--out %s is not a directory", abs)
	}
	names, err := f.Readdirnames(1)
	if err != nil && !errors.Is(err, io.EOF) {
		return -1, "", fmt.Errorf("--out: %w", err)
	}
	if len(names) > 0 {
		return -1, "", usageError{fmt.Errorf("--out %s is not empty; export writes only into a new or empty directory", abs)}
	}
	// A descriptor of our own: f closes its own.
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, "", err
	}
	return fd, abs, nil
}

// exportJob is a regular file for a worker.
type exportJob struct {
	rel string
	ent entry
}

// dirAttrs are a directory's attributes, set once its content is written.
type dirAttrs struct {
	rel string
	st  unix.Stat_t
}

// run walks the data directory: directories, symlinks and special files
// in the walk, regular files in workers; then hard links, then the
// directories' attributes, deepest first, then the root's.
func (x *exporter) run() error {
	jobs := make(chan exportJob, 64)
	var wg sync.WaitGroup
	for range scanWorkers() {
		wg.Go(func() {
			buf := make([]byte, exportBuf)
			for j := range jobs {
				x.file(j, buf)
			}
		})
	}
	type devIno struct{ dev, ino uint64 }
	firstName := map[devIno]string{}
	type link struct{ from, to string }
	var links []link
	var dirs []dirAttrs
	err := walkTree(x.src, func(rel string, e *entry) error {
		switch {
		case e.isDir():
			if err := x.mkdir(rel); err != nil {
				x.problem(finding{Path: rel + "/", Kind: findUnreadable, Detail: "cannot create it: " + errText(err)})
				return errSkip
			}
			dirs = append(dirs, dirAttrs{rel, e.st})
			x.count(func(r *exportReport) { r.Directories++ })
		case e.isRegular() && isMountdTemp(e.name):
			x.count(func(r *exportReport) { r.Skipped = append(r.Skipped, rel) })
			x.progress.add(1, e.st.Size)
		case e.isRegular():
			if e.st.Nlink > 1 {
				k := devIno{e.st.Dev, e.st.Ino}
				if first, ok := firstName[k]; ok {
					links = append(links, link{first, rel})
					x.progress.add(1, e.st.Size)
					return nil
				}
				firstName[k] = rel
			}
			jobs <- exportJob{rel, *e}
		default:
			x.special(rel, e)
		}
		return nil
	}, func(rel string, err error) {
		x.problem(finding{Path: displayDir(rel), Kind: findUnreadable, Detail: "cannot list the directory: " + errText(err)})
	})
	close(jobs)
	wg.Wait()
	if err != nil {
		return err
	}
	for _, l := range links {
		if err := x.link(l.from, l.to); err != nil {
			x.problem(finding{Path: l.to, Kind: findUnreadable, Detail: "hard link to " + l.from + " not made: " + errText(err)})
			continue
		}
		x.count(func(r *exportReport) { r.HardLinks++ })
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		x.dirAttrs(dirs[i].rel, &dirs[i].st)
	}
	var st unix.Stat_t
	if err := unix.Fstat(x.src, &st); err == nil {
		x.dirAttrs("", &st)
	}
	return nil
}

// parentFd opens the directory holding rel in the output, and returns it
// with rel's base name.
func parentFd(dir int, rel string) (int, string, error) {
	fd, err := openBeneath(dir, path.Dir(rel), unix.O_PATH|unix.O_DIRECTORY, 0)
	return fd, path.Base(rel), err
}

func (x *exporter) mkdir(rel string) error {
	pfd, name, err := parentFd(x.dst, rel)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	return unix.Mkdirat(pfd, name, 0o700)
}

func (x *exporter) link(from, to string) error {
	fpfd, fname, err := parentFd(x.dst, from)
	if err != nil {
		return err
	}
	defer unix.Close(fpfd)
	tpfd, tname, err := parentFd(x.dst, to)
	if err != nil {
		return err
	}
	defer unix.Close(tpfd)
	return unix.Linkat(fpfd, fname, tpfd, tname, 0)
}

// special exports a symlink, fifo, device or socket.
func (x *exporter) special(rel string, e *entry) {
	spfd, name, err := parentFd(x.src, rel)
	if err != nil {
		x.problem(finding{Path: rel, Kind: findUnreadable, Detail: errText(err)})
		return
	}
	defer unix.Close(spfd)
	dpfd, _, err := parentFd(x.dst, rel)
	if err != nil {
		x.problem(finding{Path: rel, Kind: findUnreadable, Detail: "cannot create it: " + errText(err)})
		return
	}
	defer unix.Close(dpfd)
	switch e.st.Mode & unix.S_IFMT {
	case unix.S_IFLNK:
		buf := make([]byte, unix.PathMax)
		n, err := unix.Readlinkat(spfd, name, buf)
		if err == nil {
			err = unix.Symlinkat(string(buf[:n]), dpfd, name)
		}
		if err != nil {
			x.problem(finding{Path: rel, Kind: findUnreadable, Detail: "symbolic link not exported: " + errText(err)})
			return
		}
		x.count(func(r *exportReport) { r.Symlinks++ })
	case unix.S_IFSOCK:
		x.warn(rel, errors.New("a socket is not exported (it is meaningless without its server)"))
		return
	default: // fifo, character or block device
		if err := unix.Mknodat(dpfd, name, e.st.Mode&unix.S_IFMT|0o600, int(e.st.Rdev)); err != nil {
			x.warn(rel, fmt.Errorf("not exported: mknod: %w", err))
			return
		}
		x.count(func(r *exportReport) { r.Other++ })
	}
	if x.root {
		if err := unix.Fchownat(dpfd, name, int(e.st.Uid), int(e.st.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
			x.warn(rel, fmt.Errorf("owner not kept: %w", err))
		}
	}
	if e.st.Mode&unix.S_IFMT != unix.S_IFLNK {
		if err := unix.Fchmodat(dpfd, name, e.st.Mode&0o7777, 0); err != nil {
			x.warn(rel, fmt.Errorf("mode not kept: %w", err))
		}
	}
	ts := []unix.Timespec{e.st.Atim, e.st.Mtim}
	if err := unix.UtimesNanoAt(dpfd, name, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		x.warn(rel, fmt.Errorf("times not kept: %w", err))
	}
}

// dirAttrs gives the exported directory rel the attributes st, after its
// content is complete.
func (x *exporter) dirAttrs(rel string, st *unix.Stat_t) {
	fd, err := openBeneath(x.dst, rel, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		x.warn(rel, fmt.Errorf("attributes not kept: %w", err))
		return
	}
	defer unix.Close(fd)
	if sfd, err := openBeneath(x.src, rel, unix.O_RDONLY|unix.O_DIRECTORY, 0); err == nil {
		x.copyXattrs(rel, sfd, fd)
		unix.Close(sfd)
	}
	x.setAttrs(rel, fd, st)
}

// setAttrs sets owner (as root), mode and times of the exported fd.
func (x *exporter) setAttrs(rel string, fd int, st *unix.Stat_t) {
	if x.root {
		if err := unix.Fchown(fd, int(st.Uid), int(st.Gid)); err != nil {
			x.warn(rel, fmt.Errorf("owner not kept: %w", err))
		}
	}
	if err := unix.Fchmod(fd, st.Mode&0o7777); err != nil {
		x.warn(rel, fmt.Errorf("mode not kept: %w", err))
	}
	ts := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNanoAt(fd, "", ts, unix.AT_EMPTY_PATH); err != nil {
		x.warn(rel, fmt.Errorf("times not kept: %w", err))
	}
}

// copyXattrs copies the extended attributes of src to dst.
func (x *exporter) copyXattrs(rel string, src, dst int) {
	sz, err := unix.Flistxattr(src, nil)
	if err != nil || sz == 0 {
		return
	}
	list := make([]byte, sz)
	sz, err = unix.Flistxattr(src, list)
	if err != nil {
		x.warn(rel, fmt.Errorf("extended attributes not kept: %w", err))
		return
	}
	for _, name := range bytes.Split(bytes.TrimRight(list[:sz], "\x00"), []byte{0}) {
		n := string(name)
		vsz, err := unix.Fgetxattr(src, n, nil)
		if err != nil {
			continue
		}
		val := make([]byte, vsz)
		vsz, err = unix.Fgetxattr(src, n, val)
		if err == nil {
			err = unix.Fsetxattr(dst, n, val[:vsz], 0)
		}
		if err != nil {
			x.warn(rel, fmt.Errorf("extended attribute %s not kept: %w", n, err))
		}
	}
}

// file exports one regular file.
func (x *exporter) file(j exportJob, buf []byte) {
	var reported int64 // bytes counted on the progress bar
	defer func() { x.progress.add(1, j.ent.st.Size-reported) }()
	src, err := openRead(x.src, j.rel, &j.ent.st)
	if err != nil {
		x.problem(finding{Path: j.rel, Kind: findUnreadable, Detail: "not exported: " + errText(err)})
		return
	}
	defer src.Close()
	var magic [crypto.MagicSize]byte
	n, err := src.ReadAt(magic[:], 0)
	if err != nil && !errors.Is(err, io.EOF) {
		x.problem(finding{Path: j.rel, Kind: findUnreadable, Detail: "not exported: " + errText(err)})
		return
	}
	encrypted := crypto.HasMagic(magic[:n])
	var cf *cryptFile
	if encrypted {
		if x.kr == nil {
			x.problem(finding{Path: j.rel, Kind: findNoVerifier, Detail: "encrypted, and there is no usable verifier: not exported"})
			return
		}
		cf, err = openCrypt(x.kr, src, j.ent.st.Size)
		switch {
		case errors.Is(err, crypto.ErrWrongKey):
			x.problem(finding{Path: j.rel, Kind: findForeignKey, Detail: "encrypted under another master key: not exported"})
			return
		case errors.Is(err, crypto.ErrBadHeader), errors.Is(err, crypto.ErrBadSize):
			x.problem(finding{Path: j.rel, Kind: findBadHeader, Detail: errText(err) + ": not exported"})
			return
		case err != nil:
			x.problem(finding{Path: j.rel, Kind: findUnreadable, Detail: errText(err) + ": not exported"})
			return
		}
	}
	fd, err := openBeneath(x.dst, j.rel, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, 0o600)
	if err != nil {
		x.problem(finding{Path: j.rel, Kind: findUnreadable, Detail: "cannot create it: " + errText(err)})
		return
	}
	dst := os.NewFile(uintptr(fd), j.rel)
	defer dst.Close()
	var written int64
	var bad []badBlock
	// Reserve the space at once: a full disk fails here, before any
	// writing, and the file gets few, large extents.
	size := j.ent.st.Size
	if encrypted {
		size = cf.size
	}
	if size > 0 {
		if err := unix.Fallocate(fd, 0, 0, size); err != nil && err != unix.EOPNOTSUPP && err != unix.ENOSYS {
			x.problem(finding{Path: j.rel, Kind: findUnreadable, Detail: "cannot reserve space: " + errText(err)})
			return
		}
	}
	if encrypted {
		// Decrypt into readDepth parts of buf while another is written.
		pw := newPipeWriter(dst, splitBuf(buf, readDepth+1))
		err = cf.stream(readDepth, pw.get, func(p []byte) error {
			written += int64(len(p))
			n := min(int64(len(p)), j.ent.st.Size-reported)
			reported += n
			x.progress.add(0, n)
			return pw.emit(p)
		}, func(b badBlock) bool { bad = append(bad, b); return true })
		if werr := pw.close(); err == nil {
			err = werr
		}
	} else {
		// Plain copy, in pieces for the progress bar; os.File's ReadFrom
		// lets the kernel copy (copy_file_range) where it can.
		for err == nil && written < j.ent.st.Size {
			var m int64
			m, err = io.CopyN(dst, src, min(64<<20, j.ent.st.Size-written))
			written += m
			reported += m
			x.progress.add(0, m)
		}
		if errors.Is(err, io.EOF) {
			err = fmt.Errorf("it shrank while being copied (%d of %d bytes)", written, j.ent.st.Size)
		}
	}
	if err != nil {
		_ = dst.Truncate(written) // no preallocated zeros after what was written
		x.problem(finding{Path: j.rel, Kind: findUnreadable, Detail: fmt.Sprintf("export incomplete after %d bytes: %s", written, errText(err))})
		return
	}
	x.copyXattrs(j.rel, int(src.Fd()), fd)
	x.setAttrs(j.rel, fd, &j.ent.st)
	if err := dst.Close(); err != nil {
		x.problem(finding{Path: j.rel, Kind: findUnreadable, Detail: "export incomplete: " + errText(err)})
		return
	}
	x.count(func(r *exportReport) {
		r.Files++
		r.Bytes += written
		if encrypted {
			r.Decrypted++
		}
	})
	if len(bad) > 0 {
		x.corrupt(j.rel, bad)
	}
}

// corrupt reports a file exported with zero-filled blocks and writes the
// note beside it.
func (x *exporter) corrupt(rel string, bad []badBlock) {
	var ranges []string
	for _, b := range bad {
		switch b.Why {
		case "truncated":
			ranges = append(ranges, fmt.Sprintf("block %d: the file was cut in the middle of it; it ends at byte %d", b.Block, b.Off))
		case "incomplete":
			ranges = append(ranges, fmt.Sprintf("block %d: bytes %d..%d zero-filled (the block holds less than the file size says: its end was cut)", b.Block, b.Off, b.Off+b.Len-1))
		default:
			ranges = append(ranges, fmt.Sprintf("block %d: bytes %d..%d zero-filled (authentication failed)", b.Block, b.Off, b.Off+b.Len-1))
		}
	}
	blk, off := bad[0].Block, bad[0].Off
	note, err := x.writeNote(rel, ranges)
	detail := fmt.Sprintf("exported with %d damaged block(s), first block %d; see %s", len(bad), blk, note)
	if err != nil {
		detail = fmt.Sprintf("exported with %d damaged block(s), first block %d (no note written: %s): %s", len(bad), blk, errText(err), strings.Join(ranges, "; "))
	}
	x.problem(finding{Path: rel, Kind: findCorrupt, Detail: detail, Block: &blk, Offset: &off})
}

// writeNote writes NAME.CORRUPT (or NAME.CORRUPT-2, ... when the data
// directory has a file of that name) beside the exported file.
func (x *exporter) writeNote(rel string, ranges []string) (string, error) {
	text := fmt.Sprintf("mountd export: %s is damaged in the data directory.\n"+
		"Blocks that failed authentication (corruption or tampering) were written as zeros;\n"+
		"everything else in the file is exactly the stored data.\n\n%s\n", path.Base(rel), strings.Join(ranges, "\n"))
	for i := 1; i < 100; i++ {
		name := rel + ".CORRUPT"
		if i > 1 {
			name = fmt.Sprintf("%s.CORRUPT-%d", rel, i)
		}
		// Never take a name that the data directory itself uses: its
		// file may not be exported yet.
		var st unix.Stat_t
		if pfd, base, err := parentFd(x.src, name); err == nil {
			err = unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW)
			unix.Close(pfd)
			if err == nil {
				continue
			}
		}
		fd, err := openBeneath(x.dst, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, 0o600)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			return "", err
		}
		f := os.NewFile(uintptr(fd), name)
		_, err = f.WriteString(text)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return name, err
	}
	return "", errors.New("no free name for the note")
}

func printExport(w io.Writer, r *exportReport) {
	for _, p := range r.Problems {
		fmt.Fprintf(w, "%-11s %s: %s\n", findingLabels[p.Kind], quotePath(p.Path), p.Detail)
	}
	for _, m := range r.Warnings {
		fmt.Fprintf(w, "%-11s %s\n", "WARNING", m)
	}
	if len(r.Skipped) > 0 {
		fmt.Fprintf(w, "%-11s %d temp files of interrupted encryptions (the originals are exported)\n", "SKIPPED", len(r.Skipped))
	}
	state := "complete"
	if !r.Complete {
		state = fmt.Sprintf("INCOMPLETE: %d files not exported whole", len(r.Problems))
	}
	rate := ""
	if r.Seconds > 0 {
		rate = fmt.Sprintf(", %s/s", humanBytes(int64(float64(r.Bytes)/r.Seconds)))
	}
	fmt.Fprintf(w, "export %s -> %s: %d files (%d decrypted, %s), %d hard links, %d directories, %d symlinks, %d other in %s%s: %s\n",
		quotePath(r.DataDir), quotePath(r.Out), r.Files, r.Decrypted, humanBytes(r.Bytes), r.HardLinks, r.Directories,
		r.Symlinks, r.Other, time.Duration(r.Seconds*float64(time.Second)).Round(10*time.Millisecond), rate, state)
}

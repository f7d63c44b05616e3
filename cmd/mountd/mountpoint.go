package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/datadir"
)

// The mountpoint. mountd never mounts over a mount: a second daemon on a
// live mountpoint would hide the first one's files and keep serving
// plaintext after a logout through the first. So before mounting, the
// daemon looks the mountpoint up in /proc/self/mountinfo (by its resolved
// path, so a symlink or a bind mount of a mount counts) without touching
// the mount itself, and:
//   - a mountd mount whose data directory (its source: the daemon sets
//     the FUSE fsname to it) is held by a live daemon is refused, naming
//     that daemon;
//   - a dead mountd mount (its daemon was killed: the kernel answers
//     ENOTCONN) is detached and logged;
//   - any other mount is refused with its type and source;
//   - a directory that is not empty is refused, naming a few entries. The
//     message never suggests emptying a mount: by then it is known not
//     to be one.

// fuseType is the file system type of mountd's mounts ("fuse." + the
// go-fuse Name that fs.Mount sets).
const fuseType = "fuse.mountd"

// statTimeout bounds the one call that touches a FUSE mount to learn
// whether its server is alive; a server that does not answer counts as
// alive.
const statTimeout = 5 * time.Second

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	ID, Parent int
	Root       string // the part of the source file system mounted here
	MountPoint string
	FSType     string
	Source     string
}

// parseMountInfo reads the mountinfo format (proc(5)): the mount ID, the
// parent ID, major:minor, root, mount point, options, optional fields up
// to "-", then the file system type, the source and the super options.
// Paths have space, tab, newline and backslash escaped in octal.
func parseMountInfo(r io.Reader) ([]mountEntry, error) {
	var list []mountEntry
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if len(f) < 7 || sep < 0 || sep+2 >= len(f) {
			return nil, fmt.Errorf("mountinfo: malformed line %q", sc.Text())
		}
		id, err1 := strconv.Atoi(f[0])
		parent, err2 := strconv.Atoi(f[1])
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("mountinfo: malformed line %q", sc.Text())
		}
		list = append(list, mountEntry{
			ID: id, Parent: parent,
			Root:       unescapeMountInfo(f[3]),
			MountPoint: unescapeMountInfo(f[4]),
			FSType:     unescapeMountInfo(f[sep+1]),
			Source:     unescapeMountInfo(f[sep+2]),
		})
	}
	return list, sc.Err()
}

// unescapeMountInfo undoes the kernel's \ooo escapes.
func unescapeMountInfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func readMountInfo() ([]mountEntry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseMountInfo(f)
}

// topMount returns the mount on top at path (the last one mounted there),
// or nil.
func topMount(list []mountEntry, path string) *mountEntry {
	var top *mountEntry
	for i := range list {
		if list[i].MountPoint == path {
			top = &list[i]
		}
	}
	return top
}

// isMountd reports whether e is a mount made by mountd.
func (e *mountEntry) isMountd() bool {
	return e.FSType == fuseType || (e.FSType == "fuse" && e.Source == "mountd")
}

// dataDir is the data directory a mountd mount serves, "" when unknown
// (mounts of versions that named the file system "mountd").
func (e *mountEntry) dataDir() string {
	if e.isMountd() && filepath.IsAbs(e.Source) {
		return e.Source
	}
	return ""
}

// describe says what e is, for a message.
func (e *mountEntry) describe() string {
	if e.isMountd() {
		if d := e.dataDir(); d != "" {
			return "a mountd mount of " + d
		}
		return "a mountd mount"
	}
	return fmt.Sprintf("a %s mount of %s", e.FSType, e.Source)
}

// resolveMountpoint returns dir with every symlink resolved, touching
// only its parent directories unless dir itself is a symlink (a mount
// root is never a symlink, so a mount at dir is found without looking
// at it).
func resolveMountpoint(dir string, mounts []mountEntry) (string, error) {
	for range 40 {
		parent, err := filepath.EvalSymlinks(filepath.Dir(dir))
		if err != nil {
			return "", fmt.Errorf("mountpoint %s: %w", dir, err)
		}
		dir = filepath.Join(parent, filepath.Base(dir))
		if topMount(mounts, dir) != nil {
			return dir, nil
		}
		fi, err := os.Lstat(dir)
		if err != nil || fi.Mode()&os.ModeSymlink == 0 {
			return dir, nil // missing, or not a symlink: the caller looks
		}
		target, err := os.Readlink(dir)
		if err != nil {
			return "", fmt.Errorf("mountpoint %s: %w", dir, err)
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(dir), target)
		}
		dir = filepath.Clean(target)
	}
	return "", fmt.Errorf("mountpoint %s: too many levels of symbolic links", dir)
}

// fuseAlive reports whether the FUSE server behind the mount at dir
// answers. A server that does not answer within statTimeout counts as
// alive (hung, not dead): only ENOTCONN proves it gone.
func fuseAlive(dir string) bool {
	done := make(chan error, 1)
	go func() {
		// statfs, not stat: the kernel answers a stat of the root from
		// attributes it cached (for the attribute timeout) even after the
		// server died, while a statfs always asks the server (ENOTCONN
		// once it is gone). A daemon restarted right after a kill -9 was
		// refused: "served by a process that does not hold its data
		// directory's lock".
		var st unix.Statfs_t
		done <- unix.Statfs(dir, &st)
	}()
	select {
	case err := <-done:
		return !errors.Is(err, unix.ENOTCONN)
	case <-time.After(statTimeout):
		return true
	}
}

// mountpointCheck is what checkMountpoint needs to know.
type mountpointCheck struct {
	dir  string // the --mount flag, absolute
	data string // our data directory, absolute and resolved when it exists
	// locked: we hold our data directory's lock, so no live daemon
	// serves it.
	locked bool
	// fix: detach a dead mountd mount and create a missing directory.
	// Without it, checkMountpoint only refuses what can never work.
	fix bool
	log *logrus.Entry
}

// checkMountpoint makes sure the daemon may mount at c.dir, returning the
// resolved path to mount at. See the comment at the top of the file.
func checkMountpoint(c mountpointCheck) (string, error) {
	mounts, err := readMountInfo()
	if err != nil {
		return "", fmt.Errorf("reading the mount table: %w", err)
	}
	dir, err := resolveMountpoint(c.dir, mounts)
	if err != nil {
		return "", err
	}
	named := c.dir
	if dir != c.dir {
		named = fmt.Sprintf("%s (%s)", c.dir, dir)
	}
	if m := topMount(mounts, dir); m != nil {
		if err := c.checkMount(named, dir, m); err != nil {
			return "", err
		}
		if !c.fix {
			return dir, nil
		}
		// Detached: look again, the directory under it is what we
		// mount on.
		return checkMountpoint(c)
	}

	var st unix.Stat_t
	switch err := unix.Stat(dir, &st); {
	case errors.Is(err, unix.ENOENT):
		if !c.fix {
			return dir, nil
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return "", fmt.Errorf("creating mountpoint %s: %w", dir, err)
		}
		c.log.WithField("mount", dir).Info("created the mountpoint")
		return dir, nil
	case err != nil:
		return "", fmt.Errorf("mountpoint %s: %w", named, err)
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return "", fmt.Errorf("mountpoint %s is not a directory", named)
	}
	// Not in the mount table; a device other than its parent's still
	// means a mount (one this namespace shows under another path).
	var pst unix.Stat_t
	if err := unix.Stat(filepath.Dir(dir), &pst); err == nil && pst.Dev != st.Dev {
		return "", inUse{fmt.Errorf("mountpoint %s is the root of another file system (device %d:%d); "+
			"mountd never mounts over a mount: choose another --mount",
			named, unix.Major(st.Dev), unix.Minor(st.Dev))}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("mountpoint %s: %w", named, err)
	}
	if len(entries) > 0 {
		var names []string
		for _, e := range entries[:min(len(entries), 3)] {
			names = append(names, e.Name())
		}
		if len(entries) > 3 {
			names = append(names, "...")
		}
		return "", fmt.Errorf("mountpoint %s is not empty: it holds %d entries of its own (%s), which a mount would hide; "+
			"mountd mounts only on an empty directory: choose another --mount", named, len(entries), strings.Join(names, ", "))
	}
	return dir, nil
}

// checkMount decides about the mount m found at dir: nil means it was a
// dead mountd mount and (with c.fix) is detached now.
func (c mountpointCheck) checkMount(named, dir string, m *mountEntry) error {
	refuse := func(why string) error {
		return inUse{fmt.Errorf("mountpoint %s is already %s%s; mountd never mounts over a mount: "+
			"stop that first, or choose another --mount", named, m.describe(), why)}
	}
	if !m.isMountd() {
		if strings.HasPrefix(m.FSType, "fuse") && !fuseAlive(dir) {
			return refuse(" whose server is gone (unmount it with 'umount -l " + dir + "')")
		}
		return refuse("")
	}
	if d := m.dataDir(); d != "" && !(c.locked && d == c.data) {
		h, held, err := datadir.Probe(d)
		switch {
		case err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENOTDIR):
			return refuse(fmt.Sprintf(" (its data directory's lock: %v)", err))
		case held && h.PID != 0:
			return refuse(fmt.Sprintf(", served by pid %d", h.PID))
		case held:
			return refuse(", served by another mountd process")
		}
	}
	// No daemon holds its data directory: it should be dead.
	if fuseAlive(dir) {
		return refuse(", served by a process that does not hold its data directory's lock")
	}
	if !c.fix {
		return nil
	}
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("mountpoint %s is a dead mountd mount and detaching it failed: %w", named, err)
	}
	c.log.WithFields(logrus.Fields{"mount": dir, "source": m.Source}).
		Warn("detached a dead mountd mount left by a daemon that was killed")
	return nil
}

package fs

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// The durable record of files whose plaintext waits for encryption
// (auth/pending-encryption, mode 0600): protected files written through
// the mount while logged out, and plaintext moved onto a protected name
// whose conversion has not finished. The converter (converter.go) keeps
// the live set in memory; this log mirrors it so that a restart or a
// power loss forgets nothing: an entry is appended and made durable
// (fdatasync) before the rename or the first logged-out write that makes
// a file pending, and a removal is appended, not synced, once the file is
// converted (a removal lost in a crash only makes the next login look at
// an encrypted file again). The log is emptied when nothing is pending,
// and rewritten when it grows past maxPendingLog.
//
// It names files (paths relative to the data directory), which are
// metadata the backing directory shows anyway, and nothing of their
// content. Its cost: one fdatasync of a small file per file that becomes
// pending (concurrent ones share it); nothing for protected files created
// while a key is set, nor for temporaries that were encrypted from their
// first byte. The alternative, a scan at login, would read the header of
// every protected file at every login (docs/SECURITY.md).
//
// Record: op (1 byte: 'A' pending, 'D' done) | path length (2 bytes, big
// endian) | path | CRC-32C of the preceding bytes (4 bytes). A torn tail
// (a crash in mid-append) fails its CRC and is cut off at load.

// pendingLogName is the log's name in auth/.
const pendingLogName = "pending-encryption"

// maxPendingLog is the size past which the log is rewritten with only
// the live entries.
const maxPendingLog = 1 << 20

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// pendingLog is the durable record. Its appends are ordered by the
// caller (converter.mu); its syncs are shared by concurrent callers.
type pendingLog struct {
	f *os.File

	mu      sync.Mutex
	cond    sync.Cond // on mu: a sync finished
	size    int64     // bytes appended
	written uint64    // records appended
	synced  uint64    // records known durable
	syncing bool
	err     error // the first write error: the log is then not trusted to be complete
}

// openPendingLog opens (creating it if needed) the log of the backing
// directory whose root descriptor is root and returns it with the live
// entries, in the order they were added.
func openPendingLog(root int) (*pendingLog, []string, error) {
	f, err := openAuthFile(root, pendingLogName)
	if err != nil {
		return nil, nil, err
	}
	l := &pendingLog{f: f}
	l.cond.L = &l.mu
	live, valid, err := l.replay()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	// Cut a torn tail, so later appends follow whole records.
	if fi, err := f.Stat(); err == nil && fi.Size() != valid {
		if err := f.Truncate(valid); err != nil {
			f.Close()
			return nil, nil, err
		}
	}
	l.size = valid
	return l, live, nil
}

// replay reads the log and returns the live entries and the length of
// its valid prefix.
func (l *pendingLog) replay() (live []string, valid int64, err error) {
	fi, err := l.f.Stat()
	if err != nil {
		return nil, 0, err
	}
	if fi.Size() > 64<<20 {
		return nil, 0, errors.New("fs: pending-encryption log larger than 64 MiB")
	}
	b := make([]byte, fi.Size())
	if _, err := l.f.ReadAt(b, 0); err != nil && int64(len(b)) != 0 {
		return nil, 0, err
	}
	set := map[string]int{} // path -> order
	order := 0
	for off := 0; ; {
		if len(b)-off < 3 {
			break
		}
		n := int(binary.BigEndian.Uint16(b[off+1:]))
		end := off + 3 + n + 4
		if end > len(b) {
			break
		}
		if crc32.Checksum(b[off:off+3+n], crcTable) != binary.BigEndian.Uint32(b[off+3+n:end]) {
			break
		}
		rel := string(b[off+3 : off+3+n])
		switch b[off] {
		case 'A':
			if _, ok := set[rel]; !ok {
				set[rel] = order
				order++
			}
		case 'D':
			delete(set, rel)
		default:
			return nil, 0, errors.New("fs: pending-encryption log: unknown record")
		}
		off = end
		valid = int64(off)
	}
	live = make([]string, len(set))
	i := 0
	for rel := range set {
		live[i] = rel
		i++
	}
	// Oldest first.
	sortByOrder(live, set)
	return live, valid, nil
}

func sortByOrder(s []string, order map[string]int) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && order[s[j-1]] > order[s[j]]; j-- {
			s[j-1], s[j] = s[j], s[j-1]
		}
	}
}

// record encodes one record.
func record(op byte, rel string) []byte {
	b := make([]byte, 3+len(rel)+4)
	b[0] = op
	binary.BigEndian.PutUint16(b[1:], uint16(len(rel)))
	copy(b[3:], rel)
	binary.BigEndian.PutUint32(b[3+len(rel):], crc32.Checksum(b[:3+len(rel)], crcTable))
	return b
}

// maxPendingPath bounds the paths the log holds (PATH_MAX).
const maxPendingPath = 4096

// append appends a record and returns its sequence number for sync.
// The caller orders appends (converter.mu).
func (l *pendingLog) append(op byte, rel string) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(rel) > maxPendingPath {
		if l.err == nil {
			l.err = unix.ENAMETOOLONG
		}
		return l.written
	}
	b := record(op, rel)
	if _, err := l.f.WriteAt(b, l.size); err != nil {
		if l.err == nil {
			l.err = err
		}
		return l.written
	}
	l.size += int64(len(b))
	l.written++
	return l.written
}

// sync returns once the records up to seq are durable, sharing one
// fdatasync among concurrent callers.
func (l *pendingLog) sync(seq uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.synced < seq && l.err == nil {
		if l.syncing {
			l.cond.Wait()
			continue
		}
		l.syncing = true
		target := l.written
		l.mu.Unlock()
		err := unix.Fdatasync(int(l.f.Fd()))
		l.mu.Lock()
		l.syncing = false
		if err != nil && l.err == nil {
			l.err = err
		}
		if err == nil && target > l.synced {
			l.synced = target
		}
		l.cond.Broadcast()
	}
	return l.err
}

// rewrite replaces the log with the entries of live: an empty log is
// truncated in place (its next append and sync make both durable), a
// longer one is written beside it and renamed over it (replaceAuthFile:
// a crash leaves the old log or the new one, never a mixture). Caller
// orders it with appends (converter.mu).
func (l *pendingLog) rewrite(root int, live []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.syncing { // its descriptor must stay open
		l.cond.Wait()
	}
	if len(live) == 0 {
		if err := l.f.Truncate(0); err == nil {
			l.size = 0
		}
		return
	}
	var b []byte
	for _, rel := range live {
		b = append(b, record('A', rel)...)
	}
	f, err := replaceAuthFile(root, pendingLogName, b)
	if err != nil {
		return // the old log stays, whole
	}
	l.f.Close()
	l.f = f
	l.size = int64(len(b))
	l.synced = l.written
}

// len returns the log's size.
func (l *pendingLog) len() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.size
}

func (l *pendingLog) close() { l.f.Close() }

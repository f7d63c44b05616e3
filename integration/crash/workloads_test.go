package crash

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/mountd/mountd/crypto"
	"github.com/mountd/mountd/internal/testmount"
)

// workloads: each constructor returns a fresh workload (its model of what
// was written lives in its closures); full asks for a longer run.
var workloads = []func(full bool) *workload{
	appendWorkload,
	overwriteWorkload,
	saveWorkload,
	passwdWorkload,
	migrateWorkload,
	upgradeWorkload,
	pendingWorkload,
	streamWorkload,
	// The daemon writing as on a network filesystem (growing files by
	// write, not by ftruncate: docs/FORMAT.md section 5), on this disk.
	networkWrites(appendWorkload, "log.bin"),
	networkWrites(streamWorkload, "big.bin"),
}

// networkWrites runs the workload of mk with the daemon writing encrypted
// files as on a network filesystem (MOUNTD_NETWORK_BACKING=1). After the
// recorded part the backing file name must show it: data, not a hole, in
// the page past its last slot.
func networkWrites(mk func(full bool) *workload, name string) func(full bool) *workload {
	return func(full bool) *workload {
		w := mk(full)
		w.name += "-netwrites"
		w.env = []string{"MOUNTD_NETWORK_BACKING=1"}
		run := w.run
		w.run = func(wc *wctx) error {
			if err := run(wc); err != nil {
				return err
			}
			data, err := testmount.TailPageHoldsData(filepath.Join(wc.data, name))
			if err == nil && !data {
				err = fmt.Errorf("%s: a hole past the last slot: the daemon grew it by ftruncate", name)
			}
			return err
		}
		return w
	}
}

// Each workload writes an encrypted file (NAME.bin) and, as a control, the
// same bytes to a plaintext one (NAME.dat, not protected: kernel
// passthrough to the backing file), and checks both the same way.
var exts = []string{".bin", ".dat"}

// gen returns n bytes of the content that write number seq puts at offset
// off: every write is recognisable byte by byte.
func gen(seq uint64, off int64, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		x := seq*0x9E3779B97F4A7C15 + uint64(off+int64(i))*0xBF58476D1CE4E5B9
		x ^= x >> 31
		x *= 0x94D049BB133111EB
		b[i] = byte(x >> 56)
	}
	return b
}

func openFiles(dir, name string, flag int) ([]*os.File, error) {
	var fs []*os.File
	for _, ext := range exts {
		f, err := os.OpenFile(filepath.Join(dir, name+ext), flag, 0o600)
		if err != nil {
			for _, f := range fs {
				f.Close()
			}
			return nil, err
		}
		fs = append(fs, f)
	}
	return fs, nil
}

func closeAll(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

func syncAll(fs []*os.File) error {
	for _, f := range fs {
		if err := f.Sync(); err != nil {
			return fmt.Errorf("fsync %s: %w", f.Name(), err)
		}
	}
	return nil
}

// createSynced creates path (which must not exist) with data and fsyncs
// it.
func createSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	return nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// checkPrefix checks the file at path against want: its first acked bytes
// must read back exactly; past them, reads may fail with EIO (data that
// was never acknowledged) but what they return must be want's bytes.
func checkPrefix(c *cctx, path string, want []byte, acked int64) {
	plain := filepath.Ext(path) != ".bin"
	f, err := os.Open(path)
	if err != nil {
		if acked > 0 || !errors.Is(err, os.ErrNotExist) {
			c.fail("%s: open: %v (%d bytes acknowledged)", filepath.Base(path), err, acked)
		}
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		c.fail("%s: stat: %v", filepath.Base(path), err)
		return
	}
	if fi.Size() < acked {
		c.fail("%s: size %d, but %d bytes were acknowledged", filepath.Base(path), fi.Size(), acked)
	}
	// 4 KiB reads at 4 KiB boundaries: an error names one block.
	buf := make([]byte, 4096)
	eio := int64(0)
	for off := int64(0); off < fi.Size(); off += 4096 {
		n, err := f.ReadAt(buf[:min(4096, fi.Size()-off)], off)
		if err == io.EOF && n == 0 {
			break
		}
		if err != nil && err != io.EOF {
			if isEIO(err) && off >= acked {
				eio += int64(len(buf)) // never acknowledged: it may be lost, and says so
				continue
			}
			c.fail("%s: read at %d: %v (%d bytes acknowledged)", filepath.Base(path), off, err, acked)
			return
		}
		if off+int64(n) > int64(len(want)) {
			c.fail("%s: %d bytes at %d past the %d ever written", filepath.Base(path), n, off, len(want))
			return
		}
		for i := range n {
			x := off + int64(i)
			// A plaintext file extended by a write whose data did not
			// reach the disk reads zeros there; an encrypted one must
			// not (zeros are not what was written).
			if buf[i] != want[x] && !(plain && x >= acked && buf[i] == 0) {
				c.fail("%s: byte %d differs from what was written (%d bytes acknowledged)", filepath.Base(path), x, acked)
				return
			}
		}
	}
	if eio > 0 {
		c.note("%s: %d unacknowledged bytes unreadable (EIO) past %d", filepath.Base(path), eio, acked)
	}
}

// lastAck returns the value of the last ack (acks are in order), or def.
func lastAck[T any](acked []ack, def T) T {
	for i := len(acked) - 1; i >= 0; i-- {
		if v, ok := acked[i].v.(T); ok {
			return v
		}
	}
	return def
}

// ---- append: records appended, fsync after every one to three ----

func appendWorkload(full bool) *workload {
	n := 40
	if full {
		n = 160
	}
	var content []byte
	return &workload{
		name: "append",
		setup: func(w *wctx) error {
			fs, err := openFiles(w.mnt, "log", os.O_WRONLY|os.O_CREATE|os.O_EXCL)
			if err != nil {
				return err
			}
			defer closeAll(fs)
			if err := syncAll(fs); err != nil {
				return err
			}
			return syncDir(w.mnt)
		},
		run: func(w *wctx) error {
			fs, err := openFiles(w.mnt, "log", os.O_WRONLY|os.O_APPEND)
			if err != nil {
				return err
			}
			defer closeAll(fs)
			for i := 0; i < n; i++ {
				size := 1 + w.rng.IntN(700)
				if w.rng.IntN(10) == 0 {
					size = 3000 + w.rng.IntN(6000)
				}
				rec := gen(uint64(i), int64(len(content)), size)
				for _, f := range fs {
					if _, err := f.Write(rec); err != nil {
						return err
					}
				}
				content = append(content, rec...)
				if w.rng.IntN(4) == 0 {
					// Background writeback of the encrypted file's
					// pages, between two fsyncs.
					if err := w.writeback("log.bin"); err != nil {
						return err
					}
				}
				if w.rng.IntN(2) == 0 || i == n-1 {
					if err := syncAll(fs); err != nil {
						return err
					}
					w.ack(int64(len(content)))
				}
			}
			return nil
		},
		check: func(c *cctx) {
			acked := lastAck(c.acked, int64(0))
			for _, ext := range exts {
				checkPrefix(c, filepath.Join(c.mnt, "log"+ext), content, acked)
			}
		},
	}
}

// ---- overwrite: random writes into a durable file, fsync now and then ----

type overwrite struct {
	seq      uint64
	off, len int64
}

func overwriteWorkload(full bool) *workload {
	size, n := int64(512<<10), 60
	if full {
		size, n = 2<<20, 300
	}
	var writes []overwrite // writes[0] is the initial content
	return &workload{
		name: "overwrite",
		setup: func(w *wctx) error {
			fs, err := openFiles(w.mnt, "rand", os.O_WRONLY|os.O_CREATE|os.O_EXCL)
			if err != nil {
				return err
			}
			defer closeAll(fs)
			writes = append(writes, overwrite{seq: 0, off: 0, len: size})
			for _, f := range fs {
				if _, err := f.WriteAt(gen(0, 0, int(size)), 0); err != nil {
					return err
				}
			}
			if err := syncAll(fs); err != nil {
				return err
			}
			if err := syncDir(w.mnt); err != nil {
				return err
			}
			w.ack(uint64(0))
			return nil
		},
		run: func(w *wctx) error {
			fs, err := openFiles(w.mnt, "rand", os.O_WRONLY)
			if err != nil {
				return err
			}
			defer closeAll(fs)
			for i := 1; i <= n; i++ {
				var o overwrite
				if w.rng.IntN(5) > 0 { // an aligned 4 KiB block
					o = overwrite{off: w.rng.Int64N(size/4096) * 4096, len: 4096}
				} else { // any range: partial blocks, or two
					l := 1 + w.rng.Int64N(6000)
					o = overwrite{off: w.rng.Int64N(size - l), len: l}
				}
				o.seq = uint64(i)
				for _, f := range fs {
					if _, err := f.WriteAt(gen(o.seq, o.off, int(o.len)), o.off); err != nil {
						return err
					}
				}
				writes = append(writes, o)
				if w.rng.IntN(6) == 0 {
					if err := w.writeback("rand.bin"); err != nil {
						return err
					}
				}
				if w.rng.IntN(5) == 0 || i == n {
					if err := syncAll(fs); err != nil {
						return err
					}
					w.ack(o.seq)
				}
			}
			return nil
		},
		check: func(c *cctx) {
			acked := lastAck(c.acked, uint64(0))
			// Each byte must hold the value of the last acknowledged
			// write to it, or of a later write.
			atAck := make([]byte, size)
			for _, o := range writes {
				if o.seq <= acked {
					copy(atAck[o.off:], gen(o.seq, o.off, int(o.len)))
				}
			}
			allowed := func(x int64, v byte) bool {
				if atAck[x] == v {
					return true
				}
				for _, o := range writes {
					if o.seq > acked && o.off <= x && x < o.off+o.len && gen(o.seq, x, 1)[0] == v {
						return true
					}
				}
				return false
			}
			for _, ext := range exts {
				name := "rand" + ext
				f, err := os.Open(filepath.Join(c.mnt, name))
				if err != nil {
					c.fail("%s: open: %v", name, err)
					continue
				}
				if fi, err := f.Stat(); err != nil || fi.Size() != size {
					c.fail("%s: stat: size %v, err %v; want %d", name, fi.Size(), err, size)
				}
				buf := make([]byte, 4096)
				var lost []string
				for off := int64(0); off < size; off += 4096 {
					n, err := f.ReadAt(buf, off)
					if err != nil && !(err == io.EOF && int64(n) == size-off) {
						lost = append(lost, fmt.Sprintf("block %d: %v", off/4096, err))
						continue
					}
					for i := 0; i < n; i++ {
						if !allowed(off+int64(i), buf[i]) {
							lost = append(lost, fmt.Sprintf("byte %d holds neither the acknowledged value nor a later one", off+int64(i)))
							break
						}
					}
				}
				f.Close()
				if len(lost) > 0 {
					c.fail("%s (acknowledged through write %d): %d blocks lost: %s", name, acked, len(lost), strings.Join(lost[:min(3, len(lost))], "; "))
				}
			}
		},
	}
}

// ---- save: the atomic save loop (write a temp, fsync, rename, fsync dir) ----

func saveWorkload(full bool) *workload {
	n := 12
	if full {
		n = 50
	}
	var versions [][]byte
	save := func(w *wctx, v int) error {
		data := gen(uint64(1000+v), 0, 100+w.rng.IntN(20000))
		for _, ext := range exts {
			name := "doc" + ext
			tmp := filepath.Join(w.mnt, name+".tmp") // NAME.*: encrypted from its first byte
			f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
			if err != nil {
				return err
			}
			if _, err := f.Write(data); err != nil {
				f.Close()
				return err
			}
			if err := f.Sync(); err != nil {
				f.Close()
				return err
			}
			f.Close()
			if err := os.Rename(tmp, filepath.Join(w.mnt, name)); err != nil {
				return err
			}
		}
		versions = append(versions, data)
		if err := syncDir(w.mnt); err != nil {
			return err
		}
		w.ack(v)
		return nil
	}
	return &workload{
		name:  "save",
		setup: func(w *wctx) error { return save(w, 0) },
		run: func(w *wctx) error {
			for v := 1; v <= n; v++ {
				if err := save(w, v); err != nil {
					return err
				}
			}
			return nil
		},
		check: func(c *cctx) {
			acked := lastAck(c.acked, 0)
			for _, ext := range exts {
				name := "doc" + ext
				got, err := os.ReadFile(filepath.Join(c.mnt, name))
				if err != nil {
					c.fail("%s: %v (version %d acknowledged)", name, err, acked)
					continue
				}
				ok := false
				for v := acked; v < len(versions); v++ {
					ok = ok || bytes.Equal(got, versions[v])
				}
				if !ok {
					c.fail("%s: %d bytes, not version %d (acknowledged) nor a later one", name, len(got), acked)
				}
			}
		},
	}
}

// ---- passwd: password changes, with appends to a file in between ----

func passwdWorkload(full bool) *workload {
	n := 4
	if full {
		n = 12
	}
	pw := func(i int) string {
		if i == 0 {
			return password
		}
		return fmt.Sprintf("crash harness password %d", i)
	}
	var content []byte
	tried := 0 // the last password a change was attempted to
	appendSync := func(w *wctx, fs []*os.File, i int) error {
		rec := gen(uint64(5000+i), int64(len(content)), 1+w.rng.IntN(3000))
		for _, f := range fs {
			if _, err := f.Write(rec); err != nil {
				return err
			}
		}
		content = append(content, rec...)
		if err := syncAll(fs); err != nil {
			return err
		}
		w.ack(int64(len(content)))
		return nil
	}
	return &workload{
		name: "passwd",
		setup: func(w *wctx) error {
			fs, err := openFiles(w.mnt, "pw", os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND)
			if err != nil {
				return err
			}
			defer closeAll(fs)
			if err := appendSync(w, fs, 0); err != nil {
				return err
			}
			return syncDir(w.mnt)
		},
		run: func(w *wctx) error {
			fs, err := openFiles(w.mnt, "pw", os.O_WRONLY|os.O_APPEND)
			if err != nil {
				return err
			}
			defer closeAll(fs)
			for i := 1; i <= n; i++ {
				tried = i
				st, m, err := w.d.call("POST", "/api/system/change_password",
					map[string]string{"old_password": pw(i - 1), "new_password": pw(i)})
				if err != nil {
					return err
				}
				if st != 200 {
					return fmt.Errorf("change_password: %d %v", st, m)
				}
				w.ack(i) // the new verifier is durable
				if err := appendSync(w, fs, i); err != nil {
					return err
				}
			}
			return nil
		},
		passwords: func(acked []ack) []string {
			a := lastAck(acked, 0)
			var out []string
			for i := a; i <= tried && i <= a+1; i++ {
				out = append(out, pw(i))
			}
			return out
		},
		check: func(c *cctx) {
			acked := lastAck(c.acked, int64(0))
			for _, ext := range exts {
				checkPrefix(c, filepath.Join(c.mnt, "pw"+ext), content, acked)
			}
		},
	}
}

// ---- migrate: encrypt_existing_files over plaintext files ----

func migrateWorkload(full bool) *workload {
	sizes := []int{1, 100, 4096, 5000, 70000, 1<<20 + 123}
	if full {
		sizes = append(sizes, 2, 4095, 4097, 8192, 12345, 300000, 3<<20+7)
	}
	name := func(i int) string { return fmt.Sprintf("old%02d.bin", i) }
	return &workload{
		name: "migrate",
		prepare: func(w *wctx) error {
			for i, s := range sizes {
				if err := os.WriteFile(filepath.Join(w.data, name(i)), gen(uint64(9000+i), 0, s), 0o600); err != nil {
					return err
				}
			}
			return nil
		},
		run: func(w *wctx) error {
			if _, err := encryptExisting(w.d); err != nil {
				return err
			}
			w.ack("done")
			return nil
		},
		check: func(c *cctx) {
			done := lastAck(c.acked, "") == "done"
			for i, s := range sizes {
				got, err := os.ReadFile(filepath.Join(c.mnt, name(i)))
				if err != nil {
					c.fail("%s: %v", name(i), err)
					continue
				}
				if !bytes.Equal(got, gen(uint64(9000+i), 0, s)) {
					c.fail("%s: %d bytes differ from the original %d", name(i), len(got), s)
				}
				if done {
					head := make([]byte, 6)
					f, err := os.Open(filepath.Join(c.data, name(i)))
					if err == nil {
						io.ReadFull(f, head)
						f.Close()
					}
					if string(head) != "MTDENC" {
						c.fail("%s: not encrypted on disk after the task succeeded", name(i))
					}
				}
			}
			noTemps(c)
		},
	}
}

// ---- pending: protected files written while logged out, encrypted after the next login ----

// pendingWorkload writes protected files through the mount while logged
// out (plaintext on disk, each recorded in auth/pending-encryption before
// it becomes pending), fsyncs each and the directory, then logs in and
// waits for the daemon to log each one encrypted in place. In every crash
// state: each acknowledged file reads back exactly; after a login the
// daemon encrypts every acknowledged one (the record survived the power
// loss: OPERATIONS.md promises "a restart or a power loss forgets
// nothing"); once all were acknowledged encrypted, each is encrypted on
// disk before any login; no temp is left.
func pendingWorkload(full bool) *workload {
	sizes := []int{1, 5000, 70000, 1<<20 + 123}
	if full {
		sizes = append(sizes, 4095, 4097, 300000, 3<<20+7)
	}
	name := func(i int) string { return fmt.Sprintf("late%02d.bin", i) }
	want := func(i int) []byte { return gen(uint64(7000+i), 0, sizes[i]) }
	encrypted := func(c *cctx, i int) bool {
		head := make([]byte, 6)
		f, err := os.Open(filepath.Join(c.data, name(i)))
		if err != nil {
			return false
		}
		defer f.Close()
		_, err = io.ReadFull(f, head)
		return err == nil && string(head) == "MTDENC"
	}
	return &workload{
		name: "pending",
		setup: func(w *wctx) error {
			if st, m, err := w.d.call("POST", "/api/system/logout", nil); err != nil || st != 200 {
				return fmt.Errorf("logout: %d %v %v", st, m, err)
			}
			return nil
		},
		run: func(w *wctx) error {
			for i := range sizes {
				if err := createSynced(filepath.Join(w.mnt, name(i)), want(i)); err != nil {
					return err
				}
				if err := syncDir(w.mnt); err != nil {
					return err
				}
				w.ack(i + 1) // files 0..i are durable
			}
			if n := pendingCount(w.d); n != len(sizes) {
				return fmt.Errorf("pending_encryption %d before the login, want %d", n, len(sizes))
			}
			if err := w.d.login(password); err != nil {
				return err
			}
			for i := range sizes {
				if err := waitEncrypted(w.d, name(i), 2*time.Minute); err != nil {
					return err
				}
			}
			w.ack("encrypted")
			return nil
		},
		beforeLogin: func(c *cctx) {
			if lastAck(c.acked, "") != "encrypted" {
				return
			}
			for i := range sizes {
				if !encrypted(c, i) {
					c.fail("%s: plaintext on disk, but the daemon had logged it encrypted in place", name(i))
				}
			}
		},
		check: func(c *cctx) {
			durable := lastAck(c.acked, 0)
			read := func(i int) {
				got, err := os.ReadFile(filepath.Join(c.mnt, name(i)))
				switch {
				case i < durable && err != nil:
					c.fail("%s: %v (acknowledged)", name(i), err)
				case i < durable && !bytes.Equal(got, want(i)):
					c.fail("%s: %d bytes differ from the %d acknowledged", name(i), len(got), sizes[i])
				case i >= durable && err == nil:
					// Never acknowledged: it may be short, or read
					// zeros where its data did not reach the disk,
					// but it holds nothing that was not written.
					w := want(i)
					for x, b := range got {
						if x >= len(w) || (b != w[x] && b != 0) {
							c.fail("%s: byte %d was never written (unacknowledged file)", name(i), x)
							break
						}
					}
				}
			}
			for i := range sizes {
				read(i)
			}
			// The login encrypts every acknowledged file that is still
			// plaintext: it must be in the record the daemon read.
			pending := pendingCount(c.d)
			for i := 0; i < durable; i++ {
				switch {
				case encrypted(c, i):
				case pending == 0:
					c.fail("%s: plaintext on disk and nothing pending after the login: the power loss lost its record", name(i))
					continue
				default:
					if err := waitEncrypted(c.d, name(i), 2*time.Minute); err != nil {
						c.fail("after the login: %v", err)
						continue
					}
				}
				read(i)
			}
			noTemps(c)
		},
	}
}

// pendingCount returns the daemon's pending_encryption (-1 when it cannot
// tell).
func pendingCount(d *daemon) int {
	st, m, err := d.call("GET", "/api/system/encryption-status", nil)
	if err != nil || st != 200 {
		return -1
	}
	n, ok := m["pending_encryption"].(float64)
	if !ok {
		return -1
	}
	return int(n)
}

// encryptExisting runs the encrypt_existing_files task, waits for the
// daemon to log its end (the record is final by then) and returns the
// record, which must say it succeeded.
func encryptExisting(d *daemon) (map[string]any, error) {
	st, m, err := d.call("POST", "/api/system/encrypt_existing_files", nil)
	if err != nil {
		return nil, err
	}
	if st != 202 {
		return nil, fmt.Errorf("encrypt_existing_files: %d %v", st, m)
	}
	id, _ := m["task"].(map[string]any)["id"].(string)
	if !d.waitLog(2*time.Minute, "encrypt_existing_files: finished") {
		return nil, errors.New("the task did not finish within 2 minutes")
	}
	_, m, err = d.call("GET", "/api/system/tasks/"+id, nil)
	if err != nil {
		return nil, err
	}
	task, _ := m["task"].(map[string]any)
	if task["state"] != "succeeded" {
		return nil, fmt.Errorf("task ended: %v", task)
	}
	return task, nil
}

// waitEncrypted waits for the daemon's log line of name's encryption in
// place (written once it is committed), for up to limit.
func waitEncrypted(d *daemon, name string, limit time.Duration) error {
	if !d.waitLog(limit, `msg="encrypted file in place"`, "path="+name) {
		return fmt.Errorf("%s not encrypted in place within %v", name, limit)
	}
	return nil
}

// noTemps fails c for every conversion temp left in the backing
// directory's root after the daemon started.
func noTemps(c *cctx) {
	ents, _ := os.ReadDir(c.data)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".mountd-tmp-") {
			c.fail("temp file %s left in the backing directory after start", e.Name())
		}
	}
}

// ---- upgrade: version 1 files (an older mountd's) rewritten in version 2 ----

// upgradeWorkload puts version 1 files, as an older mountd left them,
// into the backing directory and runs encrypt_existing_files, which
// rewrites each in version 2 (copy, check, rename: FORMAT.md sections 2.2
// and 4). In every crash state each file reads back exactly (the name
// holds the whole version 1 file or the whole version 2 copy); once the
// task's success was acknowledged, each is version 2 on disk; no temp is
// left.
func upgradeWorkload(full bool) *workload {
	sizes := []int{1, 4064, 4065, 5000, 70000, 1<<20 + 123}
	if full {
		sizes = append(sizes, 2, 4095, 4097, 300000, 3<<20+7)
	}
	name := func(i int) string { return fmt.Sprintf("v1-%02d.bin", i) }
	want := func(i int) []byte { return gen(uint64(8000+i), 0, sizes[i]) }
	version := func(c *cctx, i int) int {
		b := make([]byte, crypto.HeaderSize)
		f, err := os.Open(filepath.Join(c.data, name(i)))
		if err != nil {
			return 0
		}
		defer f.Close()
		if _, err := io.ReadFull(f, b); err != nil {
			return 0
		}
		h, err := crypto.ParseHeader(b)
		if err != nil {
			return 0
		}
		return int(h.Version)
	}
	return &workload{
		name: "upgrade",
		setup: func(w *wctx) error {
			v1, err := testmount.V1WriterFor(w.data, []byte(password))
			if err != nil {
				return err
			}
			defer v1.Wipe()
			for i := range sizes {
				b, err := v1.Encode(want(i))
				if err != nil {
					return err
				}
				if err := createSynced(filepath.Join(w.data, name(i)), b); err != nil {
					return err
				}
			}
			return syncDir(w.data)
		},
		run: func(w *wctx) error {
			task, err := encryptExisting(w.d)
			if err != nil {
				return err
			}
			if up, _ := task["files_upgraded"].(float64); int(up) != len(sizes) {
				return fmt.Errorf("files_upgraded %v, want %d: %v", task["files_upgraded"], len(sizes), task)
			}
			w.ack("done")
			return nil
		},
		check: func(c *cctx) {
			done := lastAck(c.acked, "") == "done"
			for i := range sizes {
				v := version(c, i)
				got, err := os.ReadFile(filepath.Join(c.mnt, name(i)))
				switch {
				case err != nil:
					c.fail("%s (version %d on disk): %v", name(i), v, err)
				case !bytes.Equal(got, want(i)):
					c.fail("%s (version %d on disk): %d bytes differ from the original %d", name(i), v, len(got), sizes[i])
				}
				if done && v != 2 {
					c.fail("%s: version %d on disk after the task's success was acknowledged", name(i), v)
				}
			}
			noTemps(c)
		},
	}
}

// ---- stream: a large sequential write, fsync, then small appends ----

func streamWorkload(full bool) *workload {
	mib := 4
	if full {
		mib = 40
	}
	var content []byte
	return &workload{
		name: "stream",
		run: func(w *wctx) error {
			fs, err := openFiles(w.mnt, "big", os.O_WRONLY|os.O_CREATE|os.O_EXCL)
			if err != nil {
				return err
			}
			defer closeAll(fs)
			for i := 0; i < mib; i++ {
				chunk := gen(7, int64(len(content)), 1<<20)
				for _, f := range fs {
					if _, err := f.Write(chunk); err != nil {
						return err
					}
				}
				content = append(content, chunk...)
			}
			if err := syncAll(fs); err != nil {
				return err
			}
			if err := syncDir(w.mnt); err != nil {
				return err
			}
			w.ack(int64(len(content)))
			for i := 0; i < 3; i++ {
				rec := gen(7, int64(len(content)), 1000+w.rng.IntN(5000))
				for _, f := range fs {
					if _, err := f.Write(rec); err != nil {
						return err
					}
				}
				content = append(content, rec...)
				if err := w.writeback("big.bin"); err != nil {
					return err
				}
			}
			if err := syncAll(fs); err != nil {
				return err
			}
			w.ack(int64(len(content)))
			return nil
		},
		check: func(c *cctx) {
			acked := lastAck(c.acked, int64(0))
			for _, ext := range exts {
				checkPrefix(c, filepath.Join(c.mnt, "big"+ext), content, acked)
			}
		},
	}
}

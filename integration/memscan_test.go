package integration

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/mountd/mountd/crypto"
)

// needle is a secret to look for in the daemon's memory.
type needle struct {
	name string
	b    []byte
}

// memCount is where a needle was found: in locked memory (VmFlags "lo")
// or anywhere else.
type memCount struct{ locked, other int }

// memRegion is one mapping of a process, from /proc/PID/smaps.
type memRegion struct {
	start, end uint64
	perms      string
	name       string
	rss        uint64 // kB
	flags      []string
}

func (r memRegion) locked() bool { return r.hasFlag("lo") }

func (r memRegion) hasFlag(f string) bool {
	for _, x := range r.flags {
		if x == f {
			return true
		}
	}
	return false
}

// readSmaps parses /proc/PID/smaps.
func readSmaps(pid int) ([]memRegion, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []memRegion
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		line := s.Text()
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if lo, hi, ok := strings.Cut(fields[0], "-"); ok && len(fields) >= 5 && !strings.HasSuffix(fields[0], ":") {
			a, err1 := strconv.ParseUint(lo, 16, 64)
			b, err2 := strconv.ParseUint(hi, 16, 64)
			if err1 == nil && err2 == nil {
				r := memRegion{start: a, end: b, perms: fields[1]}
				if len(fields) > 5 {
					r.name = strings.Join(fields[5:], " ")
				}
				out = append(out, r)
				continue
			}
		}
		if len(out) == 0 {
			continue
		}
		r := &out[len(out)-1]
		switch fields[0] {
		case "Rss:":
			if len(fields) > 1 {
				r.rss, _ = strconv.ParseUint(fields[1], 10, 64)
			}
		case "VmFlags:":
			r.flags = fields[1:]
		}
	}
	return out, s.Err()
}

// scanMemory reads every resident, readable mapping of process pid
// through /proc/PID/mem (root may, although the daemon is not dumpable)
// and counts each needle, apart in locked memory and elsewhere. Regions
// the kernel refuses to read are skipped and reported.
func scanMemory(t *testing.T, pid int, needles []needle) (map[string]memCount, int64) {
	t.Helper()
	regions, err := readSmaps(pid)
	if err != nil {
		t.Fatal(err)
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	maxLen := 0
	for _, n := range needles {
		maxLen = max(maxLen, len(n.b))
	}
	counts := map[string]memCount{}
	where := map[string]int{} // the last needle's finds, by region
	var scanned int64
	var skipped []string
	const chunk = 4 << 20
	buf := make([]byte, chunk+maxLen)
	for _, r := range regions {
		if r.rss == 0 || !strings.HasPrefix(r.perms, "r") || r.name == "[vvar]" || r.name == "[vsyscall]" || r.name == "[vvar_vclock]" {
			continue
		}
		carry := 0 // bytes of the previous chunk kept for matches across the boundary
		for off := r.start; off < r.end; {
			n := min(uint64(chunk), r.end-off)
			m, err := mem.ReadAt(buf[carry:carry+int(n)], int64(off))
			if err != nil && !errors.Is(err, io.EOF) {
				skipped = append(skipped, fmt.Sprintf("%x-%x %s %s: %v", r.start, r.end, r.perms, r.name, err))
				break
			}
			if m == 0 {
				break
			}
			scanned += int64(m)
			data := buf[:carry+m]
			for _, nd := range needles {
				c := bytes.Count(data, nd.b)
				// A match inside the carried bytes was counted with the
				// previous chunk.
				if carry >= len(nd.b) {
					c -= bytes.Count(data[:carry], nd.b)
				}
				if c > 0 && nd.name == needles[len(needles)-1].name {
					where[fmt.Sprintf("%x-%x %s %q %v", r.start, r.end, r.perms, r.name, r.flags)] += c
				}
				if c > 0 {
					mc := counts[nd.name]
					if r.locked() {
						mc.locked += c
					} else {
						mc.other += c
					}
					counts[nd.name] = mc
				}
			}
			keep := min(maxLen-1, len(data))
			copy(buf, data[len(data)-keep:])
			carry = keep
			off += uint64(m)
		}
	}
	if len(where) > 0 {
		var b strings.Builder
		for w, c := range where {
			fmt.Fprintf(&b, "\n  %6d in %s", c, w)
		}
		t.Logf("%s found in:%s", needles[len(needles)-1].name, b.String())
	}
	if len(skipped) > 0 {
		t.Logf("memory scan skipped %d regions: %s", len(skipped), strings.Join(skipped, "; "))
	}
	return counts, scanned
}

// lockedKiB sums the locked mappings of pid.
func lockedKiB(t *testing.T, pid int) uint64 {
	regions, err := readSmaps(pid)
	if err != nil {
		t.Fatal(err)
	}
	var kb uint64
	for _, r := range regions {
		if r.locked() {
			kb += (r.end - r.start) >> 10
		}
	}
	return kb
}

func swapWords(b []byte) []byte {
	out := make([]byte, len(b))
	for i := 0; i+4 <= len(b); i += 4 {
		binary.BigEndian.PutUint32(out[i:], binary.LittleEndian.Uint32(b[i:]))
	}
	return out
}

// TestMemoryAfterLogout logs in, writes and reads marker files, logs out,
// makes a few more requests, and reads the daemon's whole memory: no copy
// of the master key, its PRK, the KEK, the Argon2 output, the password,
// any file key or the start or end of its AES key schedule (in either
// byte order) may be left anywhere. Before the logout the same scan must
// find the master key, its PRK and the file ciphers' schedules in locked
// memory, and none of the secrets anywhere else. The plaintext marker's
// count is reported before and after.
func TestMemoryAfterLogout(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("reading another process's memory needs root under CI=true")
		}
		t.Skip("reading the daemon's memory needs root")
	}
	d := newDaemon(t)
	d.bin = plainBinary(t)
	d.start()
	pid := d.cmd.Process.Pid

	var rnd [20]byte
	rand.Read(rnd[:])
	password := "memscan-pw-" + hex.EncodeToString(rnd[:8])
	marker := []byte("mountd-marker-" + hex.EncodeToString(rnd[8:])[:18])
	// The first login creates the password; after a logout the second
	// unwraps the key. Each comes on a connection of its own that stays
	// open (keep-alive) until the end, as a browser's or a client
	// library's would: what the server read from it stays in its buffers
	// unless the daemon wipes them.
	for i := 0; i < 2; i++ {
		tr := &http.Transport{}
		t.Cleanup(tr.CloseIdleConnections)
		body, _ := json.Marshal(map[string]string{"password": password})
		req, err := d.newRequest("POST", "/api/system/login", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("login: %d", resp.StatusCode)
		}
		if i == 0 {
			if r := d.logout(); r.Status != 200 {
				t.Fatalf("logout: %d %s", r.Status, r.Raw)
			}
		}
	}

	// One large file (whole blocks, large requests, prefetch) and two small
	// ones (partial blocks: read-modify-write, in-place decryption).
	files := map[string][]byte{
		"big.bin":    bytes.Repeat(marker, (1<<20)/len(marker)),
		"small.bin":  bytes.Repeat(marker, 5000/len(marker)),
		"small2.bin": bytes.Repeat(marker, 300/len(marker)),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(d.mnt, name), content, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// An update in the middle of a block, and reads of everything.
	f, err := os.OpenFile(filepath.Join(d.mnt, "small.bin"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(marker, 4100); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for name, content := range files {
		got, err := os.ReadFile(filepath.Join(d.mnt, name))
		if err != nil || !bytes.Equal(got[:100], content[:100]) || len(got) != len(content) {
			t.Fatalf("%s: read back %d bytes, %v", name, len(got), err)
		}
	}

	sec, err := crypto.Inspect(crypto.VerifierPath(d.data), []byte(password))
	if err != nil {
		t.Fatal(err)
	}
	defer sec.Wipe()
	needles := []needle{
		{"master key", sec.MasterKey},
		{"PRK", sec.PRK},
		{"KEK", sec.KEK},
		{"Argon2 output", sec.Stretched},
		{"password", []byte(password)},
	}
	kekSched, err := crypto.KeySchedule(sec.KEK)
	if err != nil {
		t.Fatal(err)
	}
	needles = append(needles, needle{"KEK schedule", kekSched[:32]}, needle{"KEK schedule end", kekSched[len(kekSched)-32:]})
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	var schedNeedles []string
	for _, name := range names {
		hb := make([]byte, crypto.HeaderSize)
		bf, err := os.Open(filepath.Join(d.data, name))
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.ReadFull(bf, hb)
		bf.Close()
		if err != nil {
			t.Fatal(err)
		}
		h, err := crypto.ParseHeader(hb)
		if err != nil {
			t.Fatal(err)
		}
		fk := sec.FileKey(h.FileID)
		sched, err := crypto.KeySchedule(fk)
		if err != nil {
			t.Fatal(err)
		}
		end := sched[len(sched)-32:]
		needles = append(needles,
			needle{name + " key", fk},
			needle{name + " key, words swapped", swapWords(fk)},
			needle{name + " schedule start", sched[:32]},
			needle{name + " schedule end", end},
			needle{name + " schedule end, words swapped", swapWords(end)})
		schedNeedles = append(schedNeedles, name+" schedule start")
	}
	secretNeedles := len(needles)
	needles = append(needles, needle{"plaintext marker", marker})

	report := func(when string, counts map[string]memCount, scanned int64) {
		var b strings.Builder
		for _, n := range needles {
			c := counts[n.name]
			fmt.Fprintf(&b, "\n  %-40s locked %4d  elsewhere %6d", n.name, c.locked, c.other)
		}
		t.Logf("%s: scanned %d MiB of the daemon's memory (%d KiB locked):%s", when, scanned>>20, lockedKiB(t, pid), b.String())
	}

	before, scanned := scanMemory(t, pid, needles)
	report("before logout", before, scanned)
	for _, n := range needles[:secretNeedles] {
		if c := before[n.name]; c.other > 0 {
			t.Errorf("before logout: %d copies of the %s outside locked memory", c.other, n.name)
		}
	}
	// The scan finds what is there: the key page and the cached ciphers.
	for _, name := range append([]string{"master key", "PRK"}, schedNeedles...) {
		if before[name].locked == 0 {
			t.Errorf("before logout: the %s is not in locked memory: the scan or the test is broken", name)
		}
	}

	if r := d.logout(); r.Status != 200 {
		t.Fatalf("logout: %d %s", r.Status, r.Raw)
	}
	// A few requests after the logout: status, a failed read, a directory
	// listing.
	d.status(false)
	if _, err := os.ReadFile(filepath.Join(d.mnt, "big.bin")); !errors.Is(err, syscall.EACCES) {
		t.Fatalf("read after logout: %v, want EACCES", err)
	}
	if _, err := os.ReadDir(d.mnt); err != nil {
		t.Fatal(err)
	}
	d.status(true)

	after, scanned := scanMemory(t, pid, needles)
	report("after logout", after, scanned)
	for _, n := range needles[:secretNeedles] {
		if c := after[n.name]; c.locked+c.other > 0 {
			t.Errorf("after logout: %d copies of the %s in memory (%d locked)", c.locked+c.other, n.name, c.locked)
		}
	}
	t.Logf("plaintext marker: %d copies before logout, %d after", before["plaintext marker"].locked+before["plaintext marker"].other,
		after["plaintext marker"].locked+after["plaintext marker"].other)
}

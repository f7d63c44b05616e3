package fs

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"

	"github.com/mountd/mountd/crypto"
)

// TestModel runs tens of thousands of seeded random operations on several
// encrypted files at once (pwrite, append, truncate, read, reopen, rename;
// offsets and sizes clustered around 4 KiB block boundaries) and compares
// every read and size with an in-memory model. MOUNTD_MODEL_SEED and
// MOUNTD_MODEL_OPS override the seed and the operation count.
func TestModel(t *testing.T) {
	seed := uint64(20261202)
	if s := os.Getenv("MOUNTD_MODEL_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	ops := 30000
	if testing.Short() {
		ops = 5000
	}
	if s := os.Getenv("MOUNTD_MODEL_OPS"); s != "" {
		ops, _ = strconv.Atoi(s)
	}
	runModel(t, seed, ops)
}

// runModel runs the model's ops operations from seed on a fresh mount.
func runModel(t *testing.T, seed uint64, ops int) {
	t.Logf("seed %d, %d operations", seed, ops)
	e := newEnv(t, envOpts{timeout: 5 * 60e9})
	m := newModel(t, e, rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)))
	defer m.closeAll()
	for i := 0; i < ops && !t.Failed(); i++ {
		m.step(i)
	}
	m.verifyAll("end")
	t.Logf("ops: %v", m.counts)
	for name := range m.files {
		raw := e.backingBytes(name)
		if !crypto.HasMagic(raw) {
			t.Errorf("%s: not encrypted on disk", name)
		}
		h, _ := crypto.ParseHeader(raw)
		if ps, err := h.PlainSize(int64(len(raw))); err != nil || ps != int64(len(m.files[name])) {
			t.Errorf("%s: backing size %d maps to %d (%v), model has %d", name, len(raw), ps, err, len(m.files[name]))
		}
	}
}

type model struct {
	t      *testing.T
	e      *testEnv
	rng    *rand.Rand
	files  map[string][]byte   // name -> expected content
	fds    map[string]*os.File // name -> open read-write descriptor
	apps   map[string]*os.File // name -> open O_APPEND descriptor
	names  []string
	nextID int
	counts map[string]int
}

const modelFiles = 5

func newModel(t *testing.T, e *testEnv, rng *rand.Rand) *model {
	m := &model{t: t, e: e, rng: rng, files: map[string][]byte{}, fds: map[string]*os.File{},
		apps: map[string]*os.File{}, counts: map[string]int{}}
	for i := 0; i < modelFiles; i++ {
		m.create()
	}
	return m
}

func (m *model) create() {
	name := fmt.Sprintf("f%03d.bin", m.nextID)
	m.nextID++
	f, err := os.OpenFile(m.e.m(name), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		m.t.Fatalf("create %s: %v", name, err)
	}
	m.files[name] = nil
	m.fds[name] = f
	m.names = append(m.names, name)
}

// offset picks an offset near a block boundary, sometimes past the end.
func (m *model) offset(size int) int {
	switch m.rng.IntN(4) {
	case 0:
		return m.rng.IntN(size + 1)
	case 1:
		return size
	default:
		blocks := (size+8192)/crypto.BlockSize + 1
		off := m.rng.IntN(blocks)*crypto.BlockSize + m.rng.IntN(65) - 32
		return max(off, 0)
	}
}

// length picks a length, often just around a block size.
func (m *model) length() int {
	switch m.rng.IntN(4) {
	case 0:
		return 1 + m.rng.IntN(16)
	case 1:
		return crypto.BlockSize + m.rng.IntN(65) - 32
	case 2:
		return 1 + m.rng.IntN(3*crypto.BlockSize)
	default:
		return 1 + m.rng.IntN(40000)
	}
}

func (m *model) randomBytes(n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := m.rng.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

func (m *model) step(i int) {
	name := m.names[m.rng.IntN(len(m.names))]
	f := m.fds[name]
	cur := m.files[name]
	op := m.rng.IntN(100)
	switch {
	case op < 35: // pwrite
		off, n := m.offset(len(cur)), m.length()
		data := m.randomBytes(n)
		if _, err := f.WriteAt(data, int64(off)); err != nil {
			m.t.Fatalf("op %d: pwrite %s [%d,+%d): %v", i, name, off, n, err)
		}
		if need := off + n; need > len(cur) {
			cur = append(cur, make([]byte, need-len(cur))...)
		}
		copy(cur[off:], data)
		m.files[name] = cur
		m.counts["pwrite"]++
	case op < 45: // append through an O_APPEND descriptor
		a := m.apps[name]
		if a == nil {
			var err error
			if a, err = os.OpenFile(m.e.m(name), os.O_WRONLY|os.O_APPEND, 0); err != nil {
				m.t.Fatalf("op %d: open append %s: %v", i, name, err)
			}
			m.apps[name] = a
		}
		data := m.randomBytes(m.length())
		if _, err := a.Write(data); err != nil {
			m.t.Fatalf("op %d: append %s: %v", i, name, err)
		}
		m.files[name] = append(cur, data...)
		m.counts["append"]++
	case op < 55: // truncate, through the fd or the path
		size := m.offset(len(cur))
		if m.rng.IntN(2) == 0 {
			size = max(0, size-m.rng.IntN(2*crypto.BlockSize))
		}
		var err error
		if m.rng.IntN(2) == 0 {
			err = f.Truncate(int64(size))
		} else {
			err = os.Truncate(m.e.m(name), int64(size))
		}
		if err != nil {
			m.t.Fatalf("op %d: truncate %s to %d: %v", i, name, size, err)
		}
		if size <= len(cur) {
			cur = cur[:size]
		} else {
			cur = append(cur, make([]byte, size-len(cur))...)
		}
		m.files[name] = cur
		m.counts["truncate"]++
	case op < 85: // read
		off, n := m.offset(len(cur)), m.length()
		buf := make([]byte, n)
		got, err := f.ReadAt(buf, int64(off))
		if err != nil && got == n {
			m.t.Fatalf("op %d: pread %s: %v", i, name, err)
		}
		want := []byte{}
		if off < len(cur) {
			want = cur[off:min(off+n, len(cur))]
		}
		if got != len(want) || !bytes.Equal(buf[:got], want) {
			m.t.Fatalf("op %d: pread %s [%d,+%d): got %d bytes, want %d (mismatch at %d)",
				i, name, off, n, got, len(want), firstDiff(buf[:got], want))
		}
		m.counts["read"]++
	case op < 92: // reopen
		f.Close()
		if a := m.apps[name]; a != nil {
			a.Close()
			delete(m.apps, name)
		}
		nf, err := os.OpenFile(m.e.m(name), os.O_RDWR, 0)
		if err != nil {
			m.t.Fatalf("op %d: reopen %s: %v", i, name, err)
		}
		m.fds[name] = nf
		m.verify(name, fmt.Sprintf("op %d reopen", i))
		m.counts["reopen"]++
	case op < 97: // rename (with the file open)
		to := fmt.Sprintf("f%03d.bin", m.nextID)
		m.nextID++
		if err := os.Rename(m.e.m(name), m.e.m(to)); err != nil {
			m.t.Fatalf("op %d: rename %s: %v", i, name, err)
		}
		m.files[to], m.fds[to] = cur, f
		if a := m.apps[name]; a != nil {
			m.apps[to] = a
			delete(m.apps, name)
		}
		delete(m.files, name)
		delete(m.fds, name)
		for k, v := range m.names {
			if v == name {
				m.names[k] = to
			}
		}
		m.counts["rename"]++
	default: // stat
		fi, err := os.Stat(m.e.m(name))
		if err != nil {
			m.t.Fatalf("op %d: stat %s: %v", i, name, err)
		}
		if fi.Size() != int64(len(cur)) {
			m.t.Fatalf("op %d: stat %s: size %d, want %d", i, name, fi.Size(), len(cur))
		}
		m.counts["stat"]++
	}
	if i%2000 == 1999 {
		m.verifyAll(fmt.Sprintf("op %d", i))
	}
}

func (m *model) verify(name, when string) {
	got, err := os.ReadFile(m.e.m(name))
	if err != nil {
		m.t.Fatalf("%s: read %s: %v", when, name, err)
	}
	if want := m.files[name]; !bytes.Equal(got, want) {
		m.t.Fatalf("%s: %s: %d bytes, want %d (first difference at %d)", when, name, len(got), len(want), firstDiff(got, want))
	}
}

func (m *model) verifyAll(when string) {
	for name := range m.files {
		m.verify(name, when)
	}
}

func (m *model) closeAll() {
	for _, f := range m.fds {
		f.Close()
	}
	for _, f := range m.apps {
		f.Close()
	}
}

func firstDiff(a, b []byte) int {
	for i := 0; i < min(len(a), len(b)); i++ {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

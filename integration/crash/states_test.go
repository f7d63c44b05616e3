package crash

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
)

// Crash states. A disk with a volatile write cache makes durable, at a
// flush, every write that completed before it; between two flushes it may
// persist any subset of the writes, in any order, and a write that spans
// several atomic units (sectors) may persist only some of them. So a
// power cut leaves: everything up to some flush, plus any subset of the
// writes that followed it, each whole or torn at sector boundaries.
//
// The states checked are, for the writes between two flushes:
//   - prefix: the first k of them, in order (the disk persisted in order),
//   - torn: the first k, then some sectors of the next one,
//   - subset: a random subset of them, the last one perhaps torn.

// ack is one acknowledged operation of a workload: an fsync (or fdatasync,
// synced rename, a reply of the control plane) that returned. flush is the
// index in the log of the last flush when it returned: every crash state
// that includes that flush must show what was acknowledged.
type ack struct {
	flush int
	v     any
}

// recording is the outcome of running a workload on the recorder.
type recording struct {
	base       *image  // the disk before the recording
	events     []event // what was written, and the flushes
	start, end int     // the workload's part of the log
	acks       []ack
}

// part is a write of the log applied to a crash state: whole (mask nil) or
// only the atomic units whose mask bit is set.
type part struct {
	ev   int
	mask []bool
}

// crashState is a disk image described by its writes: the first prefix
// events of the log in full, then the parts in order.
type crashState struct {
	kind   string // prefix, torn, subset
	desc   string
	flush  int // index of the last flush in full: acks up to it hold
	prefix int
	parts  []part
}

// units returns how many atomic units of size unit the write e covers.
func units(e event, unit int) int {
	first := e.off / int64(unit)
	last := (e.off + int64(len(e.data)) - 1) / int64(unit)
	return int(last - first + 1)
}

// apply writes e into im, only the units in mask when it is not nil.
func apply(im *image, e event, mask []bool, unit int) {
	if mask == nil {
		im.write(e.off, e.data)
		return
	}
	u := int64(unit)
	base := e.off / u * u
	for i, keep := range mask {
		if !keep {
			continue
		}
		lo := max(base+int64(i)*u, e.off)
		hi := min(base+int64(i+1)*u, e.off+int64(len(e.data)))
		im.write(lo, e.data[lo-e.off:hi-e.off])
	}
}

// tornMasks returns a few ways of persisting only part of an n-unit write.
func tornMasks(n int, rng *rand.Rand) [][]bool {
	if n < 2 {
		return nil
	}
	mk := func(f func(i int) bool) []bool {
		m := make([]bool, n)
		for i := range m {
			m[i] = f(i)
		}
		return m
	}
	masks := [][]bool{
		mk(func(i int) bool { return i < n/2 }),  // the first half
		mk(func(i int) bool { return i >= n/2 }), // the second half
	}
	if n > 2 {
		m := mk(func(int) bool { return rng.IntN(2) == 0 })
		m[rng.IntN(n)] = true
		m[rng.IntN(n)] = false
		masks = append(masks, m)
	}
	return masks
}

func maskString(m []bool) string {
	var b strings.Builder
	for _, k := range m {
		if k {
			b.WriteByte('1')
		} else {
			b.WriteByte('0')
		}
	}
	return b.String()
}

// genStates lists the crash states of the workload part of rec, at most
// max of them (a deterministic sample, spread over the three kinds, when
// there are more).
func genStates(rec *recording, unit, maxStates int, seed uint64) []crashState {
	rng := rand.New(rand.NewPCG(seed, 0x6d6f756e7464))
	ev := rec.events
	// The epoch before the workload starts at the last flush before it.
	f := -1
	for i := rec.start - 1; i >= 0; i-- {
		if ev[i].isFlush() {
			f = i
			break
		}
	}
	var prefix, torn, subset []crashState
	for f < rec.end {
		// Writes of this epoch: up to the next flush (or the end).
		var w []int
		g := f + 1
		for ; g < rec.end && !ev[g].isFlush(); g++ {
			w = append(w, g)
		}
		last := g >= rec.end
		after := f + 1 // events[0:after] are the state at the flush
		for k := 0; k < len(w) || (last && k == len(w)); k++ {
			p := after
			if k > 0 {
				p = w[k-1] + 1
			}
			prefix = append(prefix, crashState{kind: "prefix", flush: f, prefix: p,
				desc: fmt.Sprintf("flush@%d + %d of %d writes", f, k, len(w))})
		}
		for k, i := range w {
			for _, m := range tornMasks(units(ev[i], unit), rng) {
				torn = append(torn, crashState{kind: "torn", flush: f, prefix: i, parts: []part{{ev: i, mask: m}},
					desc: fmt.Sprintf("flush@%d + %d of %d writes + write@%d (%d bytes at %d) torn %s", f, k, len(w), i, len(ev[i].data), ev[i].off, maskString(m))})
			}
		}
		if len(w) >= 2 {
			for s := 0; s < 2; s++ {
				var parts []part
				var names []string
				for _, i := range w {
					if rng.IntN(2) == 0 {
						parts = append(parts, part{ev: i})
						names = append(names, fmt.Sprint(i))
					}
				}
				if len(parts) == 0 {
					continue
				}
				lp := &parts[len(parts)-1]
				if ms := tornMasks(units(ev[lp.ev], unit), rng); len(ms) > 0 && rng.IntN(2) == 0 {
					lp.mask = ms[rng.IntN(len(ms))]
					names[len(names)-1] += " torn " + maskString(lp.mask)
				}
				subset = append(subset, crashState{kind: "subset", flush: f, prefix: after, parts: parts,
					desc: fmt.Sprintf("flush@%d + writes {%s} of %d", f, strings.Join(names, ", "), len(w))})
			}
		}
		f = g
	}
	all := sample(rng, maxStates, prefix, torn, subset)
	sort.SliceStable(all, func(i, j int) bool { return all[i].prefix < all[j].prefix })
	return all
}

// sample returns at most n of the states in the groups, the same share
// from each group as far as they have enough.
func sample(rng *rand.Rand, n int, groups ...[]crashState) []crashState {
	total := 0
	for _, g := range groups {
		total += len(g)
	}
	if total <= n {
		var all []crashState
		for _, g := range groups {
			all = append(all, g...)
		}
		return all
	}
	// Fill the smallest groups first, then share what is left.
	order := make([]int, len(groups))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool { return len(groups[order[a]]) < len(groups[order[b]]) })
	var all []crashState
	left := n
	for k, gi := range order {
		g := groups[gi]
		take := min(len(g), left/(len(order)-k))
		perm := rng.Perm(len(g))[:take]
		sort.Ints(perm)
		for _, i := range perm {
			all = append(all, g[i])
		}
		left -= take
	}
	return all
}

// builder makes the images of states sorted by prefix, applying the log
// once.
type builder struct {
	rec  *recording
	unit int
	cur  *image
	pos  int
}

func newBuilder(rec *recording, unit int) *builder {
	return &builder{rec: rec, unit: unit, cur: rec.base.clone()}
}

func (b *builder) image(st crashState) *image {
	for ; b.pos < st.prefix; b.pos++ {
		if e := b.rec.events[b.pos]; !e.isFlush() {
			apply(b.cur, e, nil, b.unit)
		}
	}
	im := b.cur.clone()
	for _, p := range st.parts {
		apply(im, b.rec.events[p.ev], p.mask, b.unit)
	}
	return im
}

// acked returns the acknowledgements that hold in st.
func (rec *recording) acked(st crashState) []ack {
	var out []ack
	for _, a := range rec.acks {
		if a.flush <= st.flush {
			out = append(out, a)
		}
	}
	return out
}

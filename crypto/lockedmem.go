package crypto

import (
	"sync"
	"sync/atomic"
)

// Locked memory for key material.
//
// Everything secret the package computes lives in anonymous mappings that
// are mlocked (never swapped: not in swap, not in a hibernation image) and
// marked MADV_DONTDUMP (not in a core dump), and is zeroed when dropped:
//
//   - the Keyring's page: the master key, its HKDF PRK, and the staging
//     area a key is unwrapped or generated into;
//   - scratch pages (getSecretPage): the working memory of one derivation
//     (HMAC pads and messages, a file key before it is expanded, the
//     Argon2 output, the KEK and its cipher), zeroed when put back;
//   - a Keyring's cipher slots (slotArena): one AES-256-GCM instance per
//     cached file key, its round keys and GHASH table, zeroed when the
//     cache is dropped (full, or at logout).
//
// Slots are allocated from chunks of chunkSlots; how many a Keyring may
// use follows RLIMIT_MEMLOCK (cacheSlots). A mapping that cannot be locked
// (the limit is reached) is still used, still excluded from core dumps and
// still zeroed; MemoryLocked reports it.

const (
	// slotSize holds one AES-256-GCM instance (760 bytes with Go 1.26 on
	// amd64; checked at run time by gcmLayout).
	slotSize   = 1024
	chunkSlots = 64 // 64 KiB per chunk

	// minCacheSlots and maxCacheSlots bound the cipher cache of a Keyring:
	// at most 1 MiB of locked memory by default.
	minCacheSlots = 16
	maxCacheSlots = 1024
	// memlockReserve is what the key page and scratch pages may need,
	// kept out of the cache's share of RLIMIT_MEMLOCK.
	memlockReserve = 64 << 10
	// maxFreePages bounds the scratch pages kept for reuse.
	maxFreePages = 8
)

// cacheSlots is the number of cipher slots a Keyring may use: what
// RLIMIT_MEMLOCK leaves after memlockReserve, within [minCacheSlots,
// maxCacheSlots].
func cacheSlots() int {
	lim := memlockLimit()
	n := maxCacheSlots
	if lim < uint64(memlockReserve+maxCacheSlots*slotSize) {
		n = max(int((int64(lim)-memlockReserve)/slotSize), minCacheSlots)
	}
	return n
}

// lockedBytes and unlockedMaps count the package's secret mappings, for
// MemoryLocked and LockedBytes.
var (
	lockedBytes  atomic.Int64
	unlockedMaps atomic.Int64
)

// secretMap maps size bytes for secrets (allocSecret) and accounts for
// them.
func secretMap(size int) (b []byte, locked bool) {
	b, locked = allocSecret(size)
	if locked {
		lockedBytes.Add(int64(size))
	} else {
		unlockedMaps.Add(1)
	}
	return b, locked
}

// secretUnmap zeroes and unmaps memory from secretMap.
func secretUnmap(b []byte, locked bool) {
	if locked {
		lockedBytes.Add(-int64(len(b)))
	} else {
		unlockedMaps.Add(-1)
	}
	freeSecret(b)
}

// scratch pages.
var secretPool struct {
	mu   sync.Mutex
	free [][]byte
}

// secretPage is one page of locked working memory.
type secretPage struct {
	b      []byte
	locked bool
}

// getSecretPage returns a zeroed page of locked memory (pageSize bytes).
// Give it back with putSecretPage.
func getSecretPage() secretPage {
	secretPool.mu.Lock()
	if n := len(secretPool.free); n > 0 {
		b := secretPool.free[n-1]
		secretPool.free = secretPool.free[:n-1]
		secretPool.mu.Unlock()
		return secretPage{b: b, locked: true}
	}
	secretPool.mu.Unlock()
	b, locked := secretMap(pageSize)
	return secretPage{b: b, locked: locked}
}

// putSecretPage zeroes p and keeps it for reuse (or unmaps it).
func putSecretPage(p secretPage) {
	clear(p.b)
	if p.locked {
		secretPool.mu.Lock()
		if len(secretPool.free) < maxFreePages {
			secretPool.free = append(secretPool.free, p.b)
			secretPool.mu.Unlock()
			return
		}
		secretPool.mu.Unlock()
	}
	secretUnmap(p.b, p.locked)
}

// slotArena hands out fixed-size slots of locked memory, up to a limit.
// It is not safe for concurrent use (the Keyring serializes it).
type slotArena struct {
	limit  int
	chunks []arenaChunk
	free   [][]byte // zeroed slots
	used   int
}

type arenaChunk struct {
	b      []byte
	locked bool
}

func newSlotArena(limit int) *slotArena { return &slotArena{limit: limit} }

// alloc returns a zeroed slot of slotSize bytes, or nil when limit slots
// are in use.
func (a *slotArena) alloc() []byte {
	if a.used >= a.limit {
		return nil
	}
	if len(a.free) == 0 {
		n := min(chunkSlots, a.limit-len(a.chunks)*chunkSlots)
		if n <= 0 {
			return nil
		}
		b, locked := secretMap(n * slotSize)
		a.chunks = append(a.chunks, arenaChunk{b: b, locked: locked})
		for i := n - 1; i >= 0; i-- {
			a.free = append(a.free, b[i*slotSize:(i+1)*slotSize:(i+1)*slotSize])
		}
	}
	s := a.free[len(a.free)-1]
	a.free = a.free[:len(a.free)-1]
	a.used++
	return s
}

// put zeroes slot s and makes it free.
func (a *slotArena) put(s []byte) {
	clear(s)
	a.free = append(a.free, s)
	a.used--
}

// release zeroes and unmaps every chunk. No slot may be in use any more.
func (a *slotArena) release() {
	for _, c := range a.chunks {
		secretUnmap(c.b, c.locked)
	}
	a.chunks, a.free, a.used = nil, nil, 0
}

// allLocked reports whether every chunk is locked.
func (a *slotArena) allLocked() bool {
	for _, c := range a.chunks {
		if !c.locked {
			return false
		}
	}
	return true
}

// LockedBytes reports how much memory the package holds locked right now
// (key pages, scratch pages, cipher slots), and whether some of its secret
// memory could not be locked (RLIMIT_MEMLOCK reached).
func LockedBytes() (locked int64, someUnlocked bool) {
	return lockedBytes.Load(), unlockedMaps.Load() > 0
}

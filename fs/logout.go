package fs

import (
	"syscall"
)

// Logout invalidation: the filesystem's part of the logout chain, which
// doc.go describes whole (with the lock order).
//
// Every operation that hands plaintext of an encrypted file to the kernel
// (or writes it through a page the kernel may cache) first records its node
// in Root.served, while holding Root.gate for reading, and keeps the gate
// until the crypto call returns. The Keyring's Clear marks itself locked,
// waits for crypto calls in flight, then runs onClear, which takes the gate
// for writing (so every recording operation has finished), swaps the set
// out, and asks the kernel to drop the pages and mappings of each recorded
// inode (NotifyContent(0, 0)) before Clear zeroes the key and returns.
//
// A reply still on its way to the kernel is covered too: a read into the
// page cache keeps its page locked until the reply arrives, and the
// kernel's invalidation waits for locked pages. Direct-I/O reads do not go
// through the page cache at all. Plaintext the daemon decrypted ahead of a
// sequential reader (prefetch.go) is discarded and zeroed here too. Any operation that starts after Clear
// marked the Keyring locked fails with ErrLocked (EACCES).

// markServed records that n's plaintext may reach the kernel during the
// current key epoch. Caller holds r.gate for reading.
func (r *Root) markServed(n *node) {
	e := r.epoch + 1
	if n.servedEpoch.Load() == e {
		return
	}
	r.servedMu.Lock()
	r.served[n] = struct{}{}
	n.servedEpoch.Store(e)
	r.servedMu.Unlock()
}

// beforeClear is the Keyring's OnBeforeClear listener: flush, then lock.
// It runs at the start of a logout, while the key is still set but reads
// of content already fail (Keyring.LogoutPending), in the goroutine that
// calls Clear. It takes gate for writing, so every plaintext-serving call
// that got past the Keyring has finished, copies the served set, discards
// the prefetched plaintext, and then asks the kernel to drop the pages of
// each served inode (NotifyContent(0, 0)), holding no filesystem lock: the
// kernel first writes back the dirty pages of shared mappings (WRITE
// requests this daemon still encrypts under the key) and unmaps them. No
// page comes back before the lock, since a fault needs a read and reads
// fail; what an application writes into a mapping after that faults
// (SIGBUS), it is never silently dropped. A write-back that fails
// (a full disk) is logged with the path by Write and recorded by the
// kernel on the file, so the next fsync or msync reports it.
func (r *Root) beforeClear() {
	r.gate.Lock()
	r.servedMu.Lock()
	served := make([]*node, 0, len(r.served))
	for n := range r.served {
		served = append(served, n)
	}
	r.servedMu.Unlock()
	r.gate.Unlock()
	r.clearPrefetches()
	r.notifyAll(served, "cannot write back and drop cached plaintext before logout")
	r.log.WithField("inodes", len(served)).Debug("wrote back and dropped cached plaintext before logout")
}

// notifyAll asks the kernel to drop the cached pages and mappings of each
// node (writing back dirty pages first). Caller holds no filesystem lock.
func (r *Root) notifyAll(nodes []*node, warn string) {
	for _, n := range nodes {
		errno := n.NotifyContent(0, 0)
		switch errno {
		case 0, syscall.ENOENT, syscall.ENOSYS:
			// ENOENT: the kernel forgot the inode, so it caches nothing.
			// ENOSYS: not mounted (yet, or any more).
		default:
			r.log.WithField(fieldIno, n.StableAttr().Ino).WithError(errno).Warn(warn)
		}
	}
}

// onClear is the Keyring's OnClear listener. It runs in the goroutine that
// calls Clear (never a FUSE handler), holding no filesystem lock while it
// talks to the kernel.
func (r *Root) onClear() {
	r.gate.Lock()
	r.servedMu.Lock()
	served := r.served
	r.served = map[*node]struct{}{}
	r.servedMu.Unlock()
	r.epoch++
	r.gate.Unlock()
	r.clearPrefetches()

	nodes := make([]*node, 0, len(served))
	for n := range served {
		nodes = append(nodes, n)
	}
	r.notifyAll(nodes, "cannot drop cached plaintext after logout")
	r.log.WithField("inodes", len(served)).Debug("dropped cached plaintext after logout")
}

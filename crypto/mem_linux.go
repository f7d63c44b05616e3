package crypto

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// madvDontDump is MADV_DONTDUMP from <linux/mman.h>; the syscall package
// does not export it.
const madvDontDump = 0x10

// allocSecret returns anonymous memory for key material: locked in RAM
// (never swapped) and excluded from core dumps where the kernel allows
// it. locked reports whether mlock succeeded (it can fail under a low
// RLIMIT_MEMLOCK); the memory is usable either way. It is never Go heap
// memory: the garbage collector neither scans nor moves it.
func allocSecret(size int) (b []byte, locked bool) {
	b, err := syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		return make([]byte, size), false
	}
	_ = syscall.Madvise(b, madvDontDump)
	return b, syscall.Mlock(b) == nil
}

// freeSecret zeroes and releases memory from allocSecret.
func freeSecret(b []byte) {
	clear(b)
	_ = syscall.Munlock(b)
	_ = syscall.Munmap(b)
}

// memlockLimit returns RLIMIT_MEMLOCK's soft limit in bytes (the largest
// uint64 when unlimited or unknown).
func memlockLimit() uint64 {
	var r unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &r); err != nil || r.Cur == unix.RLIM_INFINITY {
		return ^uint64(0)
	}
	return r.Cur
}

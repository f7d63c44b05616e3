package crypto

import "syscall"

// madvDontDump is MADV_DONTDUMP from <linux/mman.h>; the syscall package
// does not export it.
const madvDontDump = 0x10

// allocSecret returns a page of anonymous memory for key material: locked
// in RAM (never swapped) and excluded from core dumps where the kernel
// allows it. locked reports whether mlock succeeded (it can fail under a
// low RLIMIT_MEMLOCK); the memory is usable either way.
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

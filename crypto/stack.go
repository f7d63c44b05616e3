package crypto

import (
	"sync/atomic"
	"unsafe"
)

// Secrets on goroutine stacks.
//
// Key derivations hash key material with crypto/sha256 and expand AES keys
// with crypto/aes. Their inputs and outputs live in locked memory (see
// lockedmem.go), but their working state (a SHA-256 chaining value after
// the HMAC pad block, which is worth the key; a digest's output; the
// Argon2 hash of the password) lands on the stack of the goroutine that
// runs them, and a stack is ordinary memory: returning from a function
// leaves its frame as it was, and when the runtime moves a goroutine's
// stack (to grow or shrink it) the old one goes back to a pool unzeroed.
//
// onCleanStack runs such code on a goroutine of its own whose stack is
// grown to its final size before the code starts, kept from shrinking
// while it runs (a stack is only shrunk when less than a quarter of it is
// in use; the goroutine's first frame is that quarter), and zeroed below
// that frame when the code returns, before the goroutine ends and its
// stack is freed. The code must stay within stackWork bytes of stack (the
// SHA-256, AES and Argon2 calls take a few KiB); TestCleanStackScrubs
// checks that a secret written by it is gone afterwards.
//
// Registers that a signal handler saved while the code ran (on the
// thread's signal stack) are not wiped: Go gives no way to reach them.

const (
	// stackFloor is the first frame's size: at least a quarter of the
	// final stack, so the runtime never shrinks it while the code runs.
	stackFloor = 16 << 10
	// stackWork is the room below the first frame: the code's frames and
	// the scrub, which zeroes all of it.
	stackWork = 40 << 10
)

// stackIdx is read by keepStack so the compiler cannot drop the arrays
// whose zeroing is the point.
var stackIdx int

//go:noinline
func keepStack(b []byte) byte { return b[stackIdx%len(b)] }

// growStack makes the stack big enough for stackWork below the caller's
// frame, so the code that follows never makes it move.
//
//go:noinline
func growStack() byte {
	var b [stackWork]byte
	return keepStack(b[:])
}

// scrubStack zeroes stackWork bytes below the caller's frame: the frames
// of everything the caller called before.
//
//go:noinline
func scrubStack() byte {
	var b [stackWork]byte
	return keepStack(b[:])
}

// onCleanStack runs f on a fresh goroutine whose stack does not move while
// f runs and is zeroed where f used it when f returns, and waits for it.
// A panic in f is re-raised in the caller.
func onCleanStack(f func()) {
	done := make(chan any, 1)
	go cleanStackMain(f, done)
	if p := <-done; p != nil {
		panic(p)
	}
}

// stackMoves counts runs of onCleanStack during which the runtime moved
// the stack anyway (tests check it stays zero).
var stackMoves atomic.Int64

// cleanStackHook, when set (by tests), runs on the goroutine right after
// the scrub.
var cleanStackHook func()

//go:noinline
func cleanStackMain(f func(), done chan<- any) {
	var floor [stackFloor]byte
	growStack()
	at := uintptr(unsafe.Pointer(&floor[0]))
	p := runRecovering(f)
	if uintptr(unsafe.Pointer(&floor[0])) != at {
		stackMoves.Add(1)
	}
	scrubStack()
	if cleanStackHook != nil {
		cleanStackHook()
	}
	keepStack(floor[:])
	done <- p
}

//go:noinline
func runRecovering(f func()) (p any) {
	defer func() { p = recover() }()
	f()
	return nil
}

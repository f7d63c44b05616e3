package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Secrets in the client and the offline commands.
//
// A password, a recovery key, and a request body that carries them live
// in one anonymous mapping that is mlocked (never swapped) and excluded
// from core dumps (secretAlloc), never in a buffer that grows (each is
// allocated at its final size), and are zeroed by their user after use.
// A terminal prompt reads into that memory itself (readNoEcho): x/term's
// ReadPassword builds the line by appending, leaving copies in every
// buffer it outgrew. The daemon's own key material is crypto's business.

// secretArenaSize is enough for the largest command: the secret source's
// read-ahead, a few secrets and a request body (at most 64 KiB, what the
// API takes); past it, secretAlloc falls back to the heap. Pages are
// locked as they are first used (MLOCK_ONFAULT), so it costs only what is
// used.
const secretArenaSize = 2 << 20

var secretArena struct {
	mu     sync.Mutex
	mem    []byte
	used   int
	failed bool // no mapping: the heap is used
}

// secretAlloc returns n zeroed bytes of locked memory, or of the heap when
// that cannot be had (the mapping failed or is used up). The caller zeroes
// them after use; they are not reused.
func secretAlloc(n int) []byte {
	a := &secretArena
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.mem == nil && !a.failed {
		b, err := unix.Mmap(-1, 0, secretArenaSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			a.failed = true
		} else {
			_ = unix.Madvise(b, unix.MADV_DONTDUMP)
			// Best effort: RLIMIT_MEMLOCK may refuse.
			if _, _, e := unix.Syscall(unix.SYS_MLOCK2, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), unix.MLOCK_ONFAULT); e != 0 {
				_ = unix.Mlock(b)
			}
			a.mem = b
		}
	}
	if a.mem == nil || a.used+n > len(a.mem) {
		return make([]byte, n)
	}
	b := a.mem[a.used : a.used+n : a.used+n]
	a.used += (n + 63) &^ 63
	return b
}

// secretBytes copies b into secretAlloc memory.
func secretBytes(b []byte) []byte {
	s := secretAlloc(len(b))
	copy(s, b)
	return s
}

// errNoSecret is a terminal that ended (Ctrl-D) before a line.
var errNoSecret = errors.New("no input")

// readNoEcho reads one line from the terminal tty with echo off, into
// secret memory, without its line end. A line longer than limit is an
// error (errSecretTooLong). The terminal's settings are restored afterwards, also
// when the command is interrupted (Ctrl-C), which then exits with 130.
// echoOff, if set (by tests), runs once readNoEcho has turned the
// terminal's echo off: typing is safe from then on.
var echoOff func()

func readNoEcho(tty *os.File, limit int) ([]byte, error) {
	fd := int(tty.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, err
	}
	t := *old
	t.Lflag &^= unix.ECHO
	t.Lflag |= unix.ICANON | unix.ISIG
	t.Iflag |= unix.ICRNL
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &t); err != nil {
		return nil, err
	}
	if echoOff != nil {
		echoOff()
	}
	restore := func() { _ = unix.IoctlSetTermios(fd, unix.TCSETS, old) }
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		select {
		case <-sigs:
			restore()
			fmt.Fprintln(os.Stderr)
			os.Exit(130)
		case <-done:
		}
	}()
	defer func() {
		signal.Stop(sigs)
		close(done)
		restore()
	}()

	// A canonical terminal hands over at most a line per read; +2 leaves
	// room to see that a line is too long.
	buf := secretAlloc(limit + 2)
	n := 0
	for {
		if n == len(buf) {
			clear(buf)
			return nil, errSecretTooLong
		}
		k, err := unix.Read(fd, buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			clear(buf)
			return nil, err
		}
		if k == 0 {
			if n == 0 {
				return nil, fmt.Errorf("%w (%w)", errNoSecret, io.EOF)
			}
			break // end of input after a partial line
		}
		n += k
		if buf[n-1] == '\n' {
			n--
			break
		}
	}
	if n > 0 && buf[n-1] == '\r' {
		n--
	}
	if n > limit {
		clear(buf)
		return nil, errSecretTooLong
	}
	clear(buf[n:])
	return buf[:n:n], nil
}

package integration

import (
	"encoding/binary"
	"errors"
	"os"
	"sync"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// openGate holds one open of a file by one process in the kernel
// (fanotify FAN_OPEN_PERM) until the test releases it: a throttle that
// needs nothing of the daemon and no sleep. The daemon's open simply
// does not return meanwhile.
type openGate struct {
	f       *os.File
	held    chan struct{} // closed once the open is being held
	release chan struct{}
	once    sync.Once
	done    chan struct{}
}

// gateOpen lets the first skip opens of path by pid through and holds
// the next one until Release; the ones after pass. It needs root
// (CAP_SYS_ADMIN); under CI=true a missing fanotify fails the test.
func gateOpen(t *testing.T, path string, pid, skip int) *openGate {
	t.Helper()
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_CONTENT|unix.FAN_CLOEXEC|unix.FAN_NONBLOCK, unix.O_RDONLY|unix.O_LARGEFILE)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("fanotify: %v", err)
		}
		t.Skipf("fanotify: %v", err)
	}
	if err := unix.FanotifyMark(fd, unix.FAN_MARK_ADD, unix.FAN_OPEN_PERM, unix.AT_FDCWD, path); err != nil {
		unix.Close(fd)
		t.Fatalf("fanotify mark %s: %v", path, err)
	}
	g := &openGate{
		f:    os.NewFile(uintptr(fd), "fanotify"), // non-blocking: Close ends a Read
		held: make(chan struct{}), release: make(chan struct{}), done: make(chan struct{}),
	}
	go g.serve(t, int32(pid), skip)
	t.Cleanup(func() {
		g.Release()
		g.f.Close() // pending events are allowed by the kernel
		<-g.done
	})
	return g
}

// Release lets the held open (and every later one) through.
func (g *openGate) Release() { g.once.Do(func() { close(g.release) }) }

func (g *openGate) serve(t *testing.T, pid int32, skip int) {
	defer close(g.done)
	buf := make([]byte, 4096)
	seen, holding := 0, false
	for {
		n, err := g.f.Read(buf)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				t.Errorf("fanotify read: %v", err)
			}
			return
		}
		for b := buf[:n]; len(b) >= int(unsafe.Sizeof(unix.FanotifyEventMetadata{})); {
			var ev unix.FanotifyEventMetadata
			ev.Event_len = binary.NativeEndian.Uint32(b[0:])
			ev.Mask = binary.NativeEndian.Uint64(b[8:])
			ev.Fd = int32(binary.NativeEndian.Uint32(b[16:]))
			ev.Pid = int32(binary.NativeEndian.Uint32(b[20:]))
			if ev.Event_len == 0 || int(ev.Event_len) > len(b) {
				t.Errorf("fanotify: bad event length %d", ev.Event_len)
				return
			}
			b = b[ev.Event_len:]
			if ev.Pid == pid && ev.Mask&unix.FAN_OPEN_PERM != 0 && !holding {
				if seen++; seen > skip {
					holding = true
					close(g.held)
					<-g.release
				}
			}
			resp := unix.FanotifyResponse{Fd: ev.Fd, Response: unix.FAN_ALLOW}
			if _, err := g.f.Write((*[unsafe.Sizeof(resp)]byte)(unsafe.Pointer(&resp))[:]); err != nil {
				t.Errorf("fanotify response: %v", err)
			}
			if ev.Fd >= 0 {
				unix.Close(int(ev.Fd))
			}
		}
	}
}

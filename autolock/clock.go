package autolock

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Clock is the idle policy's time base. Its time must go on while the
// system is suspended: a laptop that slept two hours was idle for two
// hours. Go's monotonic clock (CLOCK_MONOTONIC on Linux) stops during
// suspend, so neither time.Now nor time.Timer will do (gocryptfs's -idle
// has exactly that bug, rfjakob/gocryptfs#916). The default clock is
// CLOCK_BOOTTIME with timerfd timers; tests inject a fake.
type Clock interface {
	// Now is the time since an arbitrary origin, counting time asleep.
	Now() time.Duration
	// Cheap is a clock that is cheap to read but may stop while the
	// system is suspended. The idle policy reads Now at most once per
	// grain of it on its hot path.
	Cheap() time.Duration
	// NewTimer returns a disarmed timer on this clock.
	NewTimer() (Timer, error)
}

// Timer fires once its clock reaches a deadline.
type Timer interface {
	// C receives after the clock has reached the deadline last set. It may
	// also receive spuriously (a firing that raced a Set): the receiver
	// checks the time.
	C() <-chan struct{}
	// Set arms the timer for an absolute deadline on the clock, replacing
	// the one before.
	Set(deadline time.Duration) error
	// Stop disarms the timer.
	Stop() error
	// Close disarms the timer and releases it.
	Close() error
}

// BootClock is CLOCK_BOOTTIME: the monotonic clock plus the time spent
// suspended. Its timers are timerfds with absolute deadlines, so one whose
// deadline passed during a suspend fires as soon as the system resumes.
// Reading it is a system call (the vDSO serves only Go's own clocks);
// Cheap is Go's monotonic clock, read through the vDSO.
type BootClock struct{}

// cheapBase anchors Cheap: time.Since of a time with a monotonic reading
// reads only the monotonic clock.
var cheapBase = time.Now()

// Cheap is Go's monotonic clock, which stops while the system sleeps.
func (BootClock) Cheap() time.Duration { return time.Since(cheapBase) }

// Now reads CLOCK_BOOTTIME.
func (BootClock) Now() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		// Linux has had CLOCK_BOOTTIME since 2.6.39.
		panic("autolock: clock_gettime(CLOCK_BOOTTIME): " + err.Error())
	}
	return time.Duration(ts.Nano())
}

// NewTimer creates a CLOCK_BOOTTIME timerfd. A goroutine waits on it (in
// the runtime's poller) until Close.
func (BootClock) NewTimer() (Timer, error) {
	fd, err := unix.TimerfdCreate(unix.CLOCK_BOOTTIME, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("autolock: timerfd_create(CLOCK_BOOTTIME): %w", err)
	}
	t := &bootTimer{fd: fd, f: os.NewFile(uintptr(fd), "timerfd"), c: make(chan struct{}, 1)}
	go t.wait()
	return t, nil
}

type bootTimer struct {
	mu     sync.Mutex // guards closed and the use of fd against Close
	closed bool
	fd     int
	f      *os.File // owns fd
	c      chan struct{}
}

func (t *bootTimer) C() <-chan struct{} { return t.c }

// wait reads expirations until the file is closed.
func (t *bootTimer) wait() {
	var buf [8]byte
	for {
		if _, err := t.f.Read(buf[:]); err != nil {
			// Closed (os.ErrClosed), or an error a timerfd without
			// TFD_TIMER_CANCEL_ON_SET does not return.
			return
		}
		select {
		case t.c <- struct{}{}:
		default: // one pending firing is enough
		}
	}
}

func (t *bootTimer) Set(deadline time.Duration) error {
	// A zero it_value disarms; any deadline at or before the clock's
	// origin has passed anyway.
	deadline = max(deadline, 1)
	return t.settime(&unix.ItimerSpec{Value: unix.NsecToTimespec(int64(deadline))})
}

func (t *bootTimer) Stop() error { return t.settime(&unix.ItimerSpec{}) }

func (t *bootTimer) settime(v *unix.ItimerSpec) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return errors.New("autolock: timer closed")
	}
	if err := unix.TimerfdSettime(t.fd, unix.TFD_TIMER_ABSTIME, v, nil); err != nil {
		return fmt.Errorf("autolock: timerfd_settime: %w", err)
	}
	return nil
}

func (t *bootTimer) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	return t.f.Close()
}

package integration

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
)

// runPeakRSS runs cmd to its end and returns the peak resident set size
// (KiB) of the program it runs. The rusage of wait4 cannot tell it: Go
// starts a child with vfork (CLONE_VM), and at exec the kernel records
// the shared memory's high-water mark (this test process's, hundreds of
// MiB under the race detector) into the child's maxrss. So the child runs
// traced, stops once at its exit while its memory still exists, and its
// own VmHWM is read then.
func runPeakRSS(cmd *exec.Cmd) (int64, error) {
	// Every ptrace request must come from the thread that started the
	// tracee.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Ptrace = true
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	pid := cmd.Process.Pid
	var ws syscall.WaitStatus
	first := true
	for {
		if _, err := syscall.Wait4(pid, &ws, 0, nil); err != nil {
			return 0, err
		}
		if ws.Exited() || ws.Signaled() {
			// Gone without an exit stop (reaped here: cmd.Wait only
			// collects the output).
			_ = cmd.Wait()
			return 0, fmt.Errorf("no exit stop seen: %v", ws)
		}
		if !ws.Stopped() {
			continue
		}
		sig := ws.StopSignal()
		switch {
		case first && sig == syscall.SIGTRAP:
			// Stopped after its exec.
			first = false
			if err := syscall.PtraceSetOptions(pid, syscall.PTRACE_O_TRACEEXIT); err != nil {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
				return 0, err
			}
			sig = 0
		case sig == syscall.SIGTRAP && ws.TrapCause() == syscall.PTRACE_EVENT_EXIT:
			hwm, herr := vmHWM(pid)
			if err := syscall.PtraceCont(pid, 0); err != nil {
				return 0, err
			}
			if err := cmd.Wait(); err != nil {
				return hwm, err
			}
			return hwm, herr
		}
		if err := syscall.PtraceCont(pid, int(sig)); err != nil {
			return 0, err
		}
	}
}

// vmHWM reads a process's peak resident set size (KiB).
func vmHWM(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
}

package main

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"
)

// progress draws a one-line progress bar on a terminal: files and bytes
// done out of the totals counted beforehand, throughput and time left. A
// nil *progress draws nothing, so callers need not check.
type progress struct {
	mu                     sync.Mutex
	w                      io.Writer
	verb                   string
	totalFiles, totalBytes int64
	files, bytes           int64
	start, drawn           time.Time
	width                  int // of the last line drawn
}

// newProgress returns a bar on w when w is a terminal, else nil.
func newProgress(w io.Writer, verb string) *progress {
	if !isTerminalWriter(w) {
		return nil
	}
	return &progress{w: w, verb: verb, start: time.Now()}
}

func (p *progress) setTotal(files, bytes int64) {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.totalFiles, p.totalBytes = files, bytes
	p.mu.Unlock()
}

// add counts files and bytes done and redraws at most ten times a second.
func (p *progress) add(files, bytes int64) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.files += files
	p.bytes += bytes
	if now := time.Now(); now.Sub(p.drawn) >= 100*time.Millisecond {
		p.drawn = now
		p.draw()
	}
}

func (p *progress) draw() {
	const bar = 24
	frac := 0.0
	switch {
	case p.totalBytes > 0:
		frac = float64(p.bytes) / float64(p.totalBytes)
	case p.totalFiles > 0:
		frac = float64(p.files) / float64(p.totalFiles)
	}
	frac = min(max(frac, 0), 1)
	n := int(frac * bar)
	el := time.Since(p.start).Seconds()
	rate, eta := "", ""
	if el > 0.5 {
		bps := float64(p.bytes) / el
		rate = fmt.Sprintf(" %s/s", humanBytes(int64(bps)))
		if bps > 0 && p.totalBytes > p.bytes {
			eta = fmt.Sprintf(" %s left", (time.Duration(float64(p.totalBytes-p.bytes)/bps) * time.Second).Round(time.Second))
		}
	}
	line := fmt.Sprintf("%s [%s%s] %3.0f%% %d/%d files %s/%s%s%s", p.verb,
		strings.Repeat("#", n), strings.Repeat(".", bar-n), frac*100,
		p.files, p.totalFiles, humanBytes(p.bytes), humanBytes(p.totalBytes), rate, eta)
	pad := max(p.width-len(line), 0)
	p.width = len(line)
	fmt.Fprintf(p.w, "\r%s%s", line, strings.Repeat(" ", pad))
}

// done erases the bar, leaving the line for what comes next.
func (p *progress) done() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.width > 0 {
		fmt.Fprintf(p.w, "\r%s\r", strings.Repeat(" ", p.width))
	}
}

// isTerminalWriter reports whether w is a terminal.
func isTerminalWriter(w io.Writer) bool {
	f, ok := w.(interface{ Fd() uintptr })
	return ok && isTerminalFd(f.Fd())
}

func isTerminalFd(fd uintptr) bool { return term.IsTerminal(int(fd)) }

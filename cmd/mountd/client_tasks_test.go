package main

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/mountd/mountd/task"
)

// screen is what a terminal shows after out: carriage return, erase to
// the end of the line (ESC [ K) and newline are honoured, other bytes
// overwrite the line at the cursor.
func screen(out string) []string {
	var lines []string
	var line []rune
	cur := 0
	rs := []rune(out)
	for i := 0; i < len(rs); i++ {
		switch {
		case rs[i] == '\r':
			cur = 0
		case rs[i] == '\n':
			lines = append(lines, string(line))
			line, cur = nil, 0
		case rs[i] == '\x1b' && i+2 < len(rs) && rs[i+1] == '[' && rs[i+2] == 'K':
			line = line[:cur]
			i += 2
		default:
			if cur < len(line) {
				line[cur] = rs[i]
			} else {
				line = append(line, rs[i])
			}
			cur++
		}
	}
	if len(line) > 0 {
		lines = append(lines, string(line))
	}
	return lines
}

// TestProgressLeavesNoTail: a shorter line drawn over a longer one leaves
// no characters of the longer one (the "GiBGiB" garbage), and a line never
// reaches the terminal's last column.
func TestProgressLeavesNoTail(t *testing.T) {
	var out bytes.Buffer
	p := &taskProgress{w: &out, width: 200}
	long := task.Record{State: task.Running, FilesTotal: 12345, FilesDone: 6000, BytesTotal: 3 << 30, BytesDone: 1536 << 20}
	short := task.Record{State: task.Succeeded, FilesTotal: 1, FilesDone: 1, BytesTotal: 10, BytesDone: 10}
	p.draw(&long)
	p.draw(&short)
	p.done()
	got := screen(out.String())
	if len(got) != 1 || got[0] != progressLine(&short) {
		t.Fatalf("screen shows %q, want %q", got, progressLine(&short))
	}

	out.Reset()
	p = &taskProgress{w: &out, width: 20}
	p.draw(&long)
	p.done()
	if got := screen(out.String()); len(got) != 1 || len([]rune(got[0])) != 19 || !strings.HasPrefix(progressLine(&long), got[0]) {
		t.Fatalf("narrow terminal shows %q", got)
	}

	// Not a terminal: whole lines, the last one always.
	out.Reset()
	p = &taskProgress{w: &out}
	p.draw(&long)
	p.draw(&long) // within progressEvery: not printed
	p.draw(&short)
	p.done()
	if got := out.String(); got != progressLine(&long)+"\n"+progressLine(&short)+"\n" {
		t.Fatalf("pipe output %q", got)
	}
}

func TestPrintLeftPlaintext(t *testing.T) {
	r := task.New("t", task.KindEncryptExisting, testTime)
	r.Skip("a/empty.bin", task.SkipEmpty)
	r.Skip("l/one.bin", task.SkipHardLinks)
	r.Busy("open.bin")
	r.Fail("bad.bin", errors.New("permission denied"))
	for i := range task.MaxListed {
		r.Skip(fmt.Sprintf("many/%d.bin", i), task.SkipHardLinks)
	}
	var out bytes.Buffer
	printLeftPlaintext(&out, &r)
	s := out.String()
	for _, want := range []string{
		fmt.Sprintf("%d protected files stay plaintext:\n", task.MaxListed+4),
		"  a/empty.bin  (empty: nothing to encrypt yet; it is encrypted on its first write while logged in)\n",
		"  l/one.bin  (hard-linked: ",
		"  open.bin  (busy: open through the mount; close it, then run again)\n",
		"  bad.bin  (failed: permission denied)\n",
		"  ... and 4 more\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
	if n := strings.Count(s, "\n  "); n != task.MaxListed+1 { // the list and the "more" line
		t.Errorf("%d lines listed, want %d", n, task.MaxListed+1)
	}
	var none bytes.Buffer
	empty := task.New("t", task.KindEncryptExisting, testTime)
	printLeftPlaintext(&none, &empty)
	if none.Len() != 0 {
		t.Errorf("nothing left plaintext printed %q", none.String())
	}
}

func TestRanToEnd(t *testing.T) {
	for _, c := range []struct {
		r    task.Record
		want bool
	}{
		{task.Record{State: task.Succeeded, FilesTotal: 3, FilesDone: 1, FilesSkipped: 1, FilesBusy: 1}, true},
		{task.Record{State: task.Failed, FilesTotal: 3, FilesDone: 2, FilesFailed: 1}, true},
		{task.Record{State: task.Failed, FilesTotal: 3, FilesDone: 1}, false},       // key cleared mid-run
		{task.Record{State: task.Cancelled, FilesTotal: 1, FilesSkipped: 1}, false}, // cancelled
		{task.Record{State: task.Succeeded, FilesTotal: 0}, true},                   // nothing to do
	} {
		if got := ranToEnd(&c.r); got != c.want {
			t.Errorf("ranToEnd(%+v) = %v", c.r, got)
		}
	}
}

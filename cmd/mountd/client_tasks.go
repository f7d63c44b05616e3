package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/mountd/mountd/task"
)

// The task commands: encrypt-existing, cancel, tasks.

// pollInterval is how often a waiting client asks for a task's progress.
const pollInterval = 250 * time.Millisecond

var encryptExistingCmd = &command{
	name:    "encrypt-existing",
	summary: "encrypt the plaintext protected files in place, with a progress bar",
	help: `Starts the encrypt_existing_files task (or follows the one running) and shows its
progress until it ends, then names the protected files it left plaintext (the first
100, then a count) and why: empty files (encrypted on their first write), files with
several hard links, files open through the mount (busy) and files that failed.
Exit status: 0 every protected file is encrypted; 5 the task ran to its end and some
stay plaintext; 1 the task failed or was cancelled; 130 Ctrl-C, which only stops
watching: the task goes on in the daemon ('mountd cancel' stops it).`,
	group: groupClient,
	setup: func(f *flag.FlagSet) runFunc {
		o := clientFlags(f)
		noWait := f.Bool("no-wait", false, "start the task and return at once")
		return func(s stdio, _ []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			return encryptExisting(c, s, *noWait)
		}
	},
}

func encryptExisting(c *client, s stdio, noWait bool) error {
	// Ctrl-C from here on stops watching, not the task.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	r, _, err := c.call(http.MethodPost, "/api/system/encrypt_existing_files", nil)
	if err != nil {
		return err
	}
	if r.Task == nil {
		return fmt.Errorf("no task in the reply")
	}
	fmt.Fprintf(s.out, "task %s: %s\n", r.Task.ID, r.Message)
	if noWait {
		return nil
	}
	t, err := c.follow(ctx, *r.Task, newTaskProgress(s.out))
	if err != nil {
		return err
	}
	fmt.Fprintf(s.out, "%s\n", describeTask(&t))
	printLeftPlaintext(s.out, &t)
	switch {
	case t.State == task.Succeeded && t.FilesLeftPlaintext == 0:
		return nil
	case t.FilesLeftPlaintext > 0 && ranToEnd(&t):
		return reported{fmt.Errorf("%w: %d", errPlaintext, t.FilesLeftPlaintext)}
	}
	return fmt.Errorf("task %s %s: %s", t.ID, t.State, t.Error)
}

// ranToEnd reports whether every file the task found got an outcome (a
// task stopped by a logout, a cancel or a full disk did not).
func ranToEnd(t *task.Record) bool {
	return t.State != task.Cancelled && t.FilesDone+t.FilesSkipped+t.FilesFailed+t.FilesBusy == t.FilesTotal
}

// follow polls the task until it ends, drawing p, and returns its final
// record. An interrupt (ctx) stops watching with errInterrupted; the task
// goes on.
func (c *client) follow(ctx context.Context, t task.Record, p *taskProgress) (task.Record, error) {
	for {
		p.draw(&t)
		if t.State.Final() {
			p.done()
			return t, nil
		}
		select {
		case <-ctx.Done():
			p.done()
			return t, fmt.Errorf("%w: stopped watching; task %s goes on in the daemon: "+
				"'mountd tasks' shows it, 'mountd cancel %s' stops it", errInterrupted, t.ID, t.ID)
		case <-time.After(pollInterval):
		}
		r, _, err := c.call(http.MethodGet, "/api/system/tasks/"+t.ID, nil)
		if err != nil {
			p.done()
			return t, err
		}
		if r.Task == nil {
			p.done()
			return t, fmt.Errorf("no task in the reply")
		}
		t = *r.Task
	}
}

// taskProgress draws a task's progress: on a terminal one line redrawn in
// place (carriage return, the line cut to the terminal's width, then
// erase to the end of the line, so a shorter line leaves no tail of the
// longer one), elsewhere a line every progressEvery.
type taskProgress struct {
	w     io.Writer
	width int // terminal columns; 0: not a terminal
	last  time.Time
	drawn bool
}

const progressEvery = 5 * time.Second

func newTaskProgress(w io.Writer) *taskProgress {
	p := &taskProgress{w: w}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.width = 80
		if cols, _, err := term.GetSize(int(f.Fd())); err == nil && cols > 0 {
			p.width = cols
		}
	}
	return p
}

func (p *taskProgress) draw(t *task.Record) {
	line := progressLine(t)
	if p.width == 0 {
		if time.Since(p.last) >= progressEvery || t.State.Final() {
			fmt.Fprintln(p.w, line)
			p.last = time.Now()
		}
		return
	}
	// One column less than the width: writing the last column makes some
	// terminals wrap, and \r would then return to the wrong line.
	if r := []rune(line); len(r) > p.width-1 {
		line = string(r[:max(p.width-1, 0)])
	}
	fmt.Fprintf(p.w, "\r%s\x1b[K", line)
	p.drawn = true
}

// done ends the redrawn line.
func (p *taskProgress) done() {
	if p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
}

func progressLine(t *task.Record) string {
	const width = 30
	frac := 1.0
	if t.State == task.Running {
		frac = 0 // not counted yet
	}
	if t.BytesTotal > 0 {
		frac = float64(t.BytesDone) / float64(t.BytesTotal)
	} else if t.FilesTotal > 0 {
		frac = float64(t.FilesDone+t.FilesSkipped+t.FilesFailed+t.FilesBusy) / float64(t.FilesTotal)
	}
	frac = min(max(frac, 0), 1)
	n := int(frac * width)
	return fmt.Sprintf("[%s%s] %3.0f%% %d/%d files %s/%s",
		strings.Repeat("#", n), strings.Repeat(".", width-n), frac*100,
		t.FilesDone, t.FilesTotal, humanBytes(t.BytesDone), humanBytes(t.BytesTotal))
}

func describeTask(t *task.Record) string {
	s := fmt.Sprintf("%s: %d/%d files done, %d skipped, %d busy, %d failed, %s of %s",
		t.State, t.FilesDone, t.FilesTotal, t.FilesSkipped, t.FilesBusy, t.FilesFailed,
		humanBytes(t.BytesDone), humanBytes(t.BytesTotal))
	if t.Error != "" {
		s += " (" + t.Error + ")"
	}
	return s
}

// reasonText explains a File.Reason to a person.
var reasonText = map[string]string{
	task.SkipEmpty:     "empty: nothing to encrypt yet; it is encrypted on its first write while logged in",
	task.SkipHardLinks: "hard-linked: its other names would keep the plaintext; give each name its own copy, then run again",
	task.SkipOther:     "changed while the task looked at it; run again",
	task.ReasonBusy:    "busy: open through the mount; close it, then run again",
	task.ReasonFailed:  "failed",
}

// printLeftPlaintext names the protected files the task left plaintext.
func printLeftPlaintext(w io.Writer, t *task.Record) {
	if t.FilesLeftPlaintext == 0 {
		return
	}
	noun := "files stay"
	if t.FilesLeftPlaintext == 1 {
		noun = "file stays"
	}
	fmt.Fprintf(w, "%d protected %s plaintext:\n", t.FilesLeftPlaintext, noun)
	for _, f := range t.LeftPlaintext {
		why := reasonText[f.Reason]
		if why == "" {
			why = f.Reason
		}
		if f.Error != "" {
			why += ": " + f.Error
		}
		fmt.Fprintf(w, "  %s  (%s)\n", f.Path, why)
	}
	if more := t.FilesLeftPlaintext - int64(len(t.LeftPlaintext)); more > 0 {
		fmt.Fprintf(w, "  ... and %d more\n", more)
	}
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

var cancelCmd = &command{
	name:    "cancel",
	args:    "[ID]",
	summary: "stop a task (without ID: the running one) and wait until it has stopped",
	help: `Files already encrypted stay encrypted; the files in progress keep their plaintext.
Running encrypt-existing again later resumes.`,
	group:   groupClient,
	maxArgs: 1,
	setup: func(f *flag.FlagSet) runFunc {
		o := clientFlags(f)
		noWait := f.Bool("no-wait", false, "ask the task to stop and return at once")
		return func(s stdio, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			var id string
			if len(args) == 1 {
				id = args[0]
			} else if id, err = c.runningTask(); err != nil {
				return err
			}
			r, _, err := c.call(http.MethodPost, "/api/system/tasks/"+id+"/cancel", nil)
			if err != nil {
				return err
			}
			fmt.Fprintf(s.out, "task %s: %s\n", id, r.Message)
			if r.Task == nil || *noWait {
				return nil
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			t, err := c.follow(ctx, *r.Task, &taskProgress{w: io.Discard})
			if err != nil {
				return err
			}
			fmt.Fprintf(s.out, "%s\n", describeTask(&t))
			return nil
		}
	},
}

// runningTask returns the id of the running task.
func (c *client) runningTask() (string, error) {
	r, _, err := c.call(http.MethodGet, "/api/system/tasks", nil)
	if err != nil {
		return "", err
	}
	for _, t := range r.Tasks {
		if t.State == task.Running {
			return t.ID, nil
		}
	}
	return "", fmt.Errorf("no task is running ('mountd tasks' lists the others)")
}

var tasksCmd = &command{
	name:    "tasks",
	summary: "list the tasks since the daemon started, newest first",
	group:   groupClient,
	setup: func(f *flag.FlagSet) runFunc {
		o := clientFlags(f)
		asJSON := f.Bool("json", false, "print the JSON array of task records (see docs/API.md)")
		return func(s stdio, _ []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			r, _, err := c.call(http.MethodGet, "/api/system/tasks", nil)
			if err != nil {
				return err
			}
			if *asJSON {
				list := r.Tasks
				if list == nil {
					list = []task.Record{}
				}
				b, err := json.MarshalIndent(list, "", "  ")
				if err != nil {
					return err
				}
				fmt.Fprintf(s.out, "%s\n", b)
				return nil
			}
			if len(r.Tasks) == 0 {
				fmt.Fprintln(s.out, "no task since the daemon started")
			}
			for _, t := range r.Tasks {
				fmt.Fprintf(s.out, "%s  %s  started %s  %s\n", t.ID, t.Kind, t.StartedAt.Local().Format(time.DateTime), describeTask(&t))
			}
			return nil
		}
	},
}

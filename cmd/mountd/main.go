// Command mountd mounts a data directory through FUSE, storing protected
// files (*.bin by default) encrypted at rest, and serves an HTTP control
// plane to log in and out at runtime. Its client subcommands talk to that
// control plane.
//
//	mountd [serve] [flags]     run the daemon (the default)
//	mountd COMMAND [flags]     see 'mountd help'
//
// # The command-line framework
//
// Every subcommand is a *command registered in the commands map below (one
// line each); its definition lives in the file of its family (serve.go,
// client.go, ...). A command declares:
//   - name, args (the positional arguments in its synopsis, "" for none),
//     summary (one line for 'mountd help'), group (the overview's section)
//     and, optionally, help (a paragraph for 'mountd help NAME');
//   - minArgs and maxArgs, the number of positional arguments it takes
//     (maxArgs -1: any number);
//   - setup, which declares the command's flags on the FlagSet it is given
//     and returns the function that runs the command with the positional
//     arguments, stdin, stdout and stderr.
//
// The framework does the rest, the same way for every command:
//   - 'mountd help NAME', 'mountd NAME -h' and 'mountd NAME --help' print
//     NAME's usage on stdout and exit 0; 'mountd help', 'mountd -h' and
//     'mountd --help' print the overview; 'mountd version' and
//     'mountd --version' print the version;
//   - a flag error, a missing or a stray argument prints ONE line on stderr,
//     "mountd NAME: <what> (see 'mountd NAME -h')", and exits exitUsage;
//   - an error returned by the command is printed as "mountd: <error>" on
//     stderr (unless it is a reported error: the command already said it)
//     and exitCode, the one place errors become a process status, maps it
//     to the exit code of the table below.
//
// Flags can be written -name or --name (help shows --name), before or after
// the positional arguments; "--" ends them.
package main

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/mountd/mountd/datadir"
)

func main() { os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }

// Exit codes: every command's process status is one of these (documented
// in docs/OPERATIONS.md; keep the two in step).
const (
	exitOK          = 0   // success; status: the key is set
	exitError       = 1   // any other error
	exitKeyNotSet   = 2   // status: the daemon answers and the key is not set (as 'vault status' when sealed)
	exitDenied      = 3   // wrong password, missing token, refused by a guard or the backoff
	exitUnreachable = 4   // the control plane could not be reached
	exitPlaintext   = 5   // encrypt-existing: the task ended with protected files still plaintext; fsck: found some
	exitInUse       = 6   // the data directory or the mountpoint is in use (another daemon, a mount)
	exitDamaged     = 7   // fsck, export: damaged or unreadable encrypted files (data not readable back)
	exitLeftovers   = 8   // fsck: nothing wrong but temp files a crash left behind
	exitUsage       = 64  // bad command line (EX_USAGE)
	exitInterrupted = 130 // interrupted (Ctrl-C) while waiting; what the daemon does goes on
)

// Errors that select an exit code. Wrap them with %w.
var (
	errDenied      = errors.New("denied")
	errUnreachable = errors.New("control plane unreachable")
	errKeyNotSet   = errors.New("file encryption key is not set")
	errPlaintext   = errors.New("protected files stay plaintext")
	errInUse       = errors.New("in use")
	errInterrupted = errors.New("interrupted")
	errDamaged     = errors.New("damaged files found")
	errLeftovers   = errors.New("stray temp files found")
)

// inUse is an error about something another process holds (exitInUse).
type inUse struct{ error }

func (e inUse) Unwrap() error { return e.error }

func (inUse) Is(target error) bool { return target == errInUse }

// usageError marks an error in the command line.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// reported is an error the command has already shown the user: run prints
// nothing more, it only sets the exit code.
type reported struct{ error }

func (e reported) Unwrap() error { return e.error }

// exitCode is the one place errors become a process status.
func exitCode(err error) int {
	var ue usageError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ue):
		return exitUsage
	case errors.Is(err, errKeyNotSet):
		return exitKeyNotSet
	case errors.Is(err, errDenied):
		return exitDenied
	case errors.Is(err, errUnreachable):
		return exitUnreachable
	case errors.Is(err, errPlaintext):
		return exitPlaintext
	case errors.Is(err, errInUse), errors.Is(err, datadir.ErrHeld):
		return exitInUse
	case errors.Is(err, errInterrupted):
		return exitInterrupted
	case errors.Is(err, errDamaged):
		return exitDamaged
	case errors.Is(err, errLeftovers):
		return exitLeftovers
	}
	return exitError
}

// stdio is a command's standard streams.
type stdio struct {
	in       io.Reader
	out, err io.Writer
}

// runFunc runs a command with its positional arguments.
type runFunc func(s stdio, args []string) error

// command is one subcommand; see the package comment.
type command struct {
	name    string
	args    string // positional arguments in the synopsis, e.g. "[ID]"
	summary string // one line, for the overview
	help    string // optional paragraph for 'mountd help NAME'
	group   group
	// minArgs and maxArgs bound the positional arguments; maxArgs -1
	// means any number.
	minArgs, maxArgs int
	// setup declares the flags on f and returns the runner.
	setup func(f *flag.FlagSet) runFunc
}

// group is a section of the overview, in this order.
type group int

const (
	groupDaemon  group = iota // the daemon itself
	groupClient               // talk to a running daemon
	groupOffline              // work on a data directory without the daemon
	groupOther                // help, version
)

var groupTitles = map[group]string{
	groupDaemon:  "The daemon",
	groupClient:  "Talk to a running daemon (--addr, or $MOUNTD_ADDR; --token-file, or $MOUNTD_TOKEN_FILE)",
	groupOffline: "Work on a data directory without the daemon",
	groupOther:   "Other",
}

// commands maps a name to its command: register new commands here.
var commands = map[string]*command{
	"serve":            serveCmd,
	"login":            loginCmd,
	"logout":           logoutCmd,
	"status":           statusCmd,
	"passwd":           passwdCmd,
	"encrypt-existing": encryptExistingCmd,
	"cancel":           cancelCmd,
	"tasks":            tasksCmd,
	"version":          versionCmd,
	"init":             initCmd,
	"recovery-key":     recoveryKeyCmd,
	"reset-password":   resetPasswordCmd,
	"info":             infoCmd,
	"fsck":             fsckCmd,
	"export":           exportCmd,
	"break-lease":      breakLeaseCmd,
}

// help lists the commands, so it joins the map at init (a reference in the
// literal would be an initialization cycle).
func init() { commands["help"] = helpCmd }

// defaultCommand runs when the first argument is not a command name.
const defaultCommand = "serve"

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	s := stdio{in: stdin, out: stdout, err: stderr}
	name := defaultCommand
	if len(args) > 0 {
		switch args[0] {
		case "-h", "-help", "--help":
			args = []string{"help"}
		case "-version", "--version":
			args = []string{"version"}
		}
		if _, ok := commands[args[0]]; ok {
			name, args = args[0], args[1:]
		} else if !strings.HasPrefix(args[0], "-") {
			fmt.Fprintf(stderr, "mountd: unknown command %q (see 'mountd help')\n", args[0])
			return exitUsage
		}
	}
	err := runCommand(commands[name], args, s)
	var rep reported
	if err != nil && !errors.As(err, &rep) {
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintf(stderr, "mountd %s: %v (see 'mountd %s -h')\n", name, ue.error, name)
		} else {
			fmt.Fprintf(stderr, "mountd: %v\n", err)
		}
	}
	return exitCode(err)
}

// runCommand parses args for c and runs it.
func runCommand(c *command, args []string, s stdio) error {
	f := flag.NewFlagSet("mountd "+c.name, flag.ContinueOnError)
	f.SetOutput(io.Discard) // the framework prints errors and usage itself
	f.Usage = func() {}
	runner := c.setup(f)
	pos, err := parseInterspersed(f, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(s.out, c, f)
			return nil
		}
		return usageError{err}
	}
	switch n := len(pos); {
	case n < c.minArgs:
		return usageError{fmt.Errorf("missing argument %s", c.args)}
	case c.maxArgs >= 0 && n > c.maxArgs:
		return usageError{fmt.Errorf("unexpected argument %q", pos[c.maxArgs])}
	}
	return runner(s, pos)
}

// parseInterspersed parses args with f, allowing flags after positional
// arguments ("mountd cancel ID --addr A"); "--" ends the flags. It returns
// the positional arguments.
func parseInterspersed(f *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := f.Parse(args); err != nil {
			return nil, err
		}
		rest := f.Args()
		if consumed := args[:len(args)-len(rest)]; len(consumed) > 0 && consumed[len(consumed)-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos, args = append(pos, rest[0]), rest[1:]
	}
}

// printUsage prints c's synopsis, help and flags.
func printUsage(w io.Writer, c *command, f *flag.FlagSet) {
	synopsis := "mountd " + c.name
	if c.name == defaultCommand {
		synopsis = "mountd [" + c.name + "]"
	}
	hasFlags := false
	f.VisitAll(func(*flag.Flag) { hasFlags = true })
	if hasFlags {
		synopsis += " [flags]"
	}
	if c.args != "" {
		synopsis += " " + c.args
	}
	fmt.Fprintf(w, "usage: %s\n\n%s\n", synopsis, c.summary)
	if c.help != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(c.help))
	}
	if hasFlags {
		fmt.Fprintf(w, "\nflags:\n")
		f.VisitAll(func(fl *flag.Flag) {
			typ, usage := flag.UnquoteUsage(fl)
			line := "  --" + fl.Name
			if typ != "" {
				line += " " + typ
			}
			fmt.Fprintf(w, "%s\n    \t%s", line, strings.ReplaceAll(usage, "\n", "\n    \t"))
			if d := fl.DefValue; !zeroDefault(d) {
				fmt.Fprintf(w, " (default %s)", d)
			}
			fmt.Fprintln(w)
		})
	}
}

// zeroDefault says whether a flag's default is its type's zero value,
// which the help leaves out ("0s" is a Duration's).
func zeroDefault(d string) bool {
	switch d {
	case "", "false", "0", "0s", "[]":
		return true
	}
	return false
}

// printOverview lists the commands by group.
func printOverview(w io.Writer) {
	fmt.Fprintf(w, "usage: mountd [serve] [flags]    run the daemon (the default)\n       mountd COMMAND [flags] [args]\n")
	list := make([]*command, 0, len(commands))
	for _, c := range commands {
		list = append(list, c)
	}
	slices.SortFunc(list, func(a, b *command) int {
		return cmp.Or(cmp.Compare(a.group, b.group), strings.Compare(a.name, b.name))
	})
	g := group(-1)
	for _, c := range list {
		if c.group != g {
			g = c.group
			fmt.Fprintf(w, "\n%s:\n", groupTitles[g])
		}
		name := c.name
		if c.args != "" {
			name += " " + c.args
		}
		fmt.Fprintf(w, "  %-22s %s\n", name, c.summary)
	}
	fmt.Fprintf(w, "\nRun 'mountd help COMMAND' (or 'mountd COMMAND -h') for its flags.\n"+
		"Exit codes: 0 ok, 1 error, 2 key not set (status), 3 denied, 4 daemon unreachable,\n"+
		"5 protected files left plaintext (encrypt-existing, fsck), 6 in use, 7 damaged files (fsck, export),\n"+
		"8 stray temp files (fsck), 64 bad usage, 130 interrupted.\n")
}

var helpCmd = &command{
	name:    "help",
	args:    "[COMMAND]",
	summary: "show the commands, or one command's usage and flags",
	group:   groupOther,
	maxArgs: 1,
	setup: func(*flag.FlagSet) runFunc {
		return func(s stdio, args []string) error {
			if len(args) == 0 || args[0] == "help" {
				printOverview(s.out)
				return nil
			}
			c, ok := commands[args[0]]
			if !ok {
				return usageError{fmt.Errorf("unknown command %q", args[0])}
			}
			f := flag.NewFlagSet("mountd "+c.name, flag.ContinueOnError)
			c.setup(f)
			printUsage(s.out, c, f)
			return nil
		}
	},
}

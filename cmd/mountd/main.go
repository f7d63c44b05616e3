// Command mountd mounts a data directory through FUSE, storing protected
// files (*.bin by default) encrypted at rest, and serves an HTTP control
// plane to log in and out at runtime. Its client subcommands talk to that
// control plane.
//
//	mountd [serve] [flags]     run the daemon (the default)
//	mountd login|logout|status|passwd|encrypt-existing [flags]
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

func main() { os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }

// Exit codes: the one place errors become process status.
const (
	exitOK          = 0
	exitError       = 1 // anything else
	exitUsage       = 2 // bad flags or arguments
	exitDenied      = 3 // wrong password, missing token, refused by a guard
	exitUnreachable = 4 // the control plane could not be reached
)

// usageError marks an error in the command line.
type usageError struct{ error }

var errDenied = errors.New("denied")
var errUnreachable = errors.New("control plane unreachable")

func exitCode(err error) int {
	var ue usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, &ue):
		return exitUsage
	case errors.Is(err, errDenied):
		return exitDenied
	case errors.Is(err, errUnreachable):
		return exitUnreachable
	}
	return exitError
}

type commandFunc func(args []string, stdin io.Reader, stdout, stderr io.Writer) error

var commands = map[string]commandFunc{
	"serve":            serve,
	"login":            clientLogin,
	"logout":           clientLogout,
	"status":           clientStatus,
	"passwd":           clientPasswd,
	"encrypt-existing": clientEncryptExisting,
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	cmd := serve
	if len(args) > 0 {
		if c, ok := commands[args[0]]; ok {
			cmd, args = c, args[1:]
		} else if args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
			fmt.Fprint(stdout, usage)
			return exitOK
		} else if len(args[0]) > 0 && args[0][0] != '-' {
			fmt.Fprintf(stderr, "mountd: unknown command %q\n\n%s", args[0], usage)
			return exitUsage
		}
	}
	err := cmd(args, stdin, stdout, stderr)
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(stderr, "mountd: %v\n", err)
	}
	return exitCode(err)
}

const usage = `usage: mountd [serve] [flags]          run the daemon (default)
       mountd login [--addr A]          log in (prompts for the password)
       mountd logout [--addr A]         clear the key
       mountd status [--addr A]         show the encryption state
       mountd passwd [--addr A]         change the password
       mountd encrypt-existing [--addr A] [--no-wait]
                                        encrypt the plaintext protected files in place

Run "mountd <command> -h" for the flags of a command.
`

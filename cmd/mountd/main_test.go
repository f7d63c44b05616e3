package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mountd/mountd/datadir"
)

// runArgs runs the command line and returns the exit code, stdout and
// stderr.
func runArgs(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

func TestHelpExitsZeroWithoutErrorLine(t *testing.T) {
	cases := [][]string{
		{"-h"}, {"--help"}, {"-help"}, {"help"}, {"help", "help"},
		{"serve", "-h"}, {"serve", "--help"}, {"--data", "x", "-h"},
	}
	for name := range commands {
		cases = append(cases, []string{name, "-h"}, []string{name, "--help"}, []string{"help", name})
	}
	for _, args := range cases {
		code, out, errs := runArgs(t, args...)
		if code != exitOK || errs != "" || !strings.HasPrefix(out, "usage: mountd") {
			t.Errorf("%q: exit %d, stderr %q, stdout %.60q; want exit 0, usage on stdout, nothing on stderr", args, code, errs, out)
		}
	}
	// A command's help names its flags with two dashes and its summary.
	_, out, _ := runArgs(t, "help", "status")
	for _, want := range []string{"usage: mountd status [flags]", "--addr address", "--json", "$MOUNTD_ADDR", statusCmd.summary} {
		if !strings.Contains(out, want) {
			t.Errorf("help status lacks %q:\n%s", want, out)
		}
	}
	// The overview lists every command.
	_, out, _ = runArgs(t, "help")
	for name := range commands {
		if !strings.Contains(out, "\n  "+name) {
			t.Errorf("overview lacks %q:\n%s", name, out)
		}
	}
}

func TestUsageErrorsAreOneLine(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"login", "-x"}, "mountd login: flag provided but not defined: -x (see 'mountd login -h')\n"},
		{[]string{"--nope"}, "mountd serve: flag provided but not defined: -nope (see 'mountd serve -h')\n"},
		{[]string{"logout", "stray"}, "mountd logout: unexpected argument \"stray\" (see 'mountd logout -h')\n"},
		{[]string{"serve", "stray"}, "mountd serve: unexpected argument \"stray\" (see 'mountd serve -h')\n"},
		{[]string{"version", "x"}, "mountd version: unexpected argument \"x\" (see 'mountd version -h')\n"},
		{[]string{"status", "--json=maybe"}, "mountd status: invalid boolean value \"maybe\" for -json: parse error (see 'mountd status -h')\n"},
		{[]string{"help", "nosuch"}, "mountd help: unknown command \"nosuch\" (see 'mountd help -h')\n"},
		{[]string{"nosuch"}, "mountd: unknown command \"nosuch\" (see 'mountd help')\n"},
		{[]string{"help", "a", "b"}, "mountd help: unexpected argument \"b\" (see 'mountd help -h')\n"},
	}
	for _, c := range cases {
		code, out, errs := runArgs(t, c.args...)
		if code != exitUsage || out != "" || errs != c.want {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit %d and stderr %q", c.args, code, out, errs, exitUsage, c.want)
		}
	}
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}, {"-version"}} {
		code, out, errs := runArgs(t, args...)
		if code != 0 || errs != "" || !strings.HasPrefix(out, "mountd ") || !strings.Contains(out, "go1.") || strings.Count(out, "\n") != 1 {
			t.Errorf("%q: exit %d, %q, %q", args, code, out, errs)
		}
	}
	code, out, _ := runArgs(t, "version", "--json")
	if code != 0 || !strings.Contains(out, `"version":"`) || !strings.Contains(out, `"go":"go1.`) {
		t.Errorf("version --json: %d %q", code, out)
	}
	if s := (buildInfo{Version: "v1.2.3", Revision: "0123456789abcdef", Time: "T", Modified: true, Go: "go1.26", Platform: "linux/amd64"}).String(); s != "v1.2.3 (rev 0123456789ab, T, modified; go1.26 linux/amd64)" {
		t.Errorf("String: %q", s)
	}
}

// TestServeValidatesBeforeCreating: a bad flag is refused before the data
// directory or the mountpoint exists.
func TestServeValidatesBeforeCreating(t *testing.T) {
	root := t.TempDir()
	data, mnt := filepath.Join(root, "data"), filepath.Join(root, "mnt")
	base := []string{"--data", data, "--mount", mnt, "--listen", "127.0.0.1:1"}
	for _, extra := range [][]string{
		{"--log-format", "xml"},
		{"--log-level", "loud"},
		{"--kdf-memory", "1"},
		{"--kdf-threads", "300"},
		{"--protect", "[a"},
		{"--listen", "no-port"},
		{"--listen", "unix:"},
		{"--mount", filepath.Join(data, "inside")},
	} {
		code, _, errs := runArgs(t, append(append([]string{}, base...), extra...)...)
		if code != exitUsage || strings.Count(errs, "\n") != 1 || !strings.HasPrefix(errs, "mountd serve: ") {
			t.Errorf("%q: exit %d, stderr %q; want one usage line and exit %d", extra, code, errs, exitUsage)
		}
		for _, p := range []string{data, mnt} {
			if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("%q: %s was created (%v)", extra, p, err)
			}
		}
	}
}

func TestExitCodes(t *testing.T) {
	for err, want := range map[error]int{
		nil:                                     exitOK,
		errors.New("x"):                         exitError,
		usageError{errors.New("x")}:             exitUsage,
		fmt.Errorf("a: %w", errKeyNotSet):       exitKeyNotSet,
		reported{errKeyNotSet}:                  exitKeyNotSet,
		fmt.Errorf("a: %w", errDenied):          exitDenied,
		fmt.Errorf("a: %w", errUnreachable):     exitUnreachable,
		fmt.Errorf("a: %w", errPlaintext):       exitPlaintext,
		fmt.Errorf("a: %w", errInUse):           exitInUse,
		&datadir.HeldError{Dir: "/d"}:           exitInUse,
		fmt.Errorf("a: %w", errInterrupted):     exitInterrupted,
		usageError{fmt.Errorf("%w", errDenied)}: exitUsage,
	} {
		if got := exitCode(err); got != want {
			t.Errorf("exitCode(%v) = %d, want %d", err, got, want)
		}
	}
}

// TestClientEnvironment: MOUNTD_ADDR and MOUNTD_TOKEN_FILE set the
// client flags' defaults; a flag still wins.
func TestClientEnvironment(t *testing.T) {
	t.Setenv(envAddr, "127.0.0.1:1")
	code, _, errs := runArgs(t, "status")
	if code != exitUnreachable || !strings.Contains(errs, "127.0.0.1:1") {
		t.Fatalf("status with %s: exit %d, %q", envAddr, code, errs)
	}
	code, _, errs = runArgs(t, "status", "--addr", "unix:"+filepath.Join(t.TempDir(), "none.sock"))
	if code != exitUnreachable || strings.Contains(errs, "127.0.0.1:1") {
		t.Fatalf("--addr over the environment: exit %d, %q", code, errs)
	}
	t.Setenv(envTokenFile, filepath.Join(t.TempDir(), "missing-token"))
	code, _, errs = runArgs(t, "logout")
	if code != exitError || !strings.Contains(errs, "missing-token") {
		t.Fatalf("logout with %s naming a missing file: exit %d, %q", envTokenFile, code, errs)
	}
}

func TestParseInterspersed(t *testing.T) {
	for _, c := range []struct {
		args []string
		pos  string
		x    string
	}{
		{[]string{"id", "--x", "1"}, "[id]", "1"},
		{[]string{"--x", "1", "a", "b"}, "[a b]", "1"},
		{[]string{"a", "--x=2", "b"}, "[a b]", "2"},
		{[]string{"--", "--x", "3"}, "[--x 3]", ""},
		{[]string{"a", "--", "--x"}, "[a --x]", ""},
		{nil, "[]", ""},
	} {
		f := flag.NewFlagSet("t", flag.ContinueOnError)
		f.SetOutput(io.Discard)
		x := f.String("x", "", "")
		pos, err := parseInterspersed(f, c.args)
		if err != nil || fmt.Sprint(pos) != c.pos || *x != c.x {
			t.Errorf("%q: %q %q %v; want %s %q", c.args, pos, *x, err, c.pos, c.x)
		}
	}
}

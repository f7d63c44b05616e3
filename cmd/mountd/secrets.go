package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Secrets in: every command that takes a password or a recovery key reads
// it from one source, in this order of preference:
//   - --password-file FILE: one secret per line, in the order the prompts
//     would ask for them; the file must be a regular file (not a symlink)
//     that neither group nor others may access;
//   - stdin, when it is not a terminal: the same, one line per secret;
//   - a prompt on stderr, reading the terminal without echo.
//
// A secret is at most maxSecret bytes (a line longer than that is an
// error, never cut), is never turned into a string, lives in locked
// memory (secmem.go), and is zeroed by the caller after use; the source's
// buffer is zeroed by close.

// maxSecret is the longest password or recovery key accepted: what fits in
// the control API's 64 KiB request body with its JSON around it.
const maxSecret = 64<<10 - 64

var errSecretTooLong = fmt.Errorf("a password or recovery key is longer than %d bytes", maxSecret)

// secretOpts is the --password-file flag.
type secretOpts struct{ file string }

func secretFlags(f *flag.FlagSet) *secretOpts {
	o := &secretOpts{}
	f.StringVar(&o.file, "password-file", "", "read the password (and any other secret asked for) from `file`, one per line in the order of the prompts; it must not be accessible by group or others")
	return o
}

// secretSource hands out secrets one at a time.
type secretSource struct {
	tty    *os.File  // prompting on a terminal; nil when reading lines
	prompt io.Writer // where prompts go
	r      io.Reader // the lines: the password file or stdin
	name   string    // "stdin" or the file's name, for messages
	closer io.Closer

	buf        []byte // the read-ahead, zeroed by close
	start, end int
	eof        bool
}

// openSecrets returns the source for a command run with s and o.
func openSecrets(s stdio, o *secretOpts) (*secretSource, error) {
	src := &secretSource{prompt: s.err}
	switch {
	case o != nil && o.file != "":
		f, err := openPasswordFile(o.file)
		if err != nil {
			return nil, err
		}
		src.r, src.name, src.closer = f, o.file, f
	case isTerminal(s.in):
		src.tty = s.in.(*os.File)
		return src, nil
	default:
		src.r, src.name = s.in, "stdin"
	}
	src.buf = secretAlloc(maxSecret + 2) // a line, "\r\n" included
	return src, nil
}

// openPasswordFile opens path for reading a secret, refusing a symlink,
// anything but a regular file, and a file that group or others may access.
func openPasswordFile(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		if err == unix.ELOOP {
			return nil, fmt.Errorf("--password-file %s is a symbolic link; name the file itself", path)
		}
		return nil, fmt.Errorf("--password-file: %w", &os.PathError{Op: "open", Path: path, Err: err})
	}
	f := os.NewFile(uintptr(fd), path)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		f.Close()
		return nil, fmt.Errorf("--password-file: %w", &os.PathError{Op: "stat", Path: path, Err: err})
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		f.Close()
		return nil, fmt.Errorf("--password-file %s is not a regular file", path)
	}
	if perm := st.Mode & 0o777; perm&0o077 != 0 {
		f.Close()
		return nil, fmt.Errorf("--password-file %s has mode %04o: group and others must have no access to it (chmod 600 %s)", path, perm, path)
	}
	return f, nil
}

// interactive reports whether secrets are typed at a terminal (so a new
// password is asked twice).
func (src *secretSource) interactive() bool { return src.tty != nil }

// next returns the next secret, prompting with prompt on a terminal. It
// refuses an empty one. The caller zeroes the result.
func (src *secretSource) next(prompt string) ([]byte, error) {
	var b []byte
	var err error
	if src.tty != nil {
		fmt.Fprint(src.prompt, prompt)
		b, err = readNoEcho(src.tty, maxSecret)
		fmt.Fprintln(src.prompt)
	} else {
		b, err = src.line()
	}
	if err != nil {
		return nil, err
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("empty %s", what(prompt))
	}
	return b, nil
}

// what names the secret a prompt asks for, for messages.
func what(prompt string) string {
	return string(bytes.ToLower(bytes.TrimRight([]byte(prompt), ": ")))
}

// newPassword reads a new password: twice on a terminal, which must agree.
func (src *secretSource) newPassword(prompt, again string) ([]byte, error) {
	pw, err := src.next(prompt)
	if err != nil {
		return nil, err
	}
	if src.interactive() {
		b, err := src.next(again)
		if err != nil {
			clear(pw)
			return nil, err
		}
		same := bytes.Equal(pw, b)
		clear(b)
		if !same {
			clear(pw)
			return nil, fmt.Errorf("%w: the passwords differ", errDenied)
		}
	}
	return pw, nil
}

// line returns the next line of src.r without its "\n" or "\r\n".
func (src *secretSource) line() ([]byte, error) {
	for {
		if i := bytes.IndexByte(src.buf[src.start:src.end], '\n'); i >= 0 {
			l := src.buf[src.start : src.start+i]
			src.start += i + 1
			return src.take(l)
		}
		if src.eof {
			if src.start == src.end {
				return nil, fmt.Errorf("%s ended before every secret was read (one per line, in the order of the prompts)", src.name)
			}
			l := src.buf[src.start:src.end]
			src.start = src.end
			return src.take(l)
		}
		if src.start > 0 {
			n := copy(src.buf, src.buf[src.start:src.end])
			clear(src.buf[n:src.end])
			src.start, src.end = 0, n
		}
		if src.end == len(src.buf) {
			return nil, fmt.Errorf("%s: %w", src.name, errSecretTooLong)
		}
		n, err := src.r.Read(src.buf[src.end:])
		src.end += n
		switch {
		case errors.Is(err, io.EOF):
			src.eof = true
		case err != nil:
			return nil, fmt.Errorf("reading %s: %w", src.name, err)
		}
	}
}

// take copies a line out of the buffer into secret memory, zeroing it
// there.
func (src *secretSource) take(l []byte) ([]byte, error) {
	defer clear(l)
	l = bytes.TrimSuffix(l, []byte{'\r'})
	if len(l) > maxSecret {
		return nil, fmt.Errorf("%s: %w", src.name, errSecretTooLong)
	}
	return secretBytes(l), nil
}

// close zeroes the buffer and closes the password file.
func (src *secretSource) close() {
	clear(src.buf)
	if src.closer != nil {
		src.closer.Close()
	}
}

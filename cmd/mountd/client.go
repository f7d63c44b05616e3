package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/term"

	"github.com/mountd/mountd/control"
	"github.com/mountd/mountd/peer"
	"github.com/mountd/mountd/task"
)

// client talks to the control plane for a person at a terminal.
type client struct {
	base  string
	http  *http.Client
	token []byte
	// dial opens a connection to the daemon as the transport does
	// (checking who runs it), for callSecret.
	dial func(ctx context.Context) (net.Conn, error)
}

// clientOpts are the flags every client command takes.
type clientOpts struct {
	addr, tokenFile string
	daemonUIDs      []uint32 // besides root and the client's own uid
}

// Environment variables that set the client flags' defaults.
const (
	envAddr      = "MOUNTD_ADDR"
	envTokenFile = "MOUNTD_TOKEN_FILE"
	envDaemonUID = "MOUNTD_DAEMON_UID" // comma-separated, added to --daemon-uid
)

// clientFlags declares --addr and --token-file on f, their defaults taken
// from the environment.
func clientFlags(f *flag.FlagSet) *clientOpts {
	o := &clientOpts{}
	addr := os.Getenv(envAddr)
	if addr == "" {
		addr = control.DefaultAddr
	}
	f.StringVar(&o.addr, "addr", addr, "control plane `address`: host:port or unix:/path ($"+envAddr+")")
	f.StringVar(&o.tokenFile, "token-file", os.Getenv(envTokenFile), "`file` holding the bearer token, when the daemon uses one ($"+envTokenFile+")")
	f.Var(uidListFlag{&o.daemonUIDs}, "daemon-uid", "a `user` (uid or name) trusted to run the daemon, besides root and you (repeatable; $"+envDaemonUID+")")
	return o
}

func (o *clientOpts) client() (*client, error) {
	uids, err := trustedDaemonUIDs(o.daemonUIDs)
	if err != nil {
		return nil, err
	}
	return newClient(o.addr, o.tokenFile, trustDialer(uids))
}

// newClient returns a client whose every connection goes through d, which
// checks who runs the daemon before a byte is sent.
func newClient(addr, tokenFile string, d *peer.Dialer) (*client, error) {
	c := &client{http: &http.Client{Timeout: 3 * time.Minute}}
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		c.base = "http://localhost"
		c.dial = func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "unix", path) }
	} else {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, usageError{fmt.Errorf("--addr %q: %w", addr, err)}
		}
		c.base = "http://" + addr
		c.dial = func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
	}
	c.http.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return c.dial(ctx) }}
	if tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return nil, err
		}
		c.token = secretBytes(bytes.TrimSpace(b))
		clear(b)
	}
	return c, nil
}

// reply is the JSON envelope plus the fields the client shows.
type reply struct {
	Command string          `json:"command"`
	Success bool            `json:"success"`
	Message string          `json:"message"`
	Error   string          `json:"error"`
	KeySet  *bool           `json:"key_set"`
	Created bool            `json:"created"`
	Task    *task.Record    `json:"task"`
	Tasks   []task.Record   `json:"tasks"`
	Raw     json.RawMessage `json:"-"`
}

// call sends a request; body, when not nil, is JSON and is zeroed after
// sending (it may hold a password).
func (c *client) call(method, path string, body []byte) (*reply, int, error) {
	defer clear(body)
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		return nil, 0, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if len(c.token) > 0 {
		req.Header.Set("Authorization", "Bearer "+string(c.token))
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, 0, c.sendError(err)
	}
	return c.reply(resp)
}

// sendError explains a request that could not be sent or answered.
func (c *client) sendError(err error) error {
	if uerr := untrustedError(err); uerr != nil {
		return uerr
	}
	return fmt.Errorf("%w at %s: %v", errUnreachable, c.base, err)
}

// callSecret POSTs body, JSON holding a password or a recovery key, and
// zeroes it. net/http's client would copy the body into its connection's
// buffered writer, out of reach: the request is assembled whole in secret
// memory (secmem.go), written on a connection of its own, and zeroed.
func (c *client) callSecret(path string, body []byte) (*reply, int, error) {
	defer clear(body)
	ctx, cancel := context.WithTimeout(context.Background(), c.http.Timeout)
	defer cancel()
	conn, err := c.dial(ctx)
	if err != nil {
		return nil, 0, c.sendError(err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	head := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n",
		path, strings.TrimPrefix(c.base, "http://"), len(body))
	const auth = "Authorization: Bearer "
	n := len(head) + len("\r\n") + len(body)
	if len(c.token) > 0 {
		n += len(auth) + len(c.token) + len("\r\n")
	}
	req := secretAlloc(n)
	defer clear(req)
	w := copy(req, head)
	if len(c.token) > 0 {
		w += copy(req[w:], auth)
		w += copy(req[w:], c.token)
		w += copy(req[w:], "\r\n")
	}
	w += copy(req[w:], "\r\n")
	copy(req[w:], body)
	if _, err := conn.Write(req); err != nil {
		return nil, 0, c.sendError(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return nil, 0, c.sendError(err)
	}
	return c.reply(resp)
}

// reply reads and decodes resp, the daemon's answer.
func (c *client) reply(resp *http.Response) (*reply, int, error) {
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, resp.StatusCode, err
	}
	var r reply
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, resp.StatusCode, fmt.Errorf("unexpected reply (HTTP %d) from %s", resp.StatusCode, c.base)
	}
	r.Raw = raw
	if !r.Success {
		err := fmt.Errorf("%s (%s)", r.Message, r.Error)
		switch resp.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden, http.StatusTooManyRequests:
			err = fmt.Errorf("%w: %s (%s)", errDenied, r.Message, r.Error)
		}
		return &r, resp.StatusCode, err
	}
	return &r, resp.StatusCode, nil
}

func (c *client) status() (*control.Status, error) {
	r, _, err := c.call(http.MethodGet, "/api/system/encryption-status", nil)
	if err != nil {
		return nil, err
	}
	var st control.Status
	if err := json.Unmarshal(r.Raw, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// isTerminal reports whether r is a terminal (passwords are then prompted
// for without echo; see secrets.go).
func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// jsonObject encodes {"k1": v1, ...} with byte-slice values, without
// making strings of them, into secret memory of exactly its size (a buffer
// that grew would leave copies behind). The caller zeroes it.
func jsonObject(kv ...any) []byte {
	n := 2 + len(kv)/2 - 1 // braces and commas
	for i := 0; i < len(kv); i += 2 {
		n += jsonStringLen([]byte(kv[i].(string))) + 1 + jsonStringLen(kv[i+1].([]byte))
	}
	b := secretAlloc(n)[:0]
	b = append(b, '{')
	for i := 0; i < len(kv); i += 2 {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, []byte(kv[i].(string)))
		b = append(b, ':')
		b = appendJSONString(b, kv[i+1].([]byte))
	}
	b = append(b, '}')
	if len(b) != n {
		panic("jsonObject: size mismatch")
	}
	return b
}

// jsonStringLen is the length of appendJSONString's output for s.
func jsonStringLen(s []byte) int {
	n := 2
	for len(s) > 0 {
		r, k := utf8.DecodeRune(s)
		switch {
		case r == '"' || r == '\\':
			n += 2
		case r < 0x20:
			n += 6
		default:
			n += k
		}
		s = s[k:]
	}
	return n
}

func appendJSONString(b, s []byte) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for len(s) > 0 {
		r, n := utf8.DecodeRune(s)
		switch {
		case r == '"' || r == '\\':
			b = append(b, '\\', byte(r))
		case r < 0x20:
			b = append(b, '\\', 'u', '0', '0', hex[r>>4], hex[r&0xf])
		default:
			b = append(b, s[:n]...)
		}
		s = s[n:]
	}
	return append(b, '"')
}

var loginCmd = &command{
	name:    "login",
	summary: "log in: set the file encryption key from the password (the first login creates it)",
	help: `Prompts for the password without echo (twice when none exists yet). With
--password-file, or when stdin is not a terminal, reads one line from it (for
scripts and systemd units).`,
	group: groupClient,
	setup: func(f *flag.FlagSet) runFunc {
		o := clientFlags(f)
		so := secretFlags(f)
		return func(s stdio, _ []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			st, err := c.status()
			if err != nil {
				return err
			}
			src, err := openSecrets(s, so)
			if err != nil {
				return err
			}
			defer src.close()
			// Confirm a new password typed by a person; a script gets no
			// second prompt.
			ask := src.next
			if !st.PasswordSet {
				ask = func(p string) ([]byte, error) { return src.newPassword(p, "No password is set yet. Repeat it: ") }
			}
			pw, err := ask("Password: ")
			if err != nil {
				return err
			}
			defer clear(pw)
			r, _, err := c.callSecret("/api/system/login", jsonObject("password", pw))
			if err != nil {
				return err
			}
			fmt.Fprintln(s.out, r.Message)
			if r.Created {
				fmt.Fprintln(s.err, "There is no recovery key: if this password is forgotten, the data is lost. "+
					"Make one with 'mountd recovery-key' while the daemon is stopped (or create passwords with 'mountd init').")
			}
			return nil
		}
	},
}

var logoutCmd = &command{
	name:    "logout",
	summary: "log out: clear the key (encrypted files become unreadable until the next login)",
	group:   groupClient,
	setup: func(f *flag.FlagSet) runFunc {
		o := clientFlags(f)
		return func(s stdio, _ []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			r, _, err := c.call(http.MethodPost, "/api/system/logout", nil)
			if err != nil {
				return err
			}
			fmt.Fprintln(s.out, r.Message)
			return nil
		}
	},
}

var statusCmd = &command{
	name:    "status",
	summary: "show the daemon's state; exit 0 when the key is set, 2 when not",
	help: `Exit status: 0 the key is set, 2 the key is not set, 3 refused (token), 4 the daemon
cannot be reached, 1 any other error. --json prints the encryption-status reply
without its envelope (see docs/API.md).`,
	group: groupClient,
	setup: func(f *flag.FlagSet) runFunc {
		o := clientFlags(f)
		scan := f.Bool("scan", false, "also count encrypted and plaintext protected files (walks the data directory)")
		asJSON := f.Bool("json", false, "print JSON (the encryption-status reply without command, success and message)")
		return func(s stdio, _ []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			path := "/api/system/encryption-status"
			if *scan {
				path += "?scan=true"
			}
			r, _, err := c.call(http.MethodGet, path, nil)
			if err != nil {
				return err
			}
			var st control.Status
			if err := json.Unmarshal(r.Raw, &st); err != nil {
				return err
			}
			if *asJSON {
				if err := writeStatusJSON(s.out, r.Raw); err != nil {
					return err
				}
			} else {
				printStatus(s.out, &st)
			}
			if !st.KeySet {
				return reported{errKeyNotSet}
			}
			return nil
		}
	},
}

// writeStatusJSON prints the status reply raw minus the envelope, indented.
func writeStatusJSON(w io.Writer, raw []byte) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return err
	}
	for _, k := range []string{"command", "success", "message", "error"} {
		delete(m, k)
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func printStatus(w io.Writer, st *control.Status) {
	yesno := map[bool]string{true: "yes", false: "no"}
	fmt.Fprintf(w, "key set:      %s\n", yesno[st.KeySet])
	fmt.Fprintf(w, "password set: %s\n", yesno[st.PasswordSet])
	fmt.Fprintf(w, "cipher:       %s\n", st.Cipher)
	fmt.Fprintf(w, "kdf:          %s t=%d m=%d MiB p=%d\n", st.KDF.Name, st.KDF.Time, st.KDF.MemoryKiB/1024, st.KDF.Threads)
	fmt.Fprintf(w, "protect:      %s\n", strings.Join(st.Protect, " "))
	if st.PendingEncryption > 0 {
		fmt.Fprintf(w, "pending:      %d protected files wait for encryption (written while logged out, or still open)\n", st.PendingEncryption)
	}
	if st.Files != nil {
		fmt.Fprintf(w, "files:        %d encrypted, %d plaintext\n", st.Files.Encrypted, st.Files.Plaintext)
	}
	if t := st.Task; t != nil {
		fmt.Fprintf(w, "task:         %s %s %s\n", t.ID, t.Kind, describeTask(t))
	}
	printLockStatus(w, st)
	if d := st.Daemon; d != nil {
		fmt.Fprintf(w, "mountpoint:   %s\n", d.Mountpoint)
		fmt.Fprintf(w, "data:         %s\n", d.DataDir)
		fmt.Fprintf(w, "listen:       %s\n", d.Listen)
		fmt.Fprintf(w, "daemon:       pid %d, up %s, mountd %s\n", d.PID, time.Duration(d.UptimeS)*time.Second, d.Version)
	}
}

var passwdCmd = &command{
	name:    "passwd",
	summary: "change the password (nothing is re-encrypted)",
	help: `Asks for the current password, then the new one twice. With --password-file, or
when stdin is not a terminal, reads the current and the new password, one per
line (a third line repeating the new one is ignored).`,
	group: groupClient,
	setup: func(f *flag.FlagSet) runFunc {
		o := clientFlags(f)
		so := secretFlags(f)
		return func(s stdio, _ []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			src, err := openSecrets(s, so)
			if err != nil {
				return err
			}
			defer src.close()
			old, err := src.next("Current password: ")
			if err != nil {
				return err
			}
			defer clear(old)
			nw, err := src.newPassword("New password: ", "Repeat the new password: ")
			if err != nil {
				return err
			}
			defer clear(nw)
			r, _, err := c.callSecret("/api/system/change_password", jsonObject("old_password", old, "new_password", nw))
			if err != nil {
				return err
			}
			fmt.Fprintln(s.out, r.Message)
			return nil
		}
	},
}

package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/mountd/mountd/peer"
)

// Who may talk to whom. The daemon lets root, its own uid and --allow-uid
// users control the key (package control checks each caller). The client
// sends nothing (no password, no token) to a listener unless root, the
// client's own uid or a --daemon-uid / MOUNTD_DAEMON_UID user runs it
// (package peer checks the socket before the first byte).

// parseUID turns a uid or a user name into a uid.
func parseUID(s string) (uint32, error) {
	s = strings.TrimSpace(s)
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return uint32(n), nil
	}
	u, err := user.Lookup(s)
	if err != nil {
		return 0, fmt.Errorf("user %q: %w", s, err)
	}
	n, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("user %q: uid %q: %w", s, u.Uid, err)
	}
	return uint32(n), nil
}

// uidNames shows a uid with its user name when there is one.
func uidName(uid uint32) string {
	id := strconv.FormatUint(uint64(uid), 10)
	if u, err := user.LookupId(id); err == nil {
		return fmt.Sprintf("uid %s (%s)", id, u.Username)
	}
	return "uid " + id
}

// uidListFlag is a repeatable flag of uids or user names.
type uidListFlag struct{ uids *[]uint32 }

func (f uidListFlag) String() string {
	if f.uids == nil {
		return ""
	}
	var s []string
	for _, u := range *f.uids {
		s = append(s, strconv.FormatUint(uint64(u), 10))
	}
	return strings.Join(s, ",")
}

func (f uidListFlag) Set(s string) error {
	uid, err := parseUID(s)
	if err != nil {
		return err
	}
	*f.uids = append(*f.uids, uid)
	return nil
}

// trustedDaemonUIDs are the uids the client accepts as the daemon's:
// root, its own, the --daemon-uid ones and those in MOUNTD_DAEMON_UID.
func trustedDaemonUIDs(flagged []uint32) ([]uint32, error) {
	uids := append([]uint32{0, uint32(os.Geteuid())}, flagged...)
	if env := os.Getenv(envDaemonUID); env != "" {
		for s := range strings.SplitSeq(env, ",") {
			uid, err := parseUID(s)
			if err != nil {
				return nil, usageError{fmt.Errorf("%s: %w", envDaemonUID, err)}
			}
			uids = append(uids, uid)
		}
	}
	return uids, nil
}

func trustDialer(uids []uint32) *peer.Dialer {
	return &peer.Dialer{Trusted: func(uid uint32) bool { return slices.Contains(uids, uid) }}
}

// untrustedError turns the dialer's refusal into what the user reads:
// what was found, that nothing was sent, and what to do if the listener
// is the real daemon after all.
func untrustedError(err error) error {
	var ue *peer.UntrustedError
	if !errors.As(err, &ue) {
		return nil
	}
	if ue.Err != nil {
		return fmt.Errorf("%w: refusing to talk to %s: cannot tell which user runs the %s there (%v); "+
			"mountd sends passwords and tokens only to a daemon on this machine whose user it can check. Nothing was sent",
			errDenied, ue.Addr, ue.What, ue.Err)
	}
	return fmt.Errorf("%w: refusing to talk to %s: its %s belongs to %s, not to root or to you (%s), "+
		"so it may be another user's program waiting for your password. Nothing was sent. "+
		"If the daemon really runs as that user, pass --daemon-uid %d (or set %s)",
		errDenied, ue.Addr, ue.What, uidName(ue.UID), uidName(uint32(os.Geteuid())), ue.UID, envDaemonUID)
}

// checkTokenFile refuses a token file that other users could read or
// replace: group or other permission bits, another owner than root or the
// daemon's user, or not a regular file.
func checkTokenFile(f *os.File) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("token file %s: cannot read its owner", f.Name())
	}
	switch me := uint32(os.Geteuid()); {
	case !fi.Mode().IsRegular():
		return fmt.Errorf("token file %s is not a regular file", f.Name())
	case fi.Mode().Perm()&0o077 != 0:
		return fmt.Errorf("token file %s has mode %04o: other users could read or replace the token; run chmod 600 %s",
			f.Name(), fi.Mode().Perm(), f.Name())
	case st.Uid != 0 && st.Uid != me:
		return fmt.Errorf("token file %s belongs to %s; it must belong to root or to the daemon's user (%s)",
			f.Name(), uidName(st.Uid), uidName(me))
	}
	return nil
}

// readPrivateFile reads a file that checkTokenFile accepts.
func readPrivateFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if err := checkTokenFile(f); err != nil {
		return nil, err
	}
	return io.ReadAll(io.LimitReader(f, 64<<10))
}

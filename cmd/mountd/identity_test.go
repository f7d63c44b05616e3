package main

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/mountd/mountd/peer"
)

func TestParseUID(t *testing.T) {
	for in, want := range map[string]uint32{"0": 0, "65534": 65534, " 1000 ": 1000, "root": 0} {
		if got, err := parseUID(in); err != nil || got != want {
			t.Errorf("parseUID(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "no-such-user-mountd", "-1", "4294967296"} {
		if got, err := parseUID(in); err == nil {
			t.Errorf("parseUID(%q) = %d, want an error", in, got)
		}
	}
	// The flags reject a bad user at parse time, with the flag's name.
	code, _, errs := runArgs(t, "serve", "--allow-uid", "no-such-user-mountd")
	if code != exitUsage || !strings.Contains(errs, "allow-uid") {
		t.Errorf("--allow-uid unknown user: exit %d, %q", code, errs)
	}
	code, _, errs = runArgs(t, "status", "--daemon-uid", "no-such-user-mountd")
	if code != exitUsage || !strings.Contains(errs, "daemon-uid") {
		t.Errorf("--daemon-uid unknown user: exit %d, %q", code, errs)
	}
}

func TestTrustedDaemonUIDs(t *testing.T) {
	t.Setenv(envDaemonUID, "7, root,8")
	uids, err := trustedDaemonUIDs([]uint32{9})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []uint32{0, uint32(os.Geteuid()), 7, 8, 9} {
		if !slices.Contains(uids, want) {
			t.Errorf("%d not trusted: %v", want, uids)
		}
	}
	if slices.Contains(uids, 10) {
		t.Error("10 trusted")
	}
	t.Setenv(envDaemonUID, "7,no-such-user-mountd")
	if _, err := trustedDaemonUIDs(nil); err == nil || !strings.Contains(err.Error(), envDaemonUID) {
		t.Errorf("bad %s: %v", envDaemonUID, err)
	}
}

// TestListenNeedsLoopbackOrToken: serve refuses a non-loopback --listen
// without --token-file before creating anything, and says why.
func TestListenNeedsLoopbackOrToken(t *testing.T) {
	dir := t.TempDir()
	data, mnt := filepath.Join(dir, "d"), filepath.Join(dir, "m")
	code, _, errs := runArgs(t, "serve", "--data", data, "--mount", mnt, "--listen", "0.0.0.0:8080")
	if code != exitUsage || !strings.Contains(errs, "not a loopback address") || !strings.Contains(errs, "--token-file") {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if _, err := os.Stat(data); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the data directory was created: %v", err)
	}
}

func TestCheckTokenFile(t *testing.T) {
	dir := t.TempDir()
	for mode, ok := range map[os.FileMode]bool{0o600: true, 0o400: true, 0o640: false, 0o604: false, 0o620: false, 0o666: false} {
		p := filepath.Join(dir, mode.String())
		os.WriteFile(p, []byte("token"), 0o600)
		os.Chmod(p, mode)
		_, err := readPrivateFile(p)
		if (err == nil) != ok {
			t.Errorf("mode %04o: %v", mode, err)
		}
		if err != nil && !strings.Contains(err.Error(), "chmod 600") {
			t.Errorf("mode %04o: the error does not say what to do: %v", mode, err)
		}
	}
	if _, err := readPrivateFile(dir); err == nil {
		t.Error("a directory was accepted as a token file")
	}
	if os.Geteuid() == 0 {
		p := filepath.Join(dir, "theirs")
		os.WriteFile(p, []byte("token"), 0o600)
		os.Chown(p, 65534, 65534)
		if _, err := readPrivateFile(p); err == nil || !strings.Contains(err.Error(), "belongs to uid 65534") {
			t.Errorf("another user's token file: %v", err)
		}
	}
}

func TestUntrustedErrorMessage(t *testing.T) {
	err := untrustedError(&peer.UntrustedError{Addr: "127.0.0.1:8080", What: "listener", UID: 65534})
	if !errors.Is(err, errDenied) || exitCode(err) != exitDenied {
		t.Fatalf("%v: exit %d", err, exitCode(err))
	}
	for _, want := range []string{"refusing to talk to 127.0.0.1:8080", "uid 65534", "Nothing was sent", "--daemon-uid 65534"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message lacks %q: %v", want, err)
		}
	}
	err = untrustedError(&peer.UntrustedError{Addr: "10.0.0.1:8080", What: "listener", Err: peer.ErrNotFound})
	if !errors.Is(err, errDenied) || !strings.Contains(err.Error(), "cannot tell which user runs") {
		t.Errorf("unknown owner: %v", err)
	}
	if untrustedError(errors.New("connection refused")) != nil {
		t.Error("an ordinary dial error taken for a refusal")
	}
}

package fs

import (
	"sort"
	"testing"

	"github.com/hanwen/go-fuse/v2/posixtest"
)

// loopbackFailures names the posixtest cases that also fail on go-fuse's
// plain loopback (fs.NewLoopbackRoot) on this kernel, with the reason.
// TestPosixLoopback runs them on the loopback to keep this list honest.
var loopbackFailures = map[string]string{}

func posixNames() []string {
	var names []string
	for name := range posixtest.All {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

func runPosix(t *testing.T, o envOpts) {
	for _, name := range posixNames() {
		t.Run(name, func(t *testing.T) {
			if reason, ok := loopbackFailures[name]; ok && !o.loopback {
				t.Skipf("fails on go-fuse's plain loopback too: %s", reason)
			}
			e := newEnv(t, o)
			posixtest.All[name](t, e.mnt)
		})
	}
}

// TestPosixLoopback is the reference: go-fuse's own loopback.
func TestPosixLoopback(t *testing.T) {
	runPosix(t, envOpts{loopback: true})
}

// TestPosixDefault runs the suite with the default protect pattern (*.bin)
// and the key set: some files are encrypted, most are passed through.
func TestPosixDefault(t *testing.T) {
	runPosix(t, envOpts{})
}

// TestPosixAllEncrypted protects every file, with the key set: every file
// the suite creates is encrypted.
func TestPosixAllEncrypted(t *testing.T) {
	runPosix(t, envOpts{protect: []string{"*"}})
}

// TestPosixAllProtectedLoggedOut protects every file without the key:
// every file is plaintext but goes through the daemon (no passthrough).
func TestPosixAllProtectedLoggedOut(t *testing.T) {
	runPosix(t, envOpts{protect: []string{"*"}, loggedOut: true})
}

// Package control is mountd's HTTP control plane: the /api/system/...
// endpoints that log in (set the file-encryption key), log out (clear it),
// change the password, report encryption status and run the
// encrypt-existing-files task.
//
// The package owns the wire contract: the JSON envelope (command, success,
// message and, on failure, a stable error code), the request guards, and the
// access log. The guards keep two attackers from driving the daemon:
//   - another local user: every connection's caller is identified by the
//     kernel (package peer: SO_PEERCRED, or the TCP socket table), and only
//     root, the daemon's uid and allowed uids may call anything but plain
//     encryption-status (caller.go); password guessing backs off per caller;
//   - a malicious web page in the user's browser: loopback Host only, no
//     foreign Origin or cross-site Sec-Fetch-Site on state-changing calls,
//     JSON-only password bodies of bounded size, one KDF run at a time, an
//     optional bearer token.
//
// Every endpoint that takes a password goes through passwordCall, which
// holds the steps they share.
//
// Handlers talk to a small Backend interface declared here. Service is the
// real Backend, built on crypto's Keyring and verifier file and on two
// interfaces declared here that the filesystem side satisfies (FileScanner,
// TaskRunner). Tests use a fake Backend.
//
// What control must not do:
//   - import fs or go-fuse (only cmd/mountd wires fs and control together);
//   - keep a copy of the master key, or a password beyond the request that
//     carried it (password bytes are zeroed after use and never turned into
//     a Go string where that can be avoided);
//   - log a password, a key, a request body or a raw URL with its query;
//   - put internal error text in a 5xx response body;
//   - use the global logrus logger, or send CORS headers;
//   - let a request whose caller is unknown past the caller check (fail
//     closed), or trust a uid the client states rather than the kernel.
package control

// Package control is mountd's HTTP control plane: the /api/system/...
// endpoints that log in (set the file-encryption key), log out (clear it),
// change the password, report encryption status and run the
// encrypt-existing-files task.
//
// The package owns the wire contract: the JSON envelope (command, success,
// message and, on failure, a stable error code), the request guards that keep
// a malicious web page in the user's browser from driving the daemon (loopback
// Host only, no foreign Origin or cross-site Sec-Fetch-Site on state-changing
// calls, JSON-only password bodies of bounded size, login backoff, one KDF run
// at a time, an optional bearer token), and the access log.
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
//   - use the global logrus logger, or send CORS headers.
package control

// Package crypto is mountd's leaf package: the encrypted content format, the
// password verifier file, and the Keyring that holds the master key in memory.
//
// It imports only the standard library and golang.org/x/crypto. It never logs
// and never puts key bytes, passwords or plaintext into an error string.
//
// The byte layouts are specified in docs/FORMAT.md; this package is the
// reference implementation of that document.
package crypto

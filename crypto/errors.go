package crypto

import (
	"errors"
	"fmt"
)

// Sentinel errors. They are the contract with the fs and control packages:
// callers match them with errors.Is. Wrapped errors carry context (an offset,
// a block number, a file name) but never key bytes, passwords or plaintext.
var (
	// ErrLocked means no master key is set (never logged in, or logged out).
	ErrLocked = errors.New("crypto: key not set")

	// ErrUnauthenticated means a ciphertext block or wrapped key failed
	// AES-GCM authentication: the data was tampered with or corrupted.
	ErrUnauthenticated = errors.New("crypto: authentication failed")

	// ErrBadHeader means a file carries the mountd magic but its header is
	// malformed or of an unsupported version.
	ErrBadHeader = errors.New("crypto: bad file header")

	// ErrBadSize means a ciphertext size that no plaintext maps to (a
	// truncated header or a trailing fragment too short to hold a block).
	ErrBadSize = errors.New("crypto: impossible ciphertext size")

	// ErrWrongKey means a file was encrypted under a different master key
	// than the one in the Keyring (its key-id does not match).
	ErrWrongKey = errors.New("crypto: file encrypted under another master key")

	// ErrInvalidPassword means the password did not unwrap the master key.
	ErrInvalidPassword = errors.New("crypto: invalid password")

	// ErrInvalidRecoveryKey means a well-formed recovery key did not
	// unwrap the master key: it is not this verifier's recovery key.
	ErrInvalidRecoveryKey = errors.New("crypto: invalid recovery key")

	// ErrNoRecoveryKey means the verifier has no recovery slot.
	ErrNoRecoveryKey = errors.New("crypto: no recovery key is set")

	// ErrNoVerifier means the verifier file does not exist.
	ErrNoVerifier = errors.New("crypto: no verifier")

	// ErrVerifierExists means a verifier already exists and would have been
	// overwritten.
	ErrVerifierExists = errors.New("crypto: verifier already exists")

	// ErrBadVerifier means the verifier file is malformed, truncated, or
	// records KDF parameters outside the accepted range.
	ErrBadVerifier = errors.New("crypto: malformed verifier")

	// ErrKeyAlreadySet means Unlock was called with a different key while
	// one is set.
	ErrKeyAlreadySet = errors.New("crypto: a different key is already set")
)

// BlockError locates a content error: the block whose ciphertext failed.
// It wraps ErrUnauthenticated or ErrBadSize.
type BlockError struct {
	Block int64
	Err   error
}

func (e *BlockError) Error() string { return fmt.Sprintf("%v: block %d", e.Err, e.Block) }

// Unwrap returns the sentinel.
func (e *BlockError) Unwrap() error { return e.Err }

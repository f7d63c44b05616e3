package migrate

import (
	"context"

	"github.com/mountd/mountd/crypto"
	"github.com/mountd/mountd/fs"
)

// converter is what the migration needs of the filesystem: fsConverter
// over *fs.Root in the daemon, a fake in the tests.
type converter interface {
	walk(ctx context.Context, found func(fs.Candidate) error, unreadable func(rel string, err error) error) error
	prepare(ctx context.Context, rel string, o fs.PrepareOptions) (prepared, fs.Outcome)
	syncDir(rel string) error
	removeTemp(rel string) error
}

// prepared is a conversion between its two halves (*fs.Conversion).
type prepared interface {
	Rel() string
	Upgrade() bool // re-encrypts a version 1 file (else encrypts plaintext)
	SyncFS() error
	Sync() error
	Commit(fs.CommitOptions) fs.Outcome
	Abort()
}

// keyState is what the migration needs of the Keyring: whether a key is
// set, and a call at logout.
type keyState interface {
	IsSet() bool
	OnClear(fn func()) (remove func())
}

var _ keyState = (*crypto.Keyring)(nil)

// fsConverter is the converter of a mounted filesystem.
type fsConverter struct{ r *fs.Root }

func (c fsConverter) walk(ctx context.Context, found func(fs.Candidate) error, unreadable func(string, error) error) error {
	return c.r.WalkProtected(ctx, found, unreadable)
}

func (c fsConverter) prepare(ctx context.Context, rel string, o fs.PrepareOptions) (prepared, fs.Outcome) {
	p, out := c.r.PrepareConversion(ctx, rel, o)
	if p == nil {
		return nil, out // not a typed nil in the interface
	}
	return p, out
}

func (c fsConverter) syncDir(rel string) error    { return c.r.SyncDir(rel) }
func (c fsConverter) removeTemp(rel string) error { return c.r.RemoveTemp(rel) }

// Package migrate is the encrypt_existing_files task: it walks the backing
// tree and encrypts in place every plaintext regular file with a protected
// name outside auth/, reporting its progress as a task.Record.
//
// It works over a narrow API of package fs (the FUSE frontend, which owns
// every access to the backing directory): WalkProtected to find the files,
// PrepareConversion to write and check an encrypted copy while the inode
// is claimed (opens through the mount wait), Conversion.SyncFS/Sync and
// Commit to make copies durable and put them in place, SyncDir and
// RemoveTemp. So a crash at any moment leaves each file whole, old
// plaintext or new ciphertext, and at worst a temp file that
// fs.RemoveStaleTemps deletes at the next start. Files open through the
// mount are retried a few times, then counted busy; re-running the task
// resumes (what is encrypted is skipped).
//
// Its parts, each a small type tested without FUSE or root against a fake
// converter (fake_test.go): the Migrator (tasks, one at a time), a
// migration (count, passes, retries, outcome), the batcher (many copies
// made durable by one syncfs), the remover (old plaintexts removed in
// parallel) and the spaceGate (one file at a time once a copy did not
// fit on the disk).
//
// Locks: Migrator.mu guards the tasks and their records and is taken
// before the Keyring's (Start) and never while a file is converted;
// spaceGate.mu, batcher.mu, remover.mu and passState.mu are the
// migration's own, each held briefly and never across a call into fs,
// except spaceGate.mu, which a worker holds (shared, or exclusive once the
// disk is full) around PrepareConversion. A conversion's claim is held
// from PrepareConversion until Commit or Abort; fs/doc.go has the order of
// the filesystem's locks and the rule that no kernel notification runs
// under a claim: a batch's commit collects the notifications of its files
// (CommitOptions.DeferNotify) and runs them once it has dropped the last
// claim of the batch.
//
// What it must never do: touch the backing directory other than through
// fs (fs's TestBackingConfined checks this package too); import
// control or go-fuse; keep a copy of the key (the Keyring is asked, and
// its OnClear listener cancels a running task at logout); log file
// contents.
package migrate

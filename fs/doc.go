// Package fs is mountd's FUSE filesystem: a go-fuse node tree over the
// backing directory that stores protected files encrypted and serves them
// decrypted while the Keyring holds a key.
//
// What it does:
//   - Everything the backing filesystem does (lookup, readdir, create, read,
//     write, truncate, rename, link, symlink, unlink, mkdir, rmdir, chmod,
//     chown, utimens, xattrs, statfs, fsync), mirroring go-fuse's loopback.
//   - The content of a backing file decides whether it is encrypted (the
//     crypto header); the name (a protect glob, or a temporary of a
//     protected name: protect.go) decides only whether new content is
//     encrypted: such a file created, or first written while empty, with the
//     key set is stored encrypted, and one still plaintext is encrypted in
//     place before a write adds to it (convert_open.go).
//   - While logged out, opening, reading, writing or truncating an encrypted
//     file fails with EACCES (also on descriptors opened before the logout);
//     stat shows the plaintext size either way.
//   - A block that fails authentication is EIO, logged once per inode.
//   - auth/ at the backing root is invisible and cannot be created through
//     the mount.
//   - A plaintext file renamed onto a protected name is encrypted in place
//     shortly after, in the background, and protected files written while
//     logged out after the next login, also after a restart (converter.go,
//     the durable record in pending.go).
//   - For package migrate (the encrypt_existing_files task), a narrow API
//     over the same code: WalkProtected, PrepareConversion and
//     Conversion.Commit, SyncDir, RemoveTemp. fs itself stays the FUSE
//     frontend and knows nothing of tasks.
//
// What it must never do:
//   - Hand the kernel a passthrough handle (a backing fd) for a protected or
//     encrypted file: the kernel would then read and write the backing file
//     itself, serving ciphertext and storing plaintext. Only non-protected
//     plaintext files get passthrough handles (passthroughFile); everything
//     else gets a cryptFile, which does not implement FilePassthroughFder.
//   - Let the kernel keep plaintext of an encrypted file after logout: those
//     files are opened with FOPEN_DIRECT_IO (never KEEP_CACHE), every inode
//     that served plaintext is recorded, and a Keyring.OnClear listener calls
//     NotifyContent(0, 0) on each of them, which drops page-cache pages and
//     unmaps mmaps, before the key is zeroed.
//   - Lose a write the kernel holds for us at logout: dirty pages of shared
//     mappings are written back (encrypted) before the lock (beforeClear),
//     and a write-back that fails is logged with the path (Write) and
//     reported by the application's next fsync or msync.
//   - Call a kernel notification while holding a filesystem lock, or from
//     inside a FUSE request handler: both can deadlock.
//   - Touch anything outside the backing directory, or follow a symlink in
//     it: the backing*.go files are the only code that reaches files by
//     name, relative to directory descriptors checked to be the node's
//     inode, never following a symlink (TestBackingConfined), and they act
//     for other users only on objects pinned by descriptor.
//   - Import the control package, or log key material or plaintext.
//
// Known limits: a backing file whose magic was destroyed reads as
// plaintext (with one Warn; EIO with RequireEncryption), since content
// decides, unless its header still names the key (EIO); an O_TMPFILE
// file can be linked into the tree only while one of our handles on it is
// open (its descriptor is how we reach it); a page of a MAP_PRIVATE
// mapping that the application wrote is its own copy, which the kernel
// keeps after logout (it was never the file's).
//
// # Locks
//
// The complete lock order: a goroutine that holds a lock of the list takes
// only locks further down (the other files point here):
//
//  1. crypto.Keyring's stateMu: held by Clear (logout) for its whole run,
//     including the OnBeforeClear and OnClear listeners below; no request
//     handler takes it.
//  2. cryptFile.lmu (file_lock.go): a handle's lock descriptor.
//  3. inodeState.mu (openfile.go): the content of one inode; shared for
//     reads, exclusive for every change through lockChange/unlockChange,
//     which first waits for the inode's prefetches.
//  4. Root.gate (logout.go): shared around each plaintext-serving crypto
//     call, exclusive only in the logout listener.
//  5. inodeState.pfMu (prefetch.go): the inode's list of prefetches.
//  6. Leaves, never held while taking another lock: the Keyring's mu (its
//     read hold is taken by each crypto.File call through Keyring.acquire,
//     and its cipher cache cmu under it), Root.servedMu, the prefetch
//     pool's mu, fileTable.mu (openfile.go: the table and its claims; its
//     cond waits only for a claim), handleSet.mu (openfile.go: handles not
//     yet released), dirCache.mu (backing_dirs.go: directory
//     descriptors of nodes), node.mu (a node's cached class), converter.mu
//     (converter.go; the pending record's pendingLog.mu, pending.go, is
//     taken under it and is the last), commitCaps.mu (commit.go), xattratMissing (backing_obj.go),
//     the Keyring's lmu (its listeners), and commitCaps.names (commit.go):
//     taken shared by unlink, rename and link through the mount around
//     their one backing call, exclusively by a rename commit around its
//     check and rename (while it holds a claim); nothing is taken under
//     it. The migration's locks are its own and are taken before any of
//     these (migrate/doc.go).
//
// Waits that are not locks, and what makes them safe:
//   - A claim (a conversion's "converting" entry in the table) makes an
//     open or truncate of that inode wait in acquire, inside a FUSE
//     request, with the kernel holding the directory's lock. So whoever
//     holds a claim must not wait for a FUSE request or a kernel lock: it
//     copies, checks and renames in the backing directory only. A
//     conversion that commits by exchange keeps the claimed original open
//     until it drops the claim, so the inode number it claims cannot be
//     given to a file created meanwhile (whose create would wait for a
//     claim that is not its own).
//   - lockChange waits for the inode's prefetch goroutines, which take no
//     lock of the inode (only the Keyring's read hold).
//   - The prefetch pool never blocks: without a free buffer there is no
//     prefetch.
//
// Kernel notifications: every Notify* call (NotifyContent at logout,
// NotifyEntry after a conversion's commit, in the converter as in the
// migration) runs with no claim and no lock held that a request handler
// can wait on, and never inside a request handler. The kernel takes its
// own inode and page locks to act on them, and a request that holds those
// may be waiting for us: a conversion's commit drops its claim before it
// tells the kernel the name was replaced, and the migration's batch
// commit notifies only after the last claim of its batch is dropped
// (CommitOptions.DeferNotify); the logout listeners (before and after
// the lock) copy or swap the served set under gate and notify after
// releasing it, and a write-back the first one causes takes no lock they
// hold.
//
// # Logout
//
// The whole chain, from the request to the reply:
//
//  1. control: POST or GET /api/system/logout -> control.Service.Logout
//     -> Keyring.Clear. Package autolock's policies (idle, suspend,
//     session lock) go through the same Service.Logout (a Locker wired in
//     cmd/mountd); the daemon's shutdown stops the migration and then
//     calls Keyring.Clear itself.
//  2. Keyring.Clear takes stateMu and, with a key set, marks a logout
//     pending (LogoutPending: content reads get ErrLocked, writes still
//     work, extensions stop at their next chunk) and runs the
//     OnBeforeClear listeners with the key still set — flush, then lock:
//     - Root.beforeClear (logout.go): takes gate exclusively (waits for
//     plaintext-serving calls in flight), copies the served set,
//     releases gate, discards the prefetches, then NotifyContent(0, 0)
//     on each served inode holding no filesystem lock: the kernel writes
//     back the dirty pages of shared mappings (WRITE requests, served
//     by other goroutines, encrypted under the key) and unmaps them; no
//     page comes back, since faulting one in needs a read.
//  3. Clear then marks the key unset under mu (new crypto calls get
//     ErrLocked, so new reads and writes of encrypted files get EACCES),
//     which waits for the crypto calls in flight, and runs the OnClear
//     listeners with stateMu held and mu released:
//     - Root.onClear (logout.go): takes gate exclusively, which waits
//     for every plaintext-serving operation to finish, swaps out the set
//     of served inodes, releases gate, discards and zeroes every
//     prefetch buffer (clearPrefetches), then asks the kernel to drop the
//     cached pages and mappings of each served inode (NotifyContent(0,
//     0)), holding no filesystem lock;
//     - the migration's listener cancels the running task (its workers
//     stop at their next chunk; a copy being written fails with
//     ErrLocked and is removed).
//  4. Clear zeroes the key page, drops the derived ciphers and returns.
//  5. control writes the seed's byte-exact reply.
//
// So when the reply is sent, no plaintext of an encrypted file is in the
// daemon's buffers or the kernel's caches, and no key byte in memory.
package fs

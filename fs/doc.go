// Package fs is mountd's FUSE filesystem: a go-fuse node tree over the
// backing directory that stores protected files encrypted and serves them
// decrypted while the Keyring holds a key.
//
// What it does:
//   - Everything the backing filesystem does (lookup, readdir, create, read,
//     write, truncate, rename, link, symlink, unlink, mkdir, rmdir, chmod,
//     chown, utimens, xattrs, statfs, fsync), mirroring go-fuse's loopback.
//   - The content of a backing file decides whether it is encrypted (the
//     crypto header); the name (a protect glob) decides only whether new
//     content is encrypted: a protected file created, or first written while
//     empty, with the key set is stored encrypted.
//   - While logged out, opening, reading, writing or truncating an encrypted
//     file fails with EACCES (also on descriptors opened before the logout);
//     stat shows the plaintext size either way.
//   - A block that fails authentication is EIO, logged once per inode.
//   - auth/ at the backing root is invisible and cannot be created through
//     the mount.
//   - A plaintext file renamed onto a protected name while the key is set is
//     encrypted in place shortly after, in the background (convert.go).
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
//   - Call a kernel notification while holding a filesystem lock, or from
//     inside a FUSE request handler: both can deadlock.
//   - Touch anything outside the backing directory, or follow a symlink in
//     it: backing.go is the only code that reaches files by name, relative
//     to directory descriptors checked to be the node's inode, never
//     following a symlink (TestBackingConfinedToOneFile), and it acts for
//     other users only on objects pinned by descriptor.
//   - Import the control package, or log key material or plaintext.
//
// Known limits: pages of a shared writable mapping of an encrypted file
// that were dirtied but not synced before logout are dropped (the next
// read reports the lost write once as EIO); a backing file whose magic
// was destroyed reads as plaintext, since content decides; an O_TMPFILE
// file cannot be linked into the tree (EXDEV, as go-fuse's loopback).
//
// Locking order: Root.tableMu, then inodeState.mu, then Root.gate (read),
// then node.mu and Root.servedMu (leaves). Root.tableMu is never held
// across I/O.
package fs

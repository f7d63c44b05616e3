package fs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/mountd/mountd/crypto"
	"github.com/mountd/mountd/logkey"
)

// Plaintext under protected names, seen from open handles:
//
//   - A change that adds content (a write, an extending truncate or
//     fallocate) to a plaintext file under a protected name (or a
//     temporary of one) while the key is set first encrypts the file in
//     place (convertOpen) under the inode's lock, with its handles open,
//     and points them at the encrypted copy; the new bytes are then
//     encrypted. So no plaintext is added to a protected file while a key
//     is set: one that was written while logged out, restored from a
//     backup, or swapped in by someone with access to the disk is
//     encrypted by its owner's next write.
//   - While logged out such a change is recorded (converter.noteWrite)
//     before it is made, and the file is encrypted after the next login.
//   - Reading a plaintext file under a protected name while the key is
//     set logs one Warn per inode (unless it waits for encryption);
//     with RequireEncryption, opening, reading or extending it is EIO,
//     logged once, unless this run saw it written through the mount.
//   - A file whose header has a damaged magic but names the current key
//     is an encrypted file damaged (a flipped byte, or someone's attempt
//     to pass it off as plaintext): EIO, never its raw bytes
//     (classifyHeader).

var (
	errConvertLinks       = errors.New("it has other hard links, which would keep the plaintext")
	errConvertPassthrough = errors.New("it is also open under an unprotected name, for I/O that bypasses mountd")
	errConvertLocks       = errors.New("file locks are held on it, and they would not follow the encrypted copy")
	errConvertNoName      = errors.New("it has no name (unlinked)")
)

// upgradeLater queues an encrypted inode in content format version 1,
// which is being changed through n while the key is set, for its upgrade
// to the current version once it is closed (converter.upgrade). Caller
// holds st.mu.
func (r *Root) upgradeLater(st *inodeState, n *node) {
	if st.cf != nil && st.cf.Header().Version == 1 && n.name() != "" && r.kr.IsSet() {
		r.conv.upgrade(n.rel())
	}
}

// beforeGrow runs before a write or an extension of the inode st through
// n; protected says whether the handle was opened under a name that
// encrypts new content. For a plaintext inode it encrypts what can be
// encrypted first and fails (EIO, logged) where plaintext would be added
// to a protected file while the key is set. An encrypted inode in
// content format version 1 is queued for its upgrade once it is closed
// (converter.upgrade); the change goes in, in version 1. Caller holds
// st.mu exclusively (lockChange).
func (r *Root) beforeGrow(st *inodeState, n *node, protected bool, op string) syscall.Errno {
	if st.cf != nil {
		r.upgradeLater(st, n)
		return 0
	}
	if st.file == nil {
		return 0
	}
	prot := r.protection(n.name())
	if prot == unprotected && !protected {
		return 0
	}
	if !r.kr.IsSet() {
		r.noteLoggedOutWrite(st, n)
		return 0
	}
	if st.sizeLocked() == 0 {
		if err := r.maybeEncrypt(st, n, true); err != nil {
			return r.errno(err, n, op)
		}
		if st.cf == nil && !r.kr.IsSet() {
			r.noteLoggedOutWrite(st, n)
		}
		return 0
	}
	if prot == protectedName && r.refusesPlaintext(n) {
		return syscall.EIO
	}
	err := r.convertOpen(st, n)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, crypto.ErrLocked):
		// Logged out meanwhile: the write goes in as plaintext, to be
		// encrypted after the next login.
		r.noteLoggedOutWrite(st, n)
		return 0
	}
	if !n.plainWarned.Swap(true) {
		r.log.WithField(logkey.Path, n.rel()).WithField(fieldOp, op).WithError(err).
			Warn("protected file is plaintext on disk and cannot be encrypted before this change; refusing to add plaintext to it (EIO): run encrypt_existing_files once it is closed")
	}
	if e := toErrno(err); e == syscall.ENOSPC || e == syscall.EDQUOT {
		return e
	}
	return syscall.EIO
}

// noteLoggedOutWrite records, once per inode state, that the plaintext
// file of st is written while logged out, to be encrypted after the next
// login. Caller holds st.mu exclusively.
func (r *Root) noteLoggedOutWrite(st *inodeState, n *node) {
	if st.noted || n.name() == "" {
		return
	}
	st.noted = true
	r.conv.noteWrite(n.rel())
}

// refusesPlaintext reports whether n, a plaintext file under a protected
// name, must not be served or written (RequireEncryption, while the key
// is set): logged once per inode. A file that this run saw written
// through the mount while logged out is not refused (it is encrypted
// shortly).
func (r *Root) refusesPlaintext(n *node) bool {
	if !r.require || !r.kr.IsSet() || r.protection(n.name()) != protectedName {
		return false
	}
	rel := n.rel()
	if r.conv.trusted(rel) {
		return false
	}
	if !n.plainWarned.Swap(true) {
		r.log.WithField(logkey.Path, rel).Warn("protected file is plaintext on disk; --require-encryption: refusing it (EIO). " +
			"If its content is yours, run encrypt_existing_files")
	}
	return true
}

// servedPlaintext is called after a read served m bytes of the plaintext
// file n while the key is set: the first time, for a protected name, it
// logs a Warn (unless the file waits for encryption anyway).
func (r *Root) servedPlaintext(n *node, m int) {
	if m == 0 || n.plainWarned.Load() || r.protection(n.name()) != protectedName || !r.kr.IsSet() {
		return
	}
	rel := n.rel()
	if r.conv.isPending(rel) {
		return
	}
	if !n.plainWarned.Swap(true) {
		r.log.WithField(logkey.Path, rel).Warn("protected file is plaintext on disk; run encrypt_existing_files")
	}
}

// convertOpen encrypts in place the plaintext file of st, which has
// handles open through n, and points them at the encrypted copy. The
// caller holds st.mu exclusively (lockChange), so no I/O of the mount
// runs on the inode meanwhile; neither the background converter nor the
// migration can claim it (it has handles), and opens of the encrypted
// copy wait for the claim taken on it until st stands for it. Like every
// conversion it does only backing-directory work while it holds its
// locks, and it tells the kernel that the name holds another inode from
// a goroutine of its own, after the caller's handler has returned or not
// (doc.go).
func (r *Root) convertOpen(st *inodeState, n *node) error {
	switch {
	case st.passthrough > 0:
		return errConvertPassthrough
	case st.lockers.Load() > 0:
		return errConvertLocks
	case !r.kr.IsSet():
		return crypto.ErrLocked
	}
	var sx unix.Statx_t
	if err := fstatx(st.fd, &sx); err != nil {
		return err
	}
	switch {
	case sx.Nlink == 0:
		return errConvertNoName
	case sx.Nlink > 1:
		return errConvertLinks
	}
	dirfd, base, err := r.openParentDir(n)
	if err != nil {
		return fmt.Errorf("%w: %w", errConvertNoName, err)
	}
	rel := n.rel()
	c := &Conversion{r: r, rel: rel, dirfd: dirfd, base: base, src: -1, sx: sx}
	defer c.Abort() // a no-op once finished
	// The name must hold this very inode (exchange checks it again).
	var now unix.Statx_t
	if err := statAt(dirfd, base, &now); err != nil || keyOf(&now) != st.key {
		return errConvertNoName
	}
	if err := c.writeCopy(context.Background(), st.fd, PrepareOptions{}); err != nil {
		return err
	}
	if err := c.Sync(); err != nil {
		return err
	}
	var tx unix.Statx_t
	if err := fstatx(int(c.tmp.Fd()), &tx); err != nil {
		return err
	}
	// Opens of the copy, once it has the name, wait until st stands
	// for it (the new inode: nothing else can hold its claim).
	drop, ok := r.claim(keyOf(&tx))
	if !ok {
		return ErrBusy
	}
	defer drop()
	nfd, err := unix.FcntlInt(c.tmp.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return err
	}
	out := c.commit(CommitOptions{Quiet: true})
	if !c.swapped {
		unix.Close(nfd)
		if out.Err != nil {
			return out.Err
		}
		return errConvertNoName // gone meanwhile
	}
	r.replaced()
	if out.Err != nil {
		// In place, but the directory's fsync failed: the handles
		// must follow the name all the same.
		r.log.WithField(logkey.Path, rel).WithError(out.Err).Warn("encrypted file in place, but could not sync its directory")
	}
	nf := os.NewFile(uintptr(nfd), "backing")
	cf, err := r.openCrypt(nf)
	if err != nil {
		// Cannot happen for the copy just checked; never serve the
		// old inode's plaintext after its name went.
		nf.Close()
		return err
	}
	old := st.file
	r.files.rekey(st, keyOf(&tx))
	st.file, st.fd, st.writable, st.cf = nf, nfd, true, cf
	old.Close()
	n.invalidateClass()
	// The kernel may keep pages this inode served as plaintext: from now
	// on they are an encrypted file's, to be dropped at logout.
	r.gate.RLock()
	r.markServed(n)
	r.gate.RUnlock()
	r.log.WithField(logkey.Path, rel).Info("encrypted open file in place before a write")
	go r.notifyReplaced(rel)
	return nil
}

// noteKeyID remembers the identifier of the key that is set (it is
// public: every encrypted file's header carries it), so that files whose
// magic was damaged are recognised (classifyHeader), also after a logout.
func (r *Root) noteKeyID() {
	id, err := r.kr.KeyID()
	if err != nil {
		return
	}
	if old := r.kid.Load(); old == nil || *old != id {
		r.kid.Store(&id)
		r.kidGen.Add(1)
	}
}

// keyID returns the identifier of the key set now or last (noteKeyID),
// or nil if no key was seen set.
func (r *Root) keyID() *crypto.KeyID {
	if id := r.kid.Load(); id != nil {
		return id
	}
	r.noteKeyID()
	return r.kid.Load()
}

// errDamagedMagic: the header names the current key but its magic is
// not ours.
var errDamagedMagic = fmt.Errorf("%w: damaged magic (the header names the current key)", crypto.ErrBadHeader)

// damagedMagic reports whether b, the first bytes of a file without the
// magic, is the header of a file encrypted under the key kid with its
// magic damaged. A plaintext file matches only if its bytes 8..16 equal
// the 8-byte key identifier: 2^-64 by chance.
func damagedMagic(b []byte, kid crypto.KeyID) bool {
	if len(b) < crypto.HeaderSize {
		return false
	}
	var fixed [crypto.HeaderSize]byte
	copy(fixed[:], b)
	hb := crypto.Header{Version: b[crypto.MagicSize-1]}.Marshal()
	copy(fixed[:crypto.MagicSize-1], hb[:crypto.MagicSize-1])
	h, err := crypto.ParseHeader(fixed[:])
	return err == nil && h.KeyID == kid
}

package fs

import (
	"fmt"
	"path/filepath"
	"strings"
)

// Protected names and their temporaries. A file's name decides only
// whether new content is encrypted (its content decides how it is read):
//
//   - a protected name matches one of Options.Protect (globs matched
//     against the base name, default *.bin);
//   - a temporary of a protected name matches one of Options.TempPatterns:
//     a protected name with the decorations that saving programs give the
//     files they write before renaming them into place.
//
// Both are encrypted from their first byte while a key is set, are
// converted before a write adds plaintext, and are encrypted after the
// next login when written while logged out (converter.go, pending.go).
// Counting, the encrypt_existing_files task, --require-encryption and the
// "plaintext on disk" warning concern protected names only: a temporary
// is short-lived by nature, and an existing file whose name only looks
// like one (notes.bin.txt) is not the owner's protected data.
//
// A temp pattern is PREFIX{}SUFFIX: {} stands for a protected name,
// PREFIX is literal text and SUFFIX a filepath.Match glob. The default
// set, from what editors and libraries write beside the file they save
// (docs/SECURITY.md lists them with the programs):
//
//	{}.*          NAME.XXXXXX (GLib's g_mkstemp idiom), NAME.tmp, NAME.new,
//	              NAME.save (nano), NAME.~1~ (Emacs numbered backups)
//	.{}.*         .NAME.XXXXXX (rsync), .NAME.swp (vim), .NAME.kate-swp
//	{}[0-9]*      NAME123456 (Go's os.CreateTemp(dir, NAME))
//	.{}[0-9]*     .NAME123456 (Go's renameio)
//	{}~           backups: vim, Emacs, gedit, nano, Kate
//	#{}#          Emacs auto-save
//	{}-journal    SQLite rollback journal (holds database pages)
//	{}-wal        SQLite write-ahead log (holds database pages)
//
// Temporaries under unrelated names (Python's tempfile "tmpXXXXXXXX",
// LibreOffice's "luXXXX.tmp", GIO's ".goutputstream-XXXXXX") cannot be
// told from other files by name: they are converted after the rename onto
// the protected name (--protect '*' protects them from the first byte).

// DefaultTempPatterns is the temp pattern set used when
// Options.TempPatterns is nil.
var DefaultTempPatterns = []string{"{}.*", ".{}.*", "{}[0-9]*", ".{}[0-9]*", "{}~", "#{}#", "{}-journal", "{}-wal"}

// tempPattern is a parsed temp pattern.
type tempPattern struct {
	pre  string // literal
	post string // glob
}

// ParseTempPattern checks a temp pattern (PREFIX{}SUFFIX: one {}, a
// literal prefix, a filepath.Match glob as suffix).
func ParseTempPattern(p string) error {
	_, err := parseTempPattern(p)
	return err
}

func parseTempPattern(p string) (tempPattern, error) {
	pre, post, ok := strings.Cut(p, "{}")
	switch {
	case !ok:
		return tempPattern{}, fmt.Errorf("temp pattern %q: no {} (the protected name)", p)
	case strings.Contains(post, "{}"):
		return tempPattern{}, fmt.Errorf("temp pattern %q: more than one {}", p)
	case strings.ContainsAny(pre, `*?[\`):
		return tempPattern{}, fmt.Errorf("temp pattern %q: the text before {} must be literal", p)
	case strings.Contains(p, "/"):
		return tempPattern{}, fmt.Errorf("temp pattern %q: a base name has no /", p)
	case pre == "" && post == "":
		return tempPattern{}, fmt.Errorf("temp pattern %q: matches the protected names themselves", p)
	}
	if _, err := filepath.Match(post, ""); err != nil {
		return tempPattern{}, fmt.Errorf("temp pattern %q: %w", p, err)
	}
	return tempPattern{pre: pre, post: post}, nil
}

// protection is what a name says about new content.
type protection uint8

const (
	unprotected   protection = iota
	protectedTemp            // a temporary of a protected name
	protectedName            // matches a protect glob
)

// protection classifies the base name name ("" for a file in no
// directory: unprotected, unless a protect glob matches "").
func (r *Root) protection(name string) protection {
	if r.protected(name) {
		return protectedName
	}
	if name != "" && r.isTemp(name) {
		return protectedTemp
	}
	return unprotected
}

// protected reports whether name (a base name) matches a protect glob.
func (r *Root) protected(name string) bool {
	for _, g := range r.protect {
		if ok, _ := filepath.Match(g, name); ok {
			return true
		}
	}
	return false
}

// encrypts reports whether new content under name is encrypted while a
// key is set: a protected name or a temporary of one.
func (r *Root) encrypts(name string) bool { return r.protection(name) != unprotected }

// isTemp reports whether name is PREFIX + a protected name + SUFFIX for a
// temp pattern. The suffix is checked first, at each split point, so a
// name that has none of the suffixes costs little.
func (r *Root) isTemp(name string) bool {
	for _, p := range r.temps {
		rest, ok := strings.CutPrefix(name, p.pre)
		if !ok {
			continue
		}
		for i := 1; i <= len(rest); i++ {
			if ok, _ := filepath.Match(p.post, rest[i:]); ok && r.protected(rest[:i]) {
				return true
			}
		}
	}
	return false
}

// encryptsTmpfiles reports whether O_TMPFILE files (which have no name
// until they are linked) are encrypted from their first byte while a key
// is set: when temp patterns are configured (such a file is how some
// programs write what they then link under the protected name), or when
// every name is protected.
func (r *Root) encryptsTmpfiles() bool { return len(r.temps) > 0 || r.protected("") }

package fs

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"
)

// byName are the calls that reach a file by name (or read directories):
// in package fs only the backing*.go files may make them, so that every access to
// the backing directory follows its rules (no symlink followed, nothing
// outside the backing directory, the node's own object).
var byName = map[string][]string{
	"unix": {"Open", "Openat", "Openat2", "Creat", "Stat", "Lstat", "Statx", "Fstatat", "Mkdir", "Mkdirat",
		"Mknod", "Mknodat", "Mkfifo", "Mkfifoat", "Symlink", "Symlinkat", "Link", "Linkat", "Unlink", "Unlinkat",
		"Rmdir", "Rename", "Renameat", "Renameat2", "Chmod", "Fchmodat", "Chown", "Lchown", "Fchownat", "Utimes",
		"UtimesNano", "UtimesNanoAt", "Futimesat", "Readlink", "Readlinkat", "Getxattr", "Lgetxattr", "Setxattr",
		"Lsetxattr", "Removexattr", "Lremovexattr", "Listxattr", "Llistxattr", "Access", "Faccessat", "Faccessat2",
		"Truncate", "Statfs", "Fstatfs", "Getdents", "ReadDirent", "NameToHandleAt", "Chdir", "Chroot"},
	"syscall": {"Open", "Openat", "Creat", "Stat", "Lstat", "Mkdir", "Mkdirat", "Mknod", "Mknodat", "Symlink",
		"Link", "Unlink", "Unlinkat", "Rmdir", "Rename", "Renameat", "Chmod", "Fchmodat", "Chown", "Lchown",
		"Fchownat", "Utimes", "UtimesNano", "Readlink", "Getxattr", "Setxattr", "Removexattr", "Listxattr",
		"Access", "Faccessat", "Truncate", "Statfs", "Fstatfs", "Getdents", "ReadDirent", "Chdir", "Chroot"},
	"os": {"Open", "OpenFile", "Create", "Stat", "Lstat", "ReadDir", "ReadFile", "WriteFile", "Remove",
		"RemoveAll", "Mkdir", "MkdirAll", "MkdirTemp", "CreateTemp", "Rename", "Symlink", "Link", "Chmod", "Chown",
		"Lchown", "Chtimes", "Readlink", "Truncate", "DirFS", "Chdir", "OpenRoot", "OpenInRoot"},
	"filepath": {"Walk", "WalkDir", "Glob", "EvalSymlinks"},
}

// allowedByName are the exceptions outside the backing*.go files, with why.
var allowedByName = map[string]string{
	"mount.go unix.Stat":       "the mountpoint (setReadAhead), not the backing directory",
	"mount.go os.WriteFile":    "sysfs (setReadAhead)",
	"mount.go syscall.Unmount": "the mountpoint",
}

// TestBackingConfined fails when code outside the backing*.go files
// reaches a file by name, here or in package migrate (which works through
// this package's API only, with no exception).
func TestBackingConfined(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	mig, err := filepath.Glob("../migrate/*.go")
	if err != nil || len(mig) < 3 {
		t.Fatalf("package migrate not found beside fs (%v): run from the package directory", err)
	}
	files = append(files, mig...)
	checked := eachSelector(t, files, func(name string, pos token.Position, pkg, sel string) {
		for _, fn := range byName[pkg] {
			if sel != fn {
				continue
			}
			if _, ok := allowedByName[name+" "+pkg+"."+fn]; !ok {
				t.Errorf("%s: %s.%s reaches a file by name; only the backing*.go files may (add a helper there)", pos, pkg, fn)
			}
		}
	})
	if checked < 10 {
		t.Fatalf("checked only %d files; run from the package directory", checked)
	}
}

// eachSelector parses files, but for the tests and the backing*.go files, and calls
// fn with every package-qualified name in them (pkg.sel) and where it is.
// It returns how many files it parsed.
func eachSelector(t *testing.T, files []string, fn func(name string, pos token.Position, pkg, sel string)) int {
	t.Helper()
	fset := token.NewFileSet()
	parsed := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") || isBackingFile(name) {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		parsed++
		ast.Inspect(f, func(nd ast.Node) bool {
			if sel, ok := nd.(*ast.SelectorExpr); ok {
				if pkg, ok := sel.X.(*ast.Ident); ok {
					fn(name, fset.Position(sel.Pos()), pkg.Name, sel.Sel.Name)
				}
			}
			return true
		})
	}
	return parsed
}

// TestCryptFilesTuned: every crypto.File the mount writes is made by
// Root.openCrypt or Root.createCrypt (backing_fscaps.go), which set how it is
// written on its filesystem (a network filesystem's files grow by write).
// The one other crypto.OpenFile is the conversion's read of the version 1
// original (convert.go), which never writes.
func TestCryptFilesTuned(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	opens := 0
	eachSelector(t, files, func(name string, pos token.Position, pkg, sel string) {
		switch {
		case pkg != "crypto":
		case sel == "OpenFile" && name == "convert.go":
			opens++
		case sel == "OpenFile", sel == "CreateFile":
			t.Errorf("%s: crypto.%s: use Root.openCrypt or Root.createCrypt", pos, sel)
		}
	})
	if opens != 1 {
		t.Errorf("convert.go calls crypto.OpenFile %d times, want once (the original's read)", opens)
	}
}

// isBackingFile reports whether name is one of the files that may reach
// the backing directory by name: backing.go and backing_*.go in package fs.
func isBackingFile(name string) bool {
	return name == "backing.go" || strings.HasPrefix(name, "backing_") && strings.HasSuffix(name, ".go")
}

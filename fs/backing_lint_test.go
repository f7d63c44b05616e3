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
// in package fs only backing.go may make them, so that every access to
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

// allowedByName are the exceptions outside backing.go, with why.
var allowedByName = map[string]string{
	"mount.go unix.Stat":       "the mountpoint (setReadAhead), not the backing directory",
	"mount.go os.WriteFile":    "sysfs (setReadAhead)",
	"mount.go syscall.Unmount": "the mountpoint",
}

// TestBackingConfinedToOneFile fails when code outside backing.go
// reaches a file by name, here or in package migrate (which works through
// this package's API only, with no exception).
func TestBackingConfinedToOneFile(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	mig, err := filepath.Glob("../migrate/*.go")
	if err != nil || len(mig) < 3 {
		t.Fatalf("package migrate not found beside fs (%v): run from the package directory", err)
	}
	files = append(files, mig...)
	fset := token.NewFileSet()
	checked := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") || name == "backing.go" {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		checked++
		ast.Inspect(f, func(nd ast.Node) bool {
			sel, ok := nd.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			pkg, ok := sel.X.(*ast.Ident)
			if !ok {
				return true
			}
			for _, fn := range byName[pkg.Name] {
				if sel.Sel.Name != fn {
					continue
				}
				key := name + " " + pkg.Name + "." + fn
				if _, ok := allowedByName[key]; !ok {
					t.Errorf("%s: %s.%s reaches a file by name; only backing.go may (add a helper there)",
						fset.Position(sel.Pos()), pkg.Name, fn)
				}
			}
			return true
		})
	}
	if checked < 10 {
		t.Fatalf("checked only %d files; run from the package directory", checked)
	}
}

// TestCryptFilesTuned: every crypto.File the mount writes is made by
// Root.openCrypt or Root.createCrypt (backing.go), which set how it is
// written on its filesystem (a network filesystem's files grow by write).
// The one other crypto.OpenFile is the conversion's read of the version 1
// original (convert.go), which never writes.
func TestCryptFilesTuned(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	opens := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") || name == "backing.go" {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(nd ast.Node) bool {
			sel, ok := nd.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if pkg, ok := sel.X.(*ast.Ident); !ok || pkg.Name != "crypto" {
				return true
			}
			switch {
			case sel.Sel.Name == "OpenFile" && name == "convert.go":
				opens++
			case sel.Sel.Name == "OpenFile", sel.Sel.Name == "CreateFile":
				t.Errorf("%s: crypto.%s: use Root.openCrypt or Root.createCrypt", fset.Position(sel.Pos()), sel.Sel.Name)
			}
			return true
		})
	}
	if opens != 1 {
		t.Errorf("convert.go calls crypto.OpenFile %d times, want once (the original's read)", opens)
	}
}

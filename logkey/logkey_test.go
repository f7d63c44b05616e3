package logkey

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// shared are the keys of this package, by their text.
var shared = map[string]string{
	Component: "Component", Path: "Path", Backing: "Backing", TaskID: "TaskID", Files: "Files", DurMS: "DurMS",
}

// TestOneTypePerKey reads every non-test Go file of the module: a shared
// key is never spelled as a string literal where a log field is named
// (WithField's first argument, a key of a logrus.Fields literal) nor
// given a field constant of another package, and a key with a converter
// always gets its value from it.
func TestOneTypePerKey(t *testing.T) {
	fset := token.NewFileSet()
	checked := 0
	err := filepath.WalkDir("..", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") && p != "..") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, 0)
		if err != nil {
			return err
		}
		checked++
		check := func(key, val ast.Expr) {
			if lit, ok := key.(*ast.BasicLit); ok && lit.Kind == token.STRING {
				if s, _ := strconv.Unquote(lit.Value); shared[s] != "" {
					t.Errorf("%s: log key %q spelled out; use logkey.%s", fset.Position(lit.Pos()), s, shared[s])
				}
				return
			}
			sel, ok := key.(*ast.SelectorExpr)
			if !ok || !isPkg(sel.X, "logkey") {
				return
			}
			conv := converters[keyText(sel.Sel.Name)]
			if conv == "" {
				return
			}
			call, ok := val.(*ast.CallExpr)
			if fn, isSel := callee(call, ok); !isSel || fn != conv {
				t.Errorf("%s: the value of logkey.%s must be logkey.%s(...)", fset.Position(sel.Pos()), sel.Sel.Name, conv)
			}
		}
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.ValueSpec:
				// A package's own constant for a shared key.
				for _, v := range n.Values {
					if lit, ok := v.(*ast.BasicLit); ok && lit.Kind == token.STRING && !strings.HasSuffix(filepath.Dir(p), "logkey") {
						if s, _ := strconv.Unquote(lit.Value); shared[s] != "" && len(n.Names) == 1 && strings.HasPrefix(n.Names[0].Name, "field") {
							t.Errorf("%s: %s repeats log key %q; use logkey.%s", fset.Position(lit.Pos()), n.Names[0].Name, s, shared[s])
						}
					}
				}
			case *ast.CallExpr:
				if s, ok := n.Fun.(*ast.SelectorExpr); ok && s.Sel.Name == "WithField" && len(n.Args) == 2 {
					check(n.Args[0], n.Args[1])
				}
			case *ast.CompositeLit:
				if s, ok := n.Type.(*ast.SelectorExpr); ok && isPkg(s.X, "logrus") && s.Sel.Name == "Fields" {
					for _, e := range n.Elts {
						if kv, ok := e.(*ast.KeyValueExpr); ok {
							check(kv.Key, kv.Value)
						}
					}
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 50 {
		t.Fatalf("checked only %d files; run from the package directory", checked)
	}
}

func isPkg(e ast.Expr, name string) bool {
	id, ok := e.(*ast.Ident)
	return ok && id.Name == name
}

// keyText returns the text of the constant named name.
func keyText(name string) string {
	for text, n := range shared {
		if n == name {
			return text
		}
	}
	return ""
}

// callee returns the function name of a call logkey.F(...).
func callee(call *ast.CallExpr, ok bool) (string, bool) {
	if !ok {
		return "", false
	}
	s, isSel := call.Fun.(*ast.SelectorExpr)
	if !isSel || !isPkg(s.X, "logkey") {
		return "", false
	}
	return s.Sel.Name, true
}

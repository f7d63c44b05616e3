package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"runtime"
	"runtime/debug"
)

// buildInfo is what the binary knows about its own build.
type buildInfo struct {
	Version  string `json:"version"`            // module version: a tag, a pseudo-version, or "devel"
	Revision string `json:"revision,omitempty"` // VCS commit
	Time     string `json:"time,omitempty"`     // commit time
	Modified bool   `json:"modified"`           // built from a tree with uncommitted changes
	Go       string `json:"go"`                 // toolchain
	Platform string `json:"platform"`           // GOOS/GOARCH
}

// readBuildInfo reads the build information the Go toolchain embeds
// (module version, VCS stamp). Builds without it (go run, -buildvcs=false)
// say "devel".
func readBuildInfo() buildInfo {
	b := buildInfo{Version: "devel", Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return b
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		b.Version = v
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Revision = s.Value
		case "vcs.time":
			b.Time = s.Value
		case "vcs.modified":
			b.Modified = s.Value == "true"
		}
	}
	return b
}

// String is the one-line form: "v1.2.3 (rev 0123456789ab, 2026-12-05T10:00:00Z, modified; go1.26.0 linux/amd64)".
func (b buildInfo) String() string {
	s := b.Version + " ("
	if b.Revision != "" {
		rev := b.Revision
		if len(rev) > 12 {
			rev = rev[:12]
		}
		s += "rev " + rev
		if b.Time != "" {
			s += ", " + b.Time
		}
		if b.Modified {
			s += ", modified"
		}
		s += "; "
	}
	return s + b.Go + " " + b.Platform + ")"
}

var versionCmd = &command{
	name:    "version",
	summary: "print the version (module version, VCS revision, Go version); also 'mountd --version'",
	group:   groupOther,
	setup: func(f *flag.FlagSet) runFunc {
		asJSON := f.Bool("json", false, "print a JSON object")
		return func(s stdio, _ []string) error {
			b := readBuildInfo()
			if *asJSON {
				out, _ := json.Marshal(b)
				fmt.Fprintf(s.out, "%s\n", out)
				return nil
			}
			fmt.Fprintf(s.out, "mountd %s\n", b)
			return nil
		}
	},
}

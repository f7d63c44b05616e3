package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/mountd/mountd/crypto"
)

var fsckCmd = &command{
	name:    "fsck",
	summary: "check a data directory: authenticate every block of every encrypted file (no daemon)",
	help: `Reads every file of the data directory, without the daemon and without FUSE, and
lists by path: every encrypted file with a block that fails authentication (with
the first bad block) or that is cut in the middle of a block, every file encrypted
under another master key or with a header this version cannot read, every
plaintext file under a protected name (--protect), and every temp file a crash
left behind (.mountd-tmp-*, auth/.verifier.tmp-*). It never follows a symbolic
link and never changes anything (the one write is the data directory's lock,
auth/lock). It refuses to run while a daemon serves the directory.

Asks for the password (or, with --recovery, the recovery key); with no verifier
and no encrypted file it needs neither.

Exit status: 0 clean; 7 damage (corrupt, foreign-key or unreadable files, or a
missing or corrupt verifier); 5 no damage, but plaintext files under protected
names; 8 only stray temp files; 3 wrong password or recovery key; 6 the
directory is in use; 1 any other error.`,
	group: groupOffline,
	setup: func(f *flag.FlagSet) runFunc {
		o := offlineFlags(f)
		prot := protectFlag(f)
		ko := keyFlags(f)
		asJSON := f.Bool("json", false, "print the report as JSON")
		return func(s stdio, _ []string) error {
			return fsck(s, o, prot.orDefault(), ko, *asJSON)
		}
	},
}

// fsckReport is fsck's result; --json prints it.
type fsckReport struct {
	DataDir  string     `json:"data_dir"`
	Clean    bool       `json:"clean"`
	Verifier string     `json:"verifier"` // "ok", "missing", "corrupt"
	Counts   scanCounts `json:"counts"`
	Findings []finding  `json:"findings"`
	Seconds  float64    `json:"seconds"`
	Exit     int        `json:"exit_code"`
}

func fsck(s stdio, o *offlineOpts, protect protectMatcher, ko *keyOpts, asJSON bool) error {
	d, err := openDataDir(o.data, "fsck", readOnly, s.err)
	if err != nil {
		return err
	}
	defer d.close()
	rep := &fsckReport{DataDir: d.path, Verifier: "ok"}
	opts := scanOpts{protect: protect}

	// With a verifier, the key; without one (or a corrupt one), only
	// what can be seen without it, and that is damage as soon as an
	// encrypted file exists.
	v, verr := d.readVerifier()
	switch {
	case verr == nil:
		kr, _, err := d.unlock(s, ko)
		if err != nil {
			return err
		}
		defer kr.Clear()
		opts.kr, opts.keyID, opts.hasKeyID = kr, v.KeyID, true
	case errors.Is(verr, crypto.ErrNoVerifier):
		rep.Verifier = "missing"
	case errors.Is(verr, crypto.ErrBadVerifier):
		rep.Verifier = "corrupt"
	default:
		return verifierError(d, verr)
	}

	start := time.Now()
	opts.progress = newProgress(s.err, "fsck")
	if opts.progress != nil {
		opts.progress.setTotal(countTree(d.fd))
	}
	res, err := scan(d, opts)
	opts.progress.done()
	if err != nil {
		return err
	}
	rep.Seconds = time.Since(start).Seconds()
	rep.Counts = res.counts
	rep.Findings = res.findings
	switch {
	case rep.Verifier == "missing" && res.counts.Encrypted > 0:
		rep.Findings = append([]finding{{Path: "auth/" + crypto.VerifierName, Kind: findNoVerifier,
			Detail: fmt.Sprintf("missing, but %d encrypted files exist: nothing can decrypt them until it is restored from a backup", res.counts.Encrypted)}}, rep.Findings...)
	case rep.Verifier == "corrupt":
		rep.Findings = append([]finding{{Path: "auth/" + crypto.VerifierName, Kind: findBadVerifier,
			Detail: errText(verr) + "; restore it from a backup"}}, rep.Findings...)
	}
	err = fsckExit(rep.Findings)
	rep.Exit = exitCode(err)
	rep.Clean = err == nil
	if rep.Findings == nil {
		rep.Findings = []finding{}
	}
	if asJSON {
		b, jerr := json.MarshalIndent(rep, "", "  ")
		if jerr != nil {
			return jerr
		}
		fmt.Fprintf(s.out, "%s\n", b)
	} else {
		printFsck(s.out, rep, opts.kr != nil)
	}
	if err != nil {
		return reported{err}
	}
	return nil
}

// fsckExit is the error (and so the exit code) findings lead to: damage
// first, then plaintext under protected names, then stray temps.
func fsckExit(fs []finding) error {
	var plain, temps int
	for i := range fs {
		switch {
		case fs[i].damaging():
			return errDamaged
		case fs[i].Kind == findPlainProtected:
			plain++
		default:
			temps++
		}
	}
	switch {
	case plain > 0:
		return errPlaintext
	case temps > 0:
		return errLeftovers
	}
	return nil
}

var findingLabels = map[string]string{
	findCorrupt:         "CORRUPT",
	findForeignKey:      "FOREIGN",
	findBadHeader:       "BADHEADER",
	findUnreadable:      "UNREADABLE",
	findNoVerifier:      "NOVERIFIER",
	findBadVerifier:     "BADVERIFIER",
	findPlainProtected:  "PLAINTEXT",
	findStrayTemp:       "TEMP",
	findStrayVerifierTm: "TEMP",
}

func printFsck(w io.Writer, r *fsckReport, authenticated bool) {
	for _, f := range r.Findings {
		fmt.Fprintf(w, "%-11s %s: %s\n", findingLabels[f.Kind], quotePath(f.Path), f.Detail)
	}
	c := r.Counts
	var parts []string
	count := func(n int, what string) {
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, what))
		}
	}
	kinds := map[string]int{}
	for _, f := range r.Findings {
		kinds[f.Kind]++
	}
	count(kinds[findCorrupt], "corrupt")
	count(kinds[findForeignKey], "under another key")
	count(kinds[findBadHeader], "unreadable header")
	count(kinds[findUnreadable], "unreadable")
	count(kinds[findNoVerifier]+kinds[findBadVerifier], "verifier problem")
	count(kinds[findPlainProtected], "plaintext under a protected name")
	count(kinds[findStrayTemp]+kinds[findStrayVerifierTm], "stray temp")
	state := "clean"
	if len(parts) > 0 {
		state = strings.Join(parts, ", ")
	}
	enc := fmt.Sprintf("%d encrypted", c.Encrypted)
	if authenticated {
		enc = fmt.Sprintf("%d encrypted (%d authenticated, %s)", c.Encrypted, c.Authenticated, humanBytes(c.PlainBytes))
	}
	fmt.Fprintf(w, "fsck %s: %d files: %s, %d plaintext; %d directories, %d symlinks; %s: %s\n",
		quotePath(r.DataDir), c.Files, enc, c.PlainProtected+c.PlainOther, c.Directories, c.Symlinks,
		time.Duration(r.Seconds*float64(time.Second)).Round(10*time.Millisecond), state)
}

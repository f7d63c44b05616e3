package main

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/mountd/mountd/crypto"
)

var infoCmd = &command{
	name:    "info",
	summary: "describe a data directory: formats, KDF, key-id, key slots, file counts (no password)",
	help: `Reads the verifier and the headers of the files, without the daemon and without any
password: the verifier's format version, KDF parameters, key-id and key slots
(password, recovery), the content format versions in use, and counts of
encrypted files (and of those under another master key), plaintext files under
protected names (--protect) and other files. Refuses to run while a daemon
serves the directory (its counts would be moving).`,
	group: groupOffline,
	setup: func(f *flag.FlagSet) runFunc {
		o := offlineFlags(f)
		prot := protectFlag(f)
		asJSON := f.Bool("json", false, "print JSON")
		return func(s stdio, _ []string) error {
			return info(s, o, prot.orDefault(), *asJSON)
		}
	},
}

// infoReport is what info shows; --json prints it.
type infoReport struct {
	DataDir  string        `json:"data_dir"`
	Verifier *verifierInfo `json:"verifier"` // null when there is none
	// VerifierError is set when the verifier exists but cannot be read.
	VerifierError string     `json:"verifier_error,omitempty"`
	Protect       []string   `json:"protect"`
	Counts        scanCounts `json:"counts"`
	Findings      []finding  `json:"findings"`
}

type verifierInfo struct {
	Version int      `json:"version"`
	KeyID   string   `json:"key_id"`
	KDF     kdfJSON  `json:"kdf"`
	Slots   []string `json:"slots"`
}

type kdfJSON struct {
	Name string `json:"name"`
	crypto.KDFParams
}

func info(s stdio, o *offlineOpts, protect protectMatcher, asJSON bool) error {
	d, err := openDataDir(o.data, "info", readOnly, s.err)
	if err != nil {
		return err
	}
	defer d.close()
	rep := &infoReport{DataDir: d.path, Protect: protect}
	opts := scanOpts{protect: protect}
	v, err := d.readVerifier()
	switch {
	case err == nil:
		rep.Verifier = &verifierInfo{Version: v.Version, KeyID: hex.EncodeToString(v.KeyID[:]),
			KDF: kdfJSON{"argon2id", v.Params}, Slots: v.Slots()}
		opts.keyID, opts.hasKeyID = v.KeyID, true
	case errors.Is(err, crypto.ErrNoVerifier):
	case errors.Is(err, crypto.ErrBadVerifier):
		rep.VerifierError = errText(err)
	default:
		return verifierError(d, err)
	}
	res, err := scan(d, opts)
	if err != nil {
		return err
	}
	rep.Counts, rep.Findings = res.counts, res.findings
	if rep.Findings == nil {
		rep.Findings = []finding{}
	}
	if asJSON {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		fmt.Fprintf(s.out, "%s\n", b)
		return nil
	}
	printInfo(s.out, rep)
	return nil
}

func printInfo(w io.Writer, r *infoReport) {
	fmt.Fprintf(w, "data directory:  %s\n", quotePath(r.DataDir))
	switch v := r.Verifier; {
	case v != nil:
		fmt.Fprintf(w, "verifier:        auth/%s, format version %d\n", crypto.VerifierName, v.Version)
		fmt.Fprintf(w, "key-id:          %s\n", v.KeyID)
		fmt.Fprintf(w, "kdf:             argon2id t=%d m=%d MiB p=%d\n", v.KDF.Time, v.KDF.MemoryKiB/1024, v.KDF.Threads)
		fmt.Fprintf(w, "key slots:       %s\n", strings.Join(v.Slots, ", "))
		if !slices.Contains(v.Slots, "recovery") {
			fmt.Fprintf(w, "                 (no recovery key: a forgotten password loses the data; see mountd recovery-key)\n")
		}
	case r.VerifierError != "":
		fmt.Fprintf(w, "verifier:        CORRUPT: %s\n", r.VerifierError)
	default:
		fmt.Fprintf(w, "verifier:        none (no password set; mountd init creates one)\n")
	}
	c := r.Counts
	var versions []string
	for _, v := range slices.Sorted(maps.Keys(c.Versions)) {
		versions = append(versions, fmt.Sprintf("version %d: %d files", v, c.Versions[v]))
	}
	if len(versions) > 0 {
		fmt.Fprintf(w, "content format:  %s\n", strings.Join(versions, ", "))
	}
	fmt.Fprintf(w, "encrypted:       %d files", c.Encrypted)
	if c.ForeignKey > 0 {
		fmt.Fprintf(w, " (%d under another master key)", c.ForeignKey)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "plaintext:       %d under protected names (%s), %d others\n", c.PlainProtected, strings.Join(r.Protect, " "), c.PlainOther)
	fmt.Fprintf(w, "other entries:   %d directories, %d symlinks, %d special files\n", c.Directories, c.Symlinks, c.Other)
	if c.StrayTemps > 0 {
		fmt.Fprintf(w, "stray temps:     %d (mountd fsck lists them)\n", c.StrayTemps)
	}
	var damaged int
	for _, f := range r.Findings {
		if f.damaging() {
			damaged++
		}
	}
	if damaged > 0 {
		fmt.Fprintf(w, "problems:        %d files with a damaged or foreign header or size (mountd fsck lists them)\n", damaged)
	}
}

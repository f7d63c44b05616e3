package crypto

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func randomRecoveryKey(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, RecoveryKeySize)
	rand.Read(k)
	return k
}

func TestRecoveryKeyRoundTrip(t *testing.T) {
	for i := 0; i < 200; i++ {
		k := randomRecoveryKey(t)
		text := FormatRecoveryKey(k)
		if len(text) != RecoveryKeyTextSize {
			t.Fatalf("length %d", len(text))
		}
		for _, c := range text {
			if c != '-' && !strings.ContainsRune(rkAlphabet, rune(c)) {
				t.Fatalf("character %q outside the alphabet in %s", c, text)
			}
			if strings.ContainsRune("ILOU", rune(c)) {
				t.Fatalf("ambiguous character %q printed", c)
			}
		}
		got := make([]byte, RecoveryKeySize)
		if err := ParseRecoveryKey(got, text); err != nil || !bytes.Equal(got, k) {
			t.Fatalf("round trip of %s: %v", text, err)
		}
	}
}

func TestRecoveryKeyLenientInput(t *testing.T) {
	k := randomRecoveryKey(t)
	text := string(FormatRecoveryKey(k))
	variants := []string{
		strings.ToLower(text),
		strings.ReplaceAll(text, "-", ""),
		strings.ReplaceAll(text, "-", " "),
		"  " + strings.ReplaceAll(text, "-", "\n") + "\r\n",
		strings.NewReplacer("0", "O", "1", "I").Replace(text),
		strings.NewReplacer("0", "o", "1", "l").Replace(text),
		strings.NewReplacer("1", "L").Replace(text),
	}
	for _, v := range variants {
		got := make([]byte, RecoveryKeySize)
		if err := ParseRecoveryKey(got, []byte(v)); err != nil || !bytes.Equal(got, k) {
			t.Fatalf("%q: %v", v, err)
		}
	}
}

// TestRecoveryKeyTypos checks the code's promise on many keys, exhaustively
// per key: every single-character substitution, every transposition of
// two adjacent characters and every swap of two different groups is
// rejected, never decoded to another key.
func TestRecoveryKeyTypos(t *testing.T) {
	keys := 50
	if testing.Short() {
		keys = 5
	}
	dst := make([]byte, RecoveryKeySize)
	for n := 0; n < keys; n++ {
		text := FormatRecoveryKey(randomRecoveryKey(t))
		groups := strings.Split(string(text), "-")
		chars := []byte(strings.Join(groups, ""))
		reject := func(what string, b []byte) {
			t.Helper()
			err := ParseRecoveryKey(dst, b)
			if !errors.Is(err, ErrBadRecoveryKey) {
				t.Fatalf("%s of %s accepted (%v)", what, text, err)
			}
		}
		for i := range chars {
			for _, c := range []byte(rkAlphabet) {
				if c == chars[i] {
					continue
				}
				b := bytes.Clone(chars)
				b[i] = c
				reject(fmt.Sprintf("substitution at %d", i), b)
				// A single wrong character is located.
				err := ParseRecoveryKey(dst, b)
				if want := fmt.Sprintf("group %d is probably mistyped", i/rkGroupChars+1); !strings.Contains(err.Error(), want) {
					t.Fatalf("substitution at %d: %v, want %q", i, err, want)
				}
			}
			if i+1 < len(chars) && chars[i] != chars[i+1] {
				b := bytes.Clone(chars)
				b[i], b[i+1] = b[i+1], b[i]
				reject(fmt.Sprintf("transposition at %d", i), b)
			}
		}
		for i := range groups {
			for j := i + 1; j < len(groups); j++ {
				if groups[i] == groups[j] {
					continue
				}
				g := append([]string(nil), groups...)
				g[i], g[j] = g[j], g[i]
				reject(fmt.Sprintf("swap of groups %d and %d", i, j), []byte(strings.Join(g, "-")))
			}
		}
	}
}

func TestRecoveryKeyMalformed(t *testing.T) {
	text := string(FormatRecoveryKey(randomRecoveryKey(t)))
	dst := make([]byte, RecoveryKeySize)
	for name, s := range map[string]string{
		"empty":       "",
		"short":       text[:len(text)-1],
		"long":        text + "0",
		"a group off": text[:len(text)-5],
		"U":           "U" + text[1:],
		"symbol":      "#" + text[1:],
		"non-ascii":   "é" + text[1:],
		"password":    "correct horse battery staple",
	} {
		if err := ParseRecoveryKey(dst, []byte(s)); !errors.Is(err, ErrBadRecoveryKey) {
			t.Errorf("%s: %v", name, err)
		}
		if err := ParseRecoveryKey(dst, []byte(s)); err != nil && strings.Contains(err.Error(), text[:9]) {
			t.Errorf("%s: the error quotes the key: %v", name, err)
		}
	}
	// Non-zero padding bits with a valid checksum: not one of ours.
	var w [rkGroups]uint32
	for i := range w[:rkDataGroups] {
		w[i] = uint32(i * 77777 % gfOrder)
	}
	w[rkDataGroups-1] |= 1
	s0, s1 := rkSyndromes(w[:rkDataGroups])
	a13 := gfPow(2, rkDataGroups)
	c1 := gfMul(s1^gfMul(a13, s0), gfInv(gfMul(a13, 3)))
	w[rkDataGroups], w[rkDataGroups+1] = s0^c1, c1
	var b []byte
	for _, x := range w {
		for s := gfBits - 5; s >= 0; s -= 5 {
			b = append(b, rkAlphabet[x>>s&31])
		}
	}
	if err := ParseRecoveryKey(dst, b); !errors.Is(err, ErrBadRecoveryKey) || !strings.Contains(err.Error(), "not a mountd recovery key") {
		t.Fatalf("padding bits set: %v", err)
	}
}

func TestGFFieldIsPrimitive(t *testing.T) {
	// alpha = x must have order 2^20-1, or two positions could share a
	// weight (and some swaps would go unnoticed).
	for _, q := range []int{3, 5, 11, 31, 41} {
		if gfOrder%q != 0 {
			t.Fatalf("%d does not divide the order", q)
		}
		if gfPow(2, gfOrder/q) == 1 {
			t.Fatalf("x has order dividing %d", gfOrder/q)
		}
	}
	if gfPow(2, gfOrder) != 1 {
		t.Fatal("x^(2^20-1) != 1")
	}
	for _, a := range []uint32{1, 2, 3, 12345, gfOrder} {
		if gfMul(a, gfInv(a)) != 1 {
			t.Fatalf("inverse of %d", a)
		}
	}
}

func FuzzParseRecoveryKey(f *testing.F) {
	f.Add(FormatRecoveryKey(make([]byte, RecoveryKeySize)))
	f.Add([]byte("0M81-P9HH-7H3N-4QB8-EDZ8-K54Z-NATW-1JYP-W7PF-E0GD-30HJ-WEA4-9XD0-AC0P-JKYJ"))
	f.Add([]byte("----"))
	f.Fuzz(func(t *testing.T, b []byte) {
		dst := make([]byte, RecoveryKeySize)
		if err := ParseRecoveryKey(dst, b); err != nil {
			if !errors.Is(err, ErrBadRecoveryKey) {
				t.Fatalf("unexpected error type %v", err)
			}
			return
		}
		// Accepted: the canonical form of the key reads back the same,
		// and equals the input up to separators, case and aliases.
		canon := FormatRecoveryKey(dst)
		norm := strings.NewReplacer("-", "", " ", "", "\t", "", "\n", "", "\r", "", "O", "0", "I", "1", "L", "1").Replace(strings.ToUpper(string(b)))
		if norm != strings.ReplaceAll(string(canon), "-", "") {
			t.Fatalf("%q accepted as %s", b, canon)
		}
	})
}

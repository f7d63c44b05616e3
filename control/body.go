package control

import (
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"slices"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// maxBody is the largest request body accepted (413 beyond it).
const maxBody = 64 << 10

// secret is a JSON string decoded straight into bytes, so a password never
// becomes a Go string (which could not be zeroed). wipe zeroes it.
type secret []byte

var errNotString = errors.New("control: secret field is not a valid JSON string")

// UnmarshalJSON decodes a JSON string literal into a fresh byte slice. Only
// valid UTF-8 is accepted (a lone surrogate escape or an invalid byte is an
// error rather than a silent U+FFFD), so two different inputs never become
// the same password. NUL (\u0000) and any other code point are kept.
func (s *secret) UnmarshalJSON(data []byte) error {
	// A key given twice decodes twice into the same field: the first
	// value must not be left behind unzeroed.
	s.wipe()
	if len(data) < 2 || data[0] != '"' || data[len(data)-1] != '"' {
		return errNotString
	}
	in := data[1 : len(data)-1]
	// A decoded JSON string is never longer than its literal, so this buffer
	// is never reallocated and no unzeroed copy is left behind.
	out := make([]byte, 0, len(in))
	fail := func() error {
		clear(out[:cap(out)])
		return errNotString
	}
	for i := 0; i < len(in); {
		c := in[i]
		switch {
		case c == '\\':
			if i+1 >= len(in) {
				return fail()
			}
			switch e := in[i+1]; e {
			case '"', '\\', '/':
				out = append(out, e)
			case 'b':
				out = append(out, '\b')
			case 'f':
				out = append(out, '\f')
			case 'n':
				out = append(out, '\n')
			case 'r':
				out = append(out, '\r')
			case 't':
				out = append(out, '\t')
			case 'u':
				r, ok := hex4(in[i+2:])
				if !ok {
					return fail()
				}
				i += 6
				if utf16.IsSurrogate(r) {
					if r >= 0xDC00 || i+6 > len(in) || in[i] != '\\' || in[i+1] != 'u' {
						return fail()
					}
					lo, ok := hex4(in[i+2:])
					if !ok {
						return fail()
					}
					r = utf16.DecodeRune(r, lo)
					if r == utf8.RuneError {
						return fail()
					}
					i += 6
				}
				out = utf8.AppendRune(out, r)
				continue
			default:
				return fail()
			}
			i += 2
		case c < 0x20 || c == '"':
			return fail()
		case c < utf8.RuneSelf:
			out = append(out, c)
			i++
		default:
			r, n := utf8.DecodeRune(in[i:])
			if r == utf8.RuneError && n <= 1 {
				return fail()
			}
			out = append(out, in[i:i+n]...)
			i += n
		}
	}
	*s = out
	return nil
}

func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	var r rune
	for _, c := range b[:4] {
		r <<= 4
		switch {
		case '0' <= c && c <= '9':
			r |= rune(c - '0')
		case 'a' <= c && c <= 'f':
			r |= rune(c - 'a' + 10)
		case 'A' <= c && c <= 'F':
			r |= rune(c - 'A' + 10)
		default:
			return 0, false
		}
	}
	return r, true
}

// wipe zeroes the secret and drops it. Safe on nil.
func (s *secret) wipe() {
	clear(*s)
	*s = nil
}

// skipValue decodes any JSON value into nothing; used to list an object's
// keys without copying its values.
type skipValue struct{}

func (*skipValue) UnmarshalJSON([]byte) error { return nil }

// requireJSONPost enforces what login and change_password accept: a JSON
// Content-Type and no query string (a password is never read from a URL).
// The method is already POST by routing.
func requireJSONPost(r *http.Request) error {
	mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		return errMediaType
	}
	for k, v := range params {
		if k != "charset" || !strings.EqualFold(v, "utf-8") {
			return errMediaType
		}
	}
	if r.URL.RawQuery != "" {
		return errQuery
	}
	return nil
}

// readBody reads the whole body, at most maxBody bytes, into one buffer
// allocated once (no growing, so no stale copies of a password are left in
// freed memory). The caller zeroes the result.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	if r.ContentLength > maxBody {
		return nil, errTooLarge
	}
	size := maxBody + 1
	if r.ContentLength >= 0 {
		size = int(r.ContentLength) + 1
	}
	buf := make([]byte, size)
	// The innermost writer, so that an oversized body also closes the
	// connection (net/http's hook for that is unexported).
	for {
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			break
		}
		w = u.Unwrap()
	}
	n, err := io.ReadFull(http.MaxBytesReader(w, r.Body, maxBody), buf)
	switch {
	case err == nil:
		// The buffer filled: more than Content-Length or maxBody.
		clear(buf)
		return nil, errTooLarge
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return buf[:n], nil
	default:
		clear(buf)
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, errTooLarge
		}
		return nil, badRequest("Could not read the request body")
	}
}

// decodeObject decodes body, which must be exactly one JSON object holding
// exactly the given keys (case-sensitive), into dst. Messages are fixed:
// encoding/json's error text can quote the input, so it is never used.
func decodeObject(body []byte, dst any, keys ...string) error {
	var seen map[string]skipValue
	if err := json.Unmarshal(body, &seen); err != nil || seen == nil {
		return badRequest("Request body must be a single JSON object")
	}
	for k := range seen {
		if !slices.Contains(keys, k) {
			return badRequest("Unknown field in request body")
		}
	}
	for _, k := range keys {
		if _, ok := seen[k]; !ok {
			return badRequest("Missing field " + k)
		}
	}
	if err := json.Unmarshal(body, dst); err != nil {
		return badRequest("Password fields must be JSON strings of valid UTF-8")
	}
	return nil
}

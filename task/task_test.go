package task

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"
)

// TestJSONWireForm pins the wire form documented in docs/API.md.
func TestJSONWireForm(t *testing.T) {
	start := time.Date(2025, 1, 2, 4, 4, 5, 123e6, time.FixedZone("X", 3600))
	r := New("encrypt-1", KindEncryptExisting, start)
	got, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"id":"encrypt-1","kind":"encrypt_existing_files","state":"running","files_total":0,"files_done":0,` +
		`"files_skipped":0,"files_failed":0,"files_busy":0,"files_left_plaintext":0,"bytes_total":0,"bytes_done":0,"error":"",` +
		`"started_at":"2025-01-02T03:04:05.123Z","finished_at":null}`
	if string(got) != want {
		t.Fatalf("running:\n got %s\nwant %s", got, want)
	}

	r.FilesTotal = 4
	r.Skip("a/empty.bin", SkipEmpty)
	r.Skip("b.bin", SkipAlreadyEncrypted)
	r.Fail("c.bin", errors.New("permission denied"))
	r.Busy("d.bin")
	r.Finish(Failed, "1 of 4 files could not be read or encrypted", start.Add(time.Minute))
	got, _ = json.Marshal(r)
	want = `{"id":"encrypt-1","kind":"encrypt_existing_files","state":"failed","files_total":4,"files_done":0,` +
		`"files_skipped":2,"files_failed":1,"files_busy":1,"files_left_plaintext":3,"bytes_total":0,"bytes_done":0,` +
		`"error":"1 of 4 files could not be read or encrypted",` +
		`"skipped_reasons":{"already_encrypted":1,"empty":1},` +
		`"left_plaintext":[{"path":"a/empty.bin","reason":"empty"},{"path":"c.bin","reason":"failed","error":"permission denied"},{"path":"d.bin","reason":"busy"}],` +
		`"started_at":"2025-01-02T03:04:05.123Z","finished_at":"2025-01-02T03:05:05.123Z"}`
	if string(got) != want {
		t.Fatalf("finished:\n got %s\nwant %s", got, want)
	}

	var back Record
	if err := json.Unmarshal(got, &back); err != nil {
		t.Fatal(err)
	}
	if !back.StartedAt.Equal(r.StartedAt) || !back.FinishedAt.Equal(r.FinishedAt) {
		t.Fatalf("times: %v %v", back.StartedAt, back.FinishedAt)
	}
	back.StartedAt, back.FinishedAt = r.StartedAt, r.FinishedAt
	if !reflect.DeepEqual(back, r) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", back, r)
	}
	// null finished_at decodes to the zero time, also over a set one.
	if err := json.Unmarshal([]byte(`{"state":"running","finished_at":null}`), &back); err != nil || !back.FinishedAt.IsZero() || back.State != Running || back.ID != "" {
		t.Fatalf("decode running: %+v %v", back, err)
	}
}

// TestEveryFieldHasATag: a new field without a JSON tag would reach the
// wire under its Go name.
func TestEveryFieldHasATag(t *testing.T) {
	rt := reflect.TypeOf(Record{})
	for i := range rt.NumField() {
		if tag := rt.Field(i).Tag.Get("json"); tag == "" {
			t.Errorf("Record.%s has no json tag", rt.Field(i).Name)
		}
	}
}

func TestLeftPlaintextIsBounded(t *testing.T) {
	r := New("x", KindEncryptExisting, time.Now())
	for i := range MaxListed + 50 {
		r.Skip(fmt.Sprintf("f%d.bin", i), SkipHardLinks)
		r.Skip(fmt.Sprintf("g%d.bin", i), SkipNotRegular)
	}
	if r.FilesLeftPlaintext != MaxListed+50 || len(r.LeftPlaintext) != MaxListed || r.FilesSkipped != 2*(MaxListed+50) ||
		r.LeftPlaintext[0].Path != "f0.bin" || r.SkippedReasons[SkipNotRegular] != MaxListed+50 {
		t.Fatalf("counted %d, listed %d, skipped %d, first %+v", r.FilesLeftPlaintext, len(r.LeftPlaintext), r.FilesSkipped, r.LeftPlaintext[0])
	}
	c := r.Clone()
	c.LeftPlaintext[0].Path = "changed"
	c.SkippedReasons[SkipHardLinks] = 0
	if r.LeftPlaintext[0].Path != "f0.bin" || r.SkippedReasons[SkipHardLinks] == 0 {
		t.Fatal("Clone shares memory with the original")
	}
}

func TestStates(t *testing.T) {
	if Running.Final() || !Succeeded.Final() || !Failed.Final() || !Cancelled.Final() {
		t.Fatal("Final")
	}
	for _, r := range []string{SkipHardLinks, SkipEmpty, SkipOther} {
		if !LeavesPlaintext(r) {
			t.Errorf("%s should leave plaintext", r)
		}
	}
	for _, r := range []string{SkipAlreadyEncrypted, SkipNotRegular, SkipGone} {
		if LeavesPlaintext(r) {
			t.Errorf("%s should not leave plaintext", r)
		}
	}
}

// TestCounters: every counter of the record is in Counters, under its
// JSON name, with its value.
func TestCounters(t *testing.T) {
	r := Record{FilesTotal: 1, FilesDone: 2, FilesSkipped: 3, FilesFailed: 4, FilesBusy: 5, FilesLeftPlaintext: 6, BytesTotal: 7, BytesDone: 8, FilesUpgraded: 9}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var all map[string]any
	if err := json.Unmarshal(b, &all); err != nil {
		t.Fatal(err)
	}
	c := r.Counters()
	n := 0
	for k, v := range all {
		if f, ok := v.(float64); ok {
			n++
			if c[k] != int64(f) {
				t.Errorf("%s: Counters has %v, JSON %v", k, c[k], v)
			}
		}
	}
	if n != 9 || len(c) != n {
		t.Errorf("%d counters in JSON, %d in Counters: %v", n, len(c), c)
	}
}

package main

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/mountd/mountd/control"
	"github.com/mountd/mountd/crypto"
	"github.com/mountd/mountd/fs"
)

func TestMigrationTasksAdapter(t *testing.T) {
	root, err := fs.NewRoot(fs.Options{Backing: t.TempDir(), Keyring: crypto.NewKeyring()})
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	m := fs.NewMigrator(root, fs.MigrationOptions{})
	defer m.Close()
	a := migrationTasks{m}

	if _, _, err := a.Start(context.Background()); !errors.Is(err, crypto.ErrLocked) {
		t.Fatalf("start without key: %v, want ErrLocked (409 RESULT_KEY_NOT_SET)", err)
	}
	if _, err := a.Cancel("nope"); !errors.Is(err, control.ErrNotFound) {
		t.Fatalf("cancel unknown: %v, want ErrNotFound", err)
	}
	if _, ok := a.Get("nope"); ok {
		t.Fatal("get unknown")
	}
	if _, ok := a.Last(); ok {
		t.Fatal("last with no task")
	}

	now := time.Now()
	s := fs.MigrationStatus{
		ID: "encrypt-1", State: fs.MigrationFailed, FilesTotal: 9, FilesDone: 1, FilesSkipped: 2,
		FilesFailed: 3, FilesBusy: 3, BytesTotal: 100, BytesDone: 50, StartedAt: now, FinishedAt: now,
		Error: "x", SkippedReasons: map[string]int64{fs.SkipEmpty: 2},
	}
	got := taskOf(s)
	want := control.Task{
		ID: "encrypt-1", Kind: control.TaskKindEncryptExisting, State: control.TaskFailed,
		FilesTotal: 9, FilesDone: 1, FilesSkipped: 2, FilesFailed: 3, FilesBusy: 3,
		BytesTotal: 100, BytesDone: 50, StartedAt: now, FinishedAt: now, Error: "x",
		SkippedReasons: map[string]int64{"empty": 2},
	}
	if got.ID != want.ID || got.Kind != want.Kind || got.State != want.State || got.FilesTotal != want.FilesTotal ||
		got.FilesDone != want.FilesDone || got.FilesSkipped != want.FilesSkipped || got.FilesFailed != want.FilesFailed ||
		got.FilesBusy != want.FilesBusy || got.BytesTotal != want.BytesTotal || got.BytesDone != want.BytesDone ||
		!got.StartedAt.Equal(want.StartedAt) || !got.FinishedAt.Equal(want.FinishedAt) || got.Error != want.Error ||
		got.SkippedReasons["empty"] != 2 {
		t.Fatalf("taskOf:\n got %+v\nwant %+v", got, want)
	}
	// The adapter converts states by their string: they must agree.
	for _, pair := range [][2]string{
		{string(fs.MigrationRunning), string(control.TaskRunning)},
		{string(fs.MigrationSucceeded), string(control.TaskSucceeded)},
		{string(fs.MigrationFailed), string(control.TaskFailed)},
		{string(fs.MigrationCancelled), string(control.TaskCancelled)},
	} {
		if pair[0] != pair[1] {
			t.Errorf("fs state %q != control state %q", pair[0], pair[1])
		}
	}
}

package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/mountd/mountd/control"
	"github.com/mountd/mountd/fs"
)

// migrationTasks adapts the filesystem's migration to control.TaskRunner.
type migrationTasks struct{ m *fs.Migrator }

var _ control.TaskRunner = migrationTasks{}

func (a migrationTasks) Start(ctx context.Context) (control.Task, bool, error) {
	s, started, err := a.m.Start(ctx)
	if err != nil {
		return control.Task{}, false, err
	}
	return taskOf(s), started, nil
}

func (a migrationTasks) Get(id string) (control.Task, bool) {
	s, ok := a.m.Get(id)
	return taskOf(s), ok
}

func (a migrationTasks) Cancel(id string) (control.Task, error) {
	s, err := a.m.Cancel(id)
	if errors.Is(err, fs.ErrNoSuchMigration) {
		return control.Task{}, fmt.Errorf("%w: %w", control.ErrNotFound, err)
	}
	if err != nil {
		return control.Task{}, err
	}
	return taskOf(s), nil
}

func (a migrationTasks) Last() (control.Task, bool) {
	s, ok := a.m.Last()
	return taskOf(s), ok
}

func taskOf(s fs.MigrationStatus) control.Task {
	return control.Task{
		ID:             s.ID,
		Kind:           control.TaskKindEncryptExisting,
		State:          control.TaskState(s.State),
		FilesTotal:     s.FilesTotal,
		FilesDone:      s.FilesDone,
		FilesSkipped:   s.FilesSkipped,
		FilesFailed:    s.FilesFailed,
		FilesBusy:      s.FilesBusy,
		BytesTotal:     s.BytesTotal,
		BytesDone:      s.BytesDone,
		StartedAt:      s.StartedAt,
		FinishedAt:     s.FinishedAt,
		Error:          s.Error,
		SkippedReasons: s.SkippedReasons,
	}
}

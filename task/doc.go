// Package task is the record of a long-running task of the daemon (today
// only the encrypt_existing_files migration): the one type the migration
// fills in and the control plane serves, with its states, its kind, the
// reasons a file was left as it was, and its one JSON form (docs/API.md,
// /api/system/tasks/:id). A new counter is one field here.
//
// It is a leaf: it imports only the standard library. It never logs and
// runs nothing; the runner owns the locking around a Record.
package task

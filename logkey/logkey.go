// Package logkey names the log fields that more than one package writes,
// so that a key means one thing with one type everywhere (a log is a
// schema: files is always a count, dur_ms always float milliseconds).
// Each key is a constant; a key whose value needs converting has one
// converter, and TestOneTypePerKey makes every use of such a key go
// through it. Keys used by a single package stay constants of that
// package. It is a leaf: the standard library only, and it never logs.
package logkey

import "time"

// Keys shared across packages, with the type of their value.
const (
	Component = "component" // string: the subsystem that logs (fs, migrate, control, autolock)
	Path      = "path"      // string: a path relative to the data directory
	Backing   = "backing"   // string: the absolute path of the data directory
	TaskID    = "task_id"   // string: a task's id (task.Record.ID)
	Files     = "files"     // int64: a number of files (Count)
	DurMS     = "dur_ms"    // float64: a duration in milliseconds, to the microsecond (MS)
)

// Count is the value of Files.
func Count(n int) int64 { return int64(n) }

// MS is the value of DurMS.
func MS(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// converters names, for each key that has one, the function its values
// must come from (TestOneTypePerKey).
var converters = map[string]string{Files: "Count", DurMS: "MS"}

// Package integration runs the real mountd binary out of process on
// temporary directories and checks it the way users see it: FUSE file
// operations through the mount, HTTP calls to the control plane, signals
// and crashes. It holds only tests.
package integration

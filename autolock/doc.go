// Package autolock logs mountd out by itself: after a time without
// activity on encrypted files (idle), before the system suspends or
// hibernates (logind's PrepareForSleep, with a delay inhibitor), and when
// the user's session locks (logind's Lock signal or LockedHint).
//
// Every lock is an ordinary logout: the package asks the Locker the daemon
// gives it, which is the control plane's Logout — the same flush, cache
// invalidation and zeroing as GET /api/system/logout — with the reason
// recorded. Idle time is measured on CLOCK_BOOTTIME, which counts time
// asleep. docs/OPERATIONS.md describes the policies for operators.
//
// What autolock must not do:
//   - clear the key by any other way than the Locker, or keep any key
//     material;
//   - release logind's sleep inhibitor before the logout has returned;
//   - act on a D-Bus signal that does not come from logind's connection,
//     or on the lock of a session it does not watch;
//   - measure idle time on Go's monotonic clock (it stops while the
//     system is suspended);
//   - import fs, control or go-fuse, or use the global logrus logger.
package autolock

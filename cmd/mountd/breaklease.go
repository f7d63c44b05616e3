package main

import (
	"errors"
	"flag"
	"fmt"
	"path/filepath"
	"time"

	"github.com/mountd/mountd/datadir"
)

var breakLeaseCmd = &command{
	name:    "break-lease",
	summary: "remove the lease of a data directory whose daemon's host is gone (network filesystems)",
	help: `A daemon holds its data directory's lease (auth/lease) while it runs and renews
it every third of --lease-ttl, so that a daemon on another host sharing the
directory over a network filesystem is refused. A daemon killed on this machine
leaves a lease the next one takes over by itself; a lease left by another host
that died, or lost the network, is removed with this command once it has expired
(the refusal says when). With --force it removes a lease that has not expired:
the daemon holding it, if it still runs, stops (clears its key and unmounts) at
its next renewal, within a third of its --lease-ttl; until then two daemons may
write. Never use --force while the other host may be up.

Exit status: 0 removed (or there was none); 6 the lease has not expired (without
--force); 1 any other error.`,
	group: groupOffline,
	setup: func(f *flag.FlagSet) runFunc {
		o := offlineFlags(f)
		force := f.Bool("force", false, "remove the lease even if it has not expired")
		return func(s stdio, _ []string) error {
			abs, err := filepath.Abs(o.data)
			if err != nil {
				return err
			}
			info, found, err := datadir.BreakLease(abs, *force, time.Now())
			h := info.Holder
			switch {
			case errors.Is(err, datadir.ErrLeaseLive):
				return inUse{fmt.Errorf("the lease of %s is held by mountd %s, pid %d on host %s, until %s: not expired (--force to break it anyway)",
					abs, h.Command, h.PID, h.Host, info.Expires.UTC().Format(time.RFC3339))}
			case err != nil:
				return err
			case !found:
				fmt.Fprintf(s.out, "%s has no lease\n", abs)
			default:
				fmt.Fprintf(s.out, "removed the lease of %s held by mountd %s, pid %d on host %s (expiry %s)\n",
					abs, h.Command, h.PID, h.Host, info.Expires.UTC().Format(time.RFC3339))
			}
			return nil
		}
	},
}

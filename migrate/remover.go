package migrate

import "sync"

// Old plaintexts. After an exchange, the temp name holds the old
// plaintext inode. Removing it frees its blocks, which may wait for the
// disk (the CI machines discard synchronously; it was most of the cost of
// a small file), so the batch commit hands the name to a few remover
// goroutines that work in parallel with the conversions. A crash in
// between leaves a temp file that fs.RemoveStaleTemps deletes at the next
// start, as for any other crash.

// removers is how many goroutines remove old plaintexts.
const removers = 4

// remover removes old plaintexts in the background with remove, on n
// goroutines, until finish.
type remover struct {
	in   chan string
	done chan struct{}

	mu      sync.Mutex
	cond    sync.Cond
	pending int // queued or being removed
}

func startRemover(n int, remove func(rel string)) *remover {
	rm := &remover{in: make(chan string, 256), done: make(chan struct{})}
	rm.cond.L = &rm.mu
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			for rel := range rm.in {
				remove(rel)
				rm.mu.Lock()
				rm.pending--
				rm.cond.Broadcast()
				rm.mu.Unlock()
			}
		})
	}
	go func() { wg.Wait(); close(rm.done) }()
	return rm
}

// add queues the old plaintext rel (fs.CommitOptions.KeepOld).
func (rm *remover) add(rel string) {
	rm.mu.Lock()
	rm.pending++
	rm.mu.Unlock()
	rm.in <- rel
}

// drain waits until nothing is queued or being removed.
func (rm *remover) drain() {
	rm.mu.Lock()
	defer rm.mu.Unlock()
	for rm.pending > 0 {
		rm.cond.Wait()
	}
}

// finish waits until every queued file is removed and stops the
// goroutines.
func (rm *remover) finish() {
	close(rm.in)
	<-rm.done
}

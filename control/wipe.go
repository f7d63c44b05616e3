package control

import (
	"net"
	"net/http"
	"sync"
	"unsafe"
)

// Request bytes that carried a password.
//
// net/http reads each connection through a bufio.Reader (4 KiB, from a
// process-wide pool); a small request, body included, lands there whole
// and stays there after the handler zeroed its own copies: while the
// connection is kept alive, and after it, in the pool. The listener Serve
// uses wraps every connection in a wipeConn, which remembers the buffers
// it read into. A handler of a request that carries a secret calls
// wipeRequest once it has read the body: that zeroes every byte the
// connection read so far and asks for the connection to be closed after
// the reply, so net/http reads nothing more into the wiped buffer and puts
// a clean one back in its pool.
//
// This happens in the handler, while the connection still owns its
// bufio.Reader; zeroing when the connection closes would be too late:
// net/http returns the reader to the pool before it closes the connection,
// and another connection may already be using it.

// maxReadRecords bounds what a connection remembers: one entry per start
// address it was read into (the bufio buffer's few offsets, and a large
// body's direct reads into the handler's own buffer).
const maxReadRecords = 256

// wipeListener wraps the connections it accepts in wipeConns.
type wipeListener struct{ net.Listener }

func (l wipeListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &wipeConn{Conn: c}, nil
}

// wipeConn remembers where it read data to, so that it can zero it.
type wipeConn struct {
	net.Conn
	mu      sync.Mutex
	reads   map[uintptr][]byte // by start address, the longest read there
	reading []byte             // the buffer of a Read in progress
	lost    bool               // more than maxReadRecords places were read into
}

func (c *wipeConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	c.reading = p
	c.mu.Unlock()
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.reading = nil
	if n > 0 {
		c.record(p[:n])
	}
	c.mu.Unlock()
	return n, err
}

// record remembers b. Caller holds mu.
func (c *wipeConn) record(b []byte) {
	at := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	if prev, ok := c.reads[at]; ok {
		if len(b) > len(prev) {
			c.reads[at] = b
		}
		return
	}
	if len(c.reads) >= maxReadRecords {
		c.lost = true
		return
	}
	if c.reads == nil {
		c.reads = map[uintptr][]byte{}
	}
	c.reads[at] = b
}

// wipe zeroes every byte the connection has read so far, except into a
// buffer a Read is filling right now (net/http's one-byte look-ahead,
// which reads what follows the request). It reports false when some
// places were not remembered (more than maxReadRecords).
func (c *wipeConn) wipe() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	lo := uintptr(unsafe.Pointer(unsafe.SliceData(c.reading)))
	hi := lo + uintptr(len(c.reading))
	for at, b := range c.reads {
		if len(c.reading) > 0 && at < hi && lo < at+uintptr(len(b)) {
			continue
		}
		clear(b)
		delete(c.reads, at)
	}
	return !c.lost
}

type wipeConnKey struct{}

// wipeRequest zeroes what r's connection has read (the request, its body
// included, wherever net/http buffered it) and has the connection closed
// after the reply. Call it from the handler, after the body was read or
// abandoned, before the reply is written. A request that did not come
// through Serve has nothing to wipe.
func (s *Server) wipeRequest(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Connection", "close")
	if c, ok := r.Context().Value(wipeConnKey{}).(*wipeConn); ok && !c.wipe() {
		s.reqLog(r).Warn("a connection read into more places than it remembers: a password may be left in its buffers")
	}
}

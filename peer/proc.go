package peer

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"strconv"
)

// procLookup finds the socket in /proc/net/tcp, or tcp6: an IPv4 pair may
// belong to an IPv6 socket, which lists it IPv4-mapped.
func procLookup(local, remote netip.AddrPort) (uint32, error) {
	la, ra := local.Addr().Unmap(), remote.Addr().Unmap()
	if la.Is4() && ra.Is4() {
		uid, err := procFind("/proc/net/tcp", procAddr(la, local.Port()), procAddr(ra, remote.Port()))
		if err != ErrNotFound {
			return uid, err
		}
	}
	la, ra = netip.AddrFrom16(la.As16()), netip.AddrFrom16(ra.As16())
	return procFind("/proc/net/tcp6", procAddr(la, local.Port()), procAddr(ra, remote.Port()))
}

// procAddr formats an address as /proc/net/tcp{,6} prints it: each 32-bit
// word of the address as the kernel holds it, read as a native integer,
// in hex; then the port in hex.
func procAddr(a netip.Addr, port uint16) string {
	b := a.AsSlice()
	var s []byte
	for i := 0; i < len(b); i += 4 {
		s = fmt.Appendf(s, "%08X", binary.NativeEndian.Uint32(b[i:i+4]))
	}
	return fmt.Sprintf("%s:%04X", s, port)
}

// procFind scans a /proc/net/tcp-format table for the line with this
// local and remote address. The table is read whole (it is generated as
// it is read, so it is not a consistent snapshot; a socket that exists
// throughout is listed) and searched with bytes.Index, not parsed line
// by line.
func procFind(path, local, remote string) (uint32, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("peer: %w", err)
	}
	return procSearch(data, local, remote)
}

func procSearch(data []byte, local, remote string) (uint32, error) {
	needle := []byte(" " + local + " " + remote + " ")
	result := ErrNotFound
	var uid uint32
	found := false
	for off := 0; ; {
		i := bytes.Index(data[off:], needle)
		if i < 0 {
			break
		}
		i += off
		start := bytes.LastIndexByte(data[:i], '\n') + 1
		end := bytes.IndexByte(data[i:], '\n')
		if end < 0 {
			end = len(data)
		} else {
			end += i
		}
		off = end
		u, err := procLine(data[start:end])
		switch {
		case err == nil && found && u != uid:
			// Two live sockets with one address pair cannot exist;
			// refuse to guess.
			return 0, fmt.Errorf("peer: %s: two owners for one address pair", local)
		case err == nil:
			uid, found = u, true
		case result == ErrNotFound:
			result = err // ErrNotHeld, or a parse error
		}
	}
	if found {
		return uid, nil
	}
	return 0, result
}

// procLine reads one table line:
//
//	sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
func procLine(line []byte) (uint32, error) {
	f := bytes.Fields(line)
	if len(f) < 10 {
		return 0, fmt.Errorf("peer: malformed socket table line %q", line)
	}
	st, err1 := strconv.ParseUint(string(f[3]), 16, 8)
	uid, err2 := strconv.ParseUint(string(f[7]), 10, 32)
	inode, err3 := strconv.ParseUint(string(f[9]), 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return 0, fmt.Errorf("peer: malformed socket table line %q", line)
	}
	if err := held(uint8(st), inode); err != nil {
		return 0, err
	}
	return uint32(uid), nil
}

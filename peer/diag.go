package peer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// sock_diag (linux/inet_diag.h) layouts; x/sys/unix does not define them.
const (
	nlmsgHdrLen       = 16
	inetDiagSockIDLen = 48 // sport, dport, src[4], dst[4], if, cookie[2]
	inetDiagReqV2Len  = 8 + inetDiagSockIDLen
	inetDiagMsgLen    = 4 + inetDiagSockIDLen + 20 // ..., expires, rqueue, wqueue, uid, inode
)

var diagSeq atomic.Uint32

// diagLookup asks the kernel, over NETLINK_SOCK_DIAG, for the one TCP
// socket with this address pair (SOCK_DIAG_BY_FAMILY without NLM_F_DUMP:
// a hash lookup, whatever the size of the table).
func diagLookup(local, remote netip.AddrPort) (uint32, error) {
	la, ra := local.Addr().Unmap(), remote.Addr().Unmap()
	family := uint8(unix.AF_INET)
	if !la.Is4() || !ra.Is4() {
		family = unix.AF_INET6
		la, ra = netip.AddrFrom16(la.As16()), netip.AddrFrom16(ra.As16())
	}
	seq := diagSeq.Add(1)

	var req [nlmsgHdrLen + inetDiagReqV2Len]byte
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(req[8:], seq)
	r := req[nlmsgHdrLen:]
	r[0], r[1] = family, unix.IPPROTO_TCP
	ne.PutUint32(r[4:], 0xffffffff) // every state
	id := r[8:]
	binary.BigEndian.PutUint16(id[0:], local.Port())
	binary.BigEndian.PutUint16(id[2:], remote.Port())
	copy(id[4:20], la.AsSlice())
	copy(id[20:36], ra.AsSlice())
	ne.PutUint32(id[40:], 0xffffffff) // INET_DIAG_NOCOOKIE
	ne.PutUint32(id[44:], 0xffffffff)

	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return 0, fmt.Errorf("peer: sock_diag: %w", err)
	}
	defer unix.Close(fd)
	// The kernel answers at once; a bound keeps a broken kernel from
	// hanging a request.
	tv := unix.Timeval{Sec: 2}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return 0, fmt.Errorf("peer: sock_diag: %w", err)
	}
	if err := unix.Sendto(fd, req[:], 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, fmt.Errorf("peer: sock_diag: %w", err)
	}
	var buf [4096]byte
	for {
		n, from, err := unix.Recvfrom(fd, buf[:], 0)
		if err != nil {
			return 0, fmt.Errorf("peer: sock_diag: %w", err)
		}
		if nl, ok := from.(*unix.SockaddrNetlink); !ok || nl.Pid != 0 {
			continue // not from the kernel
		}
		uid, err, done := parseDiagReply(buf[:n], seq, family, local, remote)
		if done {
			return uid, err
		}
	}
}

// parseDiagReply reads one datagram of the kernel's answer. done is false
// when the datagram holds nothing about request seq.
func parseDiagReply(b []byte, seq uint32, family uint8, local, remote netip.AddrPort) (uid uint32, err error, done bool) {
	ne := binary.NativeEndian
	for len(b) >= nlmsgHdrLen {
		l := int(ne.Uint32(b[0:]))
		if l < nlmsgHdrLen || l > len(b) {
			return 0, errors.New("peer: sock_diag: malformed reply"), true
		}
		typ, mseq, body := ne.Uint16(b[4:]), ne.Uint32(b[8:]), b[nlmsgHdrLen:l]
		b = b[min(nlmsgAlign(l), len(b)):]
		if mseq != seq {
			continue
		}
		switch typ {
		case unix.NLMSG_ERROR:
			if len(body) < 4 {
				return 0, errors.New("peer: sock_diag: malformed error reply"), true
			}
			errno := -int32(ne.Uint32(body))
			if errno == int32(unix.ENOENT) {
				return 0, ErrNotFound, true
			}
			return 0, fmt.Errorf("peer: sock_diag: %w", unix.Errno(errno)), true
		case unix.SOCK_DIAG_BY_FAMILY:
			if len(body) < inetDiagMsgLen {
				return 0, errors.New("peer: sock_diag: short reply"), true
			}
			state := body[1]
			id := body[4:]
			gotLocal, gotRemote, ok := diagAddrs(body[0], id)
			if !ok || gotLocal != unmapPort(local) || gotRemote != unmapPort(remote) {
				// The kernel fell back to another socket (a listener).
				return 0, ErrNotFound, true
			}
			tail := body[4+inetDiagSockIDLen:]
			uid, inode := ne.Uint32(tail[12:]), ne.Uint32(tail[16:])
			if err := held(state, uint64(inode)); err != nil {
				return 0, err, true
			}
			return uid, nil, true
		}
	}
	return 0, nil, false
}

func nlmsgAlign(n int) int { return (n + 3) &^ 3 }

func unmapPort(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// diagAddrs decodes an inet_diag_sockid's address pair, IPv4-mapped
// addresses unmapped.
func diagAddrs(family uint8, id []byte) (local, remote netip.AddrPort, ok bool) {
	sport, dport := binary.BigEndian.Uint16(id[0:]), binary.BigEndian.Uint16(id[2:])
	var src, dst netip.Addr
	switch family {
	case unix.AF_INET:
		src, dst = netip.AddrFrom4([4]byte(id[4:8])), netip.AddrFrom4([4]byte(id[20:24]))
	case unix.AF_INET6:
		src, dst = netip.AddrFrom16([16]byte(id[4:20])).Unmap(), netip.AddrFrom16([16]byte(id[20:36])).Unmap()
	default:
		return local, remote, false
	}
	return netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport), true
}

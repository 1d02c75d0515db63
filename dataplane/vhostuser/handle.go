package vhostuser

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/dataplane/virtio"
)

// message is one front-end request with the fds that came with it.
// Handlers take the fds they keep (set them to -1); the rest are closed.
type message struct {
	hdr     Header
	payload []byte
	fds     []int
}

func closeFDs(fds []int) {
	for i := range fds {
		closeFD(&fds[i])
	}
}

// readMessage reads one message. Any fds received are returned with it,
// or closed on error.
func (p *Port) readMessage(c *net.UnixConn) (message, error) {
	var m message
	hb := p.rbuf[:HeaderLen]
	// Waiting for the next message has no deadline...
	if err := c.SetReadDeadline(time.Time{}); err != nil {
		return m, fmt.Errorf("clear read deadline: %w", err)
	}
	n, oobn, flags, _, err := c.ReadMsgUnix(hb, p.oob)
	if oobn > 0 {
		fds, perr := parseRights(p.oob[:oobn])
		m.fds = fds
		if perr != nil {
			closeFDs(m.fds)
			return m, perr
		}
	}
	if err != nil || n == 0 {
		closeFDs(m.fds)
		if err == nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
			return m, errEOF
		}
		return m, fmt.Errorf("read message header: %w", err)
	}
	if flags&unix.MSG_CTRUNC != 0 {
		closeFDs(m.fds)
		return m, fmt.Errorf("message with more than %d fds", MaxMemRegions)
	}
	// ...but once it has begun, the rest must follow within the timeout:
	// half a message must not hold the port (and its reconnects) forever.
	if err := c.SetReadDeadline(time.Now().Add(p.cfg.MessageTimeout)); err != nil {
		closeFDs(m.fds)
		return m, fmt.Errorf("set read deadline: %w", err)
	}
	if n < HeaderLen {
		if _, err := io.ReadFull(c, hb[n:]); err != nil {
			closeFDs(m.fds)
			return m, fmt.Errorf("read message header: %w", timeoutErr(err))
		}
	}
	m.hdr, err = DecodeHeader(hb)
	if err != nil {
		closeFDs(m.fds)
		return m, err
	}
	m.payload = p.rbuf[HeaderLen : HeaderLen+int(m.hdr.Size)]
	if _, err := io.ReadFull(c, m.payload); err != nil {
		closeFDs(m.fds)
		return m, fmt.Errorf("read %v payload of %d bytes: %w", m.hdr.Request, m.hdr.Size, timeoutErr(err))
	}
	return m, nil
}

// parseRights extracts every SCM_RIGHTS fd; on a parse error the fds
// found so far are returned for closing.
func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("parse control message: %w", err)
	}
	var fds []int
	for i := range msgs {
		if msgs[i].Header.Level != unix.SOL_SOCKET || msgs[i].Header.Type != unix.SCM_RIGHTS {
			continue
		}
		f, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			return fds, fmt.Errorf("parse SCM_RIGHTS: %w", err)
		}
		fds = append(fds, f...)
	}
	return fds, nil
}

// hasReply reports whether a request is answered with a payload of its
// own (REPLY_ACK does not apply to these).
func hasReply(r Request) bool {
	switch r {
	case ReqGetFeatures, ReqGetProtocolFeatures, ReqGetVringBase, ReqGetQueueNum,
		ReqGetConfig, ReqGetStatus, ReqGetMaxMemSlots, ReqGetInflightFD:
		return true
	}
	return false
}

// logBaseReply reports whether SET_LOG_BASE is answered: with
// LOG_SHMFD, QEMU waits for a reply (an empty one, as DPDK sends) before
// it reads the log.
func (p *Port) logBaseReply(r Request) bool {
	return r == ReqSetLogBase && p.dev.protocol&ProtocolFLogShmfd != 0
}

// serveOne reads, handles and answers one message. An error ends the
// connection.
func (p *Port) serveOne(c *net.UnixConn) error {
	m, err := p.readMessage(c)
	if err != nil {
		return err
	}
	if p.log.Enabled(context.Background(), slog.LevelDebug) {
		p.log.Debug("vhost-user message", "request", m.hdr.Request, "payload", fmt.Sprintf("%x", m.payload[:min(len(m.payload), 24)]), "fds", len(m.fds))
	}
	reply, herr := p.handleGuarded(&m)
	closeFDs(m.fds)
	p.publishState()
	if herr != nil {
		herr = fmt.Errorf("%v: %w", m.hdr.Request, herr)
	}
	var out [HeaderLen + MaxPayloadLen]byte
	switch {
	case hasReply(m.hdr.Request) || p.logBaseReply(m.hdr.Request):
		if herr != nil {
			return herr // the front-end waits for a payload we cannot give
		}
		Header{Request: m.hdr.Request, Flags: ReplyFlags, Size: uint32(len(reply))}.Encode(out[:])
		copy(out[HeaderLen:], reply)
		return p.write(c, out[:HeaderLen+len(reply)])
	case m.hdr.Flags&FlagNeedReply != 0 && p.dev.protocol&ProtocolFReplyAck != 0:
		ack := ReplyAckOK
		if herr != nil {
			p.logGuest(&p.faultLog, slog.LevelWarn, "vhost-user request failed", "err", herr)
			ack = ReplyAckFailed
		}
		Header{Request: m.hdr.Request, Flags: ReplyFlags, Size: U64Len}.Encode(out[:])
		EncodeU64(out[HeaderLen:], ack)
		return p.write(c, out[:HeaderLen+U64Len])
	default:
		return herr // nobody to tell: close the connection
	}
}

// write sends a reply; a front-end that does not read it within the
// message timeout loses the connection.
func (p *Port) write(c *net.UnixConn, b []byte) error {
	if err := c.SetWriteDeadline(time.Now().Add(p.cfg.MessageTimeout)); err != nil {
		return fmt.Errorf("set write deadline: %w", err)
	}
	if _, err := c.Write(b); err != nil {
		return fmt.Errorf("write reply: %w", timeoutErr(err))
	}
	return nil
}

// errTimeout marks a connection closed for a slow message or an unread
// reply (PortState.Timeouts).
var errTimeout = errors.New("message timeout")

// timeoutErr tags a deadline error with errTimeout.
func timeoutErr(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%w: %w", errTimeout, err)
	}
	return err
}

// handleGuarded is handle with memory faults (a guest that shrank a
// mapped file) turned into a broken device and an error, never a crash.
func (p *Port) handleGuarded(m *message) (reply []byte, err error) {
	var fault error
	defer func() { // runs after faultError recovered
		if fault != nil {
			p.markBroken(fault.Error())
			reply, err = nil, fault
		}
	}()
	defer faultError(&fault, "handling "+m.hdr.Request.String())
	return p.handle(m)
}

// checkMemoryLimit refuses a memory table larger than Config.MaxMemory
// (a sparse file can claim any size; mapping it costs address space and
// page tables).
func (p *Port) checkMemoryLimit(regs []MemRegion) error {
	limit := p.cfg.MaxMemory
	if limit == 0 {
		return nil
	}
	var sum uint64
	for _, r := range regs {
		if sum+r.MemorySize < sum {
			sum = math.MaxUint64 // saturate: still above any limit
			break
		}
		sum += r.MemorySize
	}
	if sum > limit {
		return fmt.Errorf("%sguest memory of %d bytes exceeds max_guest_memory %d", vmPrefix(p.cfg.Name), sum, limit)
	}
	return nil
}

// vring returns the queue a vring index names.
func (p *Port) vring(idx uint32) (*Queue, error) {
	if idx >= uint32(len(p.queues)) {
		return nil, fmt.Errorf("vring index %d beyond %d queues", idx, len(p.queues))
	}
	return p.queues[idx], nil
}

// handle applies one request and returns the reply payload, if any.
func (p *Port) handle(m *message) ([]byte, error) {
	pl := m.payload
	var out [NetConfigLen + ConfigHeaderLen]byte
	u64 := func(v uint64) []byte { EncodeU64(out[:], v); return out[:U64Len] }
	noPayload := func() error {
		if len(pl) != 0 && len(pl) != U64Len { // some front-ends send a zero u64
			return fmt.Errorf("unexpected payload of %d bytes", len(pl))
		}
		return nil
	}
	strictNoPayload := func() error {
		if len(pl) != 0 {
			return fmt.Errorf("unexpected payload of %d bytes", len(pl))
		}
		return nil
	}

	switch m.hdr.Request {
	case ReqGetFeatures:
		if err := noPayload(); err != nil {
			return nil, err
		}
		return u64(p.offered), nil

	case ReqSetFeatures:
		v, err := DecodeU64(pl)
		if err != nil {
			return nil, err
		}
		if extra := v &^ p.offered; extra != 0 {
			return nil, fmt.Errorf("features %#x not offered", extra)
		}
		p.stopAll()
		p.dev.features = v
		p.refresh()
		return nil, nil

	case ReqSetOwner:
		p.dev.owner = true
		return nil, strictNoPayload()

	case ReqResetOwner, ReqResetDevice:
		if m.hdr.Request == ReqResetDevice {
			return nil, fmt.Errorf("RESET_DEVICE not offered")
		}
		p.resetDevice()
		return nil, nil

	case ReqGetProtocolFeatures:
		if err := noPayload(); err != nil {
			return nil, err
		}
		return u64(offeredProtocol), nil

	case ReqSetProtocolFeatures:
		v, err := DecodeU64(pl)
		if err != nil {
			return nil, err
		}
		if extra := v &^ offeredProtocol; extra != 0 {
			return nil, fmt.Errorf("protocol features %#x not offered", extra)
		}
		p.dev.protocol = v
		return nil, nil

	case ReqGetQueueNum:
		return u64(uint64(p.cfg.QueuePairs)), nil

	case ReqSetMemTable:
		regs, err := DecodeMemTable(pl, p.regs[:0])
		if err != nil {
			return nil, err
		}
		if len(m.fds) != len(regs) {
			return nil, fmt.Errorf("%d regions but %d fds", len(regs), len(m.fds))
		}
		if err := checkRegions(regs); err != nil {
			// Overlapping or overflowing regions: a hostile front-end.
			p.markBroken(fmt.Sprintf("memory table: %v", err))
			return nil, err
		}
		if err := p.checkMemoryLimit(regs); err != nil {
			return nil, err // refused before anything is mapped
		}
		mem, err := mapRegions(regs, m.fds)
		if err != nil {
			return nil, err
		}
		// Stop every worker before the old mapping goes away.
		p.stopAll()
		p.dev.mem.unmap()
		p.dev.mem = mem
		for _, q := range p.queues {
			q.cfg.brokenOn = false
		}
		p.log.Debug("vhost-user memory table", "regions", len(regs))
		p.refresh()
		return nil, nil // the fds are closed by the caller; the mappings stay

	case ReqSetVringNum, ReqSetVringBase, ReqSetVringEnable:
		s, err := DecodeVringState(pl)
		if err != nil {
			return nil, err
		}
		q, err := p.vring(s.Index)
		if err != nil {
			return nil, err
		}
		switch m.hdr.Request {
		case ReqSetVringNum:
			if s.Num == 0 || s.Num > virtio.MaxQueueSize || s.Num&(s.Num-1) != 0 {
				return nil, fmt.Errorf("vring %d: size %d is not a power of 2 up to %d", s.Index, s.Num, virtio.MaxQueueSize)
			}
			p.stopQueue(q)
			q.cfg.num, q.cfg.brokenOn = s.Num, false
		case ReqSetVringBase:
			// A packed ring's base carries the used index and wrap counter
			// in bits 16-31 (equal to the avail half after GET_VRING_BASE).
			if s.Num > 0xffff && p.dev.features&virtio.FRingPacked == 0 {
				return nil, fmt.Errorf("vring %d: base %d beyond 16 bits", s.Index, s.Num)
			}
			p.stopQueue(q)
			q.cfg.base = uint16(s.Num)
		case ReqSetVringEnable:
			if s.Num > 1 {
				return nil, fmt.Errorf("vring %d: enable %d", s.Index, s.Num)
			}
			if s.Num == 0 {
				p.stopQueue(q)
			}
			q.cfg.enabled = s.Num == 1
		}
		p.refresh()
		return nil, nil

	case ReqSetVringAddr:
		a, err := DecodeVringAddr(pl)
		if err != nil {
			return nil, err
		}
		q, err := p.vring(a.Index)
		if err != nil {
			return nil, err
		}
		if a.Flags&^VringFlagLog != 0 {
			return nil, fmt.Errorf("vring %d: unknown address flags %#x", a.Index, a.Flags)
		}
		p.stopQueue(q)
		q.cfg.addr, q.cfg.addrSet, q.cfg.brokenOn = a, true, false
		p.refresh()
		return nil, nil

	case ReqGetVringBase:
		s, err := DecodeVringState(pl)
		if err != nil {
			return nil, err
		}
		q, err := p.vring(s.Index)
		if err != nil {
			return nil, err
		}
		// The ring stops here; a new SET_VRING_KICK starts it again.
		wasRunning := q.cfg.running
		p.stopQueue(q)
		if p.nt.deliver(q, notifyGrace) {
			q.cfg.ranSinceCall = false // the front-end reads this fd once more as it stops
		} else {
			p.logGuest(&p.faultLog, slog.LevelWarn, "vhost-user ring stopped with a call not delivered", "queue", q.index)
		}
		if wasRunning && q.used != nil {
			q.cfg.stoppedUsed, q.cfg.stoppedCheck = uint16(atomicLoad32(q.used, 0)>>16), true
			p.log.Debug("vhost-user ring stopped", "queue", q.index, "base", q.cfg.base, "used_idx", q.cfg.stoppedUsed)
		}
		closeFD(&q.cfg.kickFD)
		q.cfg.kickSet = false
		q.kickFD = -1
		base := uint32(q.cfg.base)
		if p.dev.features&virtio.FRingPacked != 0 {
			base |= base << 16 // the used index and wrap: all flushed, equal to avail
		}
		VringState{Index: s.Index, Num: base}.Encode(out[:])
		return out[:VringStateLen], nil

	case ReqSetVringKick, ReqSetVringCall, ReqSetVringErr:
		v, err := DecodeU64(pl)
		if err != nil {
			return nil, err
		}
		if v&^(VringIndexMask|VringNoFD) != 0 {
			return nil, fmt.Errorf("vring fd payload %#x: unknown bits", v)
		}
		q, err := p.vring(uint32(v & VringIndexMask))
		if err != nil {
			return nil, err
		}
		fd := -1
		if v&VringNoFD == 0 {
			if len(m.fds) != 1 {
				return nil, fmt.Errorf("vring %d: %d fds, want 1", q.index, len(m.fds))
			}
			// A pipe or socket here could block the worker's call write
			// (stalling every guest on that worker): eventfds only.
			if !isEventfd(m.fds[0]) {
				return nil, fmt.Errorf("vring %d: fd is not an eventfd", q.index)
			}
			fd, m.fds[0] = m.fds[0], -1
		}
		if m.hdr.Request != ReqSetVringErr { // the worker never uses the err fd
			p.stopQueue(q)
		}
		switch m.hdr.Request {
		case ReqSetVringKick:
			// A semaphore eventfd gives up 1 per read: a guest could keep
			// it readable for 2^64 reads and its worker from ever sleeping.
			if fd >= 0 && isSemaphore(fd) {
				unix.Close(fd)
				return nil, fmt.Errorf("vring %d: kick fd is a semaphore eventfd", q.index)
			}
			closeFD(&q.cfg.kickFD)
			if fd >= 0 {
				if err := unix.SetNonblock(fd, true); err != nil {
					unix.Close(fd)
					return nil, fmt.Errorf("vring %d: kick fd nonblocking: %w", q.index, err)
				}
			}
			q.cfg.kickFD, q.cfg.kickSet = fd, true
		case ReqSetVringCall:
			p.stopNotifier() // it may be writing the old fd; refresh restarts it
			closeFD(&q.cfg.callFD)
			q.cfg.callFD = fd
			q.callFD = fd
			// A ring can run before its call fd is final: QEMU enables the
			// rings of a migration's destination while it loads the state,
			// so they start at SET_VRING_KICK, and SET_VRING_CALL follows
			// with the fd it reads; until then the fd is the one it set at
			// connect time, which it clears and never reads. A call the
			// worker made there is lost, and with EVENT_IDX the guest is
			// never called for the entries after it either (they are past
			// its used_event): its receive ring fills and stays full. So
			// the new fd gets one call (a spurious one costs the guest a
			// look at its used ring).
			if fd >= 0 && q.cfg.ranSinceCall {
				q.callPending.Store(true)
			}
			p.log.Debug("vhost-user call fd set", "queue", q.index, "ran_on_old_fd", q.cfg.ranSinceCall, "used_idx", q.usedPub)
			q.cfg.ranSinceCall = false
		case ReqSetVringErr:
			closeFD(&q.cfg.errFD)
			q.cfg.errFD = fd
		}
		p.refresh()
		return nil, nil

	case ReqSetLogBase:
		size, offset, err := DecodeLogBase(pl)
		if err != nil {
			return nil, err
		}
		if p.dev.protocol&ProtocolFLogShmfd == 0 {
			return nil, fmt.Errorf("LOG_SHMFD protocol feature not negotiated")
		}
		if len(m.fds) != 1 {
			return nil, fmt.Errorf("%d fds, want 1", len(m.fds))
		}
		log, err := mapLog(m.fds[0], size, offset)
		if err != nil {
			return nil, err
		}
		// Stop every worker before the old log goes away; refresh hands
		// the queues the new one.
		p.stopAll()
		p.dev.log.unmap()
		p.dev.log = log
		p.logGuest(&p.logBaseLog, slog.LevelInfo, "vhost-user dirty log", "bytes", size)
		p.refresh()
		return nil, nil // the fd is closed by the caller; the mapping stays

	case ReqSetLogFD:
		// The front-end's log-change eventfd: vmq never resizes the log
		// itself, so it only keeps it.
		if len(m.fds) != 1 {
			return nil, fmt.Errorf("%d fds, want 1", len(m.fds))
		}
		closeFD(&p.dev.logFD)
		p.dev.logFD, m.fds[0] = m.fds[0], -1
		return nil, nil

	case ReqSendRARP:
		v, err := DecodeU64(pl)
		if err != nil {
			return nil, err
		}
		if p.dev.protocol&ProtocolFRARP == 0 {
			return nil, fmt.Errorf("RARP protocol feature not negotiated")
		}
		var b [8]byte
		EncodeU64(b[:], v)
		return nil, p.announce(net.HardwareAddr(b[:6]))

	case ReqNetSetMTU:
		v, err := DecodeU64(pl)
		if err != nil {
			return nil, err
		}
		if p.dev.protocol&ProtocolFMTU == 0 {
			return nil, fmt.Errorf("MTU protocol feature not negotiated")
		}
		if v < 68 || v > 65535 || (p.cfg.MTU > 0 && v > uint64(p.cfg.MTU)) {
			return nil, fmt.Errorf("MTU %d out of range", v)
		}
		p.dev.mtu = v
		return nil, nil

	case ReqGetConfig:
		c, _, err := DecodeConfig(pl)
		if err != nil {
			return nil, err
		}
		if p.dev.protocol&ProtocolFConfig == 0 {
			return nil, fmt.Errorf("CONFIG protocol feature not negotiated")
		}
		var space [NetConfigLen]byte
		copy(space[NetConfigMACOff:], p.cfg.MAC)
		binary.LittleEndian.PutUint16(space[NetConfigStatusOff:], virtio.NetSLinkUp)
		binary.LittleEndian.PutUint16(space[NetConfigMaxQPairsOff:], uint16(p.cfg.QueuePairs))
		binary.LittleEndian.PutUint16(space[NetConfigMTUOff:], uint16(p.cfg.MTU))
		if uint64(c.Offset)+uint64(c.Size) > NetConfigLen {
			// An empty reply tells the front-end the read failed.
			ConfigRequest{Offset: c.Offset, Flags: c.Flags}.Encode(out[:])
			return out[:ConfigHeaderLen], nil
		}
		c.Encode(out[:])
		n := copy(out[ConfigHeaderLen:], space[c.Offset:c.Offset+c.Size])
		return out[:ConfigHeaderLen+n], nil

	case ReqSetStatus:
		v, err := DecodeU64(pl)
		if err != nil {
			return nil, err
		}
		if v > 0xff {
			return nil, fmt.Errorf("status %#x beyond 8 bits", v)
		}
		p.dev.status = uint8(v)
		return nil, nil

	case ReqGetStatus:
		st := p.dev.status
		if p.brokenFlag.Load() {
			st |= statusNeedsReset
		}
		return u64(uint64(st)), nil
	}
	return nil, fmt.Errorf("unsupported request")
}

// isEventfd reports whether fd is an eventfd (the only kind of kick,
// call and err fd a front-end may pass).
func isEventfd(fd int) bool {
	target, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	return err == nil && target == "anon_inode:[eventfd]"
}

// isSemaphore reports whether an eventfd was made with EFD_SEMAPHORE
// (fixed at creation; recent kernels, 6.18 here, show it in fdinfo).
// Unknown counts as not: older kernels do not say.
func isSemaphore(fd int) bool {
	b, err := os.ReadFile("/proc/self/fdinfo/" + strconv.Itoa(fd))
	return err == nil && bytes.Contains(b, []byte("\neventfd-semaphore: 1"))
}

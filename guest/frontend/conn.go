package frontend

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/dataplane/vhostuser"
)

// conn speaks the front-end side of the vhost-user protocol: it sends
// requests (with fds) and reads the backend's replies.
type conn struct {
	uc       *net.UnixConn
	replyAck bool // REPLY_ACK negotiated: ask for an ack on requests without a reply
	timeout  time.Duration
	buf      [vhostuser.HeaderLen + vhostuser.MaxPayloadLen]byte
}

func newConn(uc *net.UnixConn, timeout time.Duration) *conn {
	return &conn{uc: uc, timeout: timeout}
}

// hasReply reports the requests the backend always answers.
func hasReply(r vhostuser.Request) bool {
	switch r {
	case vhostuser.ReqGetFeatures, vhostuser.ReqGetProtocolFeatures, vhostuser.ReqGetVringBase,
		vhostuser.ReqGetQueueNum, vhostuser.ReqGetConfig, vhostuser.ReqGetMaxMemSlots,
		vhostuser.ReqGetStatus, vhostuser.ReqGetInflightFD:
		return true
	}
	return false
}

// call sends a request and returns the reply payload (nil for requests
// without one). With REPLY_ACK a non-zero ack is an error.
func (c *conn) call(req vhostuser.Request, payload []byte, fds ...int) ([]byte, error) {
	if len(payload) > vhostuser.MaxPayloadLen {
		return nil, fmt.Errorf("vhost-user %v: payload of %d bytes too large", req, len(payload))
	}
	if c.timeout > 0 {
		if err := c.uc.SetDeadline(time.Now().Add(c.timeout)); err != nil {
			return nil, fmt.Errorf("vhost-user %v: set deadline: %w", req, err)
		}
		defer c.uc.SetDeadline(time.Time{})
	}
	reply := hasReply(req)
	flags := uint32(vhostuser.FlagVersion)
	ack := !reply && c.replyAck
	if ack {
		flags |= vhostuser.FlagNeedReply
	}
	h := vhostuser.Header{Request: req, Flags: flags, Size: uint32(len(payload))}
	msg := c.buf[:vhostuser.HeaderLen+len(payload)]
	h.Encode(msg)
	copy(msg[vhostuser.HeaderLen:], payload)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	n, _, err := c.uc.WriteMsgUnix(msg, oob, nil)
	if err != nil {
		return nil, fmt.Errorf("vhost-user send %v: %w", req, err)
	}
	if n != len(msg) {
		return nil, fmt.Errorf("vhost-user send %v: short write %d of %d", req, n, len(msg))
	}
	if !reply && !ack {
		return nil, nil
	}
	p, err := c.readReply(req)
	if err != nil {
		return nil, err
	}
	if ack {
		if len(p) != 8 {
			return nil, fmt.Errorf("vhost-user %v: ack of %d bytes, want 8", req, len(p))
		}
		if v := binary.LittleEndian.Uint64(p); v != 0 {
			return nil, fmt.Errorf("vhost-user %v: backend refused (ack %d)", req, v)
		}
		return nil, nil
	}
	return p, nil
}

func (c *conn) readReply(req vhostuser.Request) ([]byte, error) {
	hb := c.buf[:vhostuser.HeaderLen]
	if _, err := io.ReadFull(c.uc, hb); err != nil {
		return nil, fmt.Errorf("vhost-user %v: read reply header: %w", req, err)
	}
	h, err := vhostuser.DecodeHeader(hb)
	if err != nil {
		return nil, fmt.Errorf("vhost-user %v reply: %w", req, err)
	}
	if h.Request != req || h.Flags&vhostuser.FlagReply == 0 {
		return nil, fmt.Errorf("vhost-user %v: unexpected reply %v flags %#x", req, h.Request, h.Flags)
	}
	p := c.buf[vhostuser.HeaderLen : vhostuser.HeaderLen+int(h.Size)]
	if _, err := io.ReadFull(c.uc, p); err != nil {
		return nil, fmt.Errorf("vhost-user %v: read reply payload: %w", req, err)
	}
	return p, nil
}

func (c *conn) getU64(req vhostuser.Request) (uint64, error) {
	p, err := c.call(req, nil)
	if err != nil {
		return 0, err
	}
	if len(p) != 8 {
		return 0, fmt.Errorf("vhost-user %v: reply of %d bytes, want 8", req, len(p))
	}
	return binary.LittleEndian.Uint64(p), nil
}

func (c *conn) setU64(req vhostuser.Request, v uint64, fds ...int) error {
	var p [8]byte
	binary.LittleEndian.PutUint64(p[:], v)
	_, err := c.call(req, p[:], fds...)
	return err
}

func (c *conn) setState(req vhostuser.Request, index, num uint32) error {
	var p [8]byte
	binary.LittleEndian.PutUint32(p[0:], index)
	binary.LittleEndian.PutUint32(p[4:], num)
	_, err := c.call(req, p[:])
	return err
}

// encodeMemTable is the SET_MEM_TABLE payload: nregions u32, padding u32,
// then the regions.
func encodeMemTable(regs []vhostuser.MemRegion) []byte {
	p := make([]byte, 8+vhostuser.MemRegionLen*len(regs))
	binary.LittleEndian.PutUint32(p, uint32(len(regs)))
	for i, r := range regs {
		b := p[8+i*vhostuser.MemRegionLen:]
		binary.LittleEndian.PutUint64(b[0:], r.GuestPhysAddr)
		binary.LittleEndian.PutUint64(b[8:], r.MemorySize)
		binary.LittleEndian.PutUint64(b[16:], r.UserspaceAddr)
		binary.LittleEndian.PutUint64(b[24:], r.MmapOffset)
	}
	return p
}

func encodeVringAddr(a vhostuser.VringAddr) []byte {
	p := make([]byte, vhostuser.VringAddrLen)
	binary.LittleEndian.PutUint32(p[0:], a.Index)
	binary.LittleEndian.PutUint32(p[4:], a.Flags)
	binary.LittleEndian.PutUint64(p[8:], a.DescUser)
	binary.LittleEndian.PutUint64(p[16:], a.UsedUser)
	binary.LittleEndian.PutUint64(p[24:], a.AvailUser)
	binary.LittleEndian.PutUint64(p[32:], a.Log)
	return p
}

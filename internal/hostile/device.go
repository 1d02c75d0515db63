package hostile

import (
	"errors"
	"fmt"

	"github.com/vmq/vmq/dataplane/vhostuser"
	"github.com/vmq/vmq/dataplane/virtio"
)

// DefaultFeatures are the virtio features a Device asks for by default:
// no EVENT_IDX, so calls and kicks follow the plain ring flags.
const DefaultFeatures = virtio.FVersion1 | virtio.FProtocolFeatures | virtio.NetFMrgRxbuf | virtio.RingFIndirectDesc

// Config shapes a Device. Zero values take the defaults noted.
type Config struct {
	Features  uint64 // asked for, masked by the offer; 0: DefaultFeatures
	QueueSize int    // entries per ring; default 256
	BufSize   int    // per-descriptor buffers of the helpers; default 2048
	MemSize   int    // default: rings, buffers and 2 MiB for tables
	NoBuffers bool   // rings without helper buffers (a test lays out its own)
	// NoReplyAck leaves REPLY_ACK off: requests without a reply are then
	// fire-and-forget.
	NoReplyAck bool
	// BlockingCall creates the call eventfds without O_NONBLOCK.
	BlockingCall bool
	// Packed lays the rings out packed and asks for VIRTIO_F_RING_PACKED
	// (the buffer helpers are split-only: use it with NoBuffers).
	Packed bool
	// Protocol are protocol features asked for on top of STATUS and
	// REPLY_ACK (e.g. LOG_SHMFD), masked by the offer.
	Protocol uint64
}

// Device is one virtio-net device with one queue pair (vring 0 RX,
// vring 1 TX), driven step by step.
type Device struct {
	C        *Conn
	Mem      *Mem
	Cfg      Config
	Offered  uint64
	Features uint64
	Protocol uint64
	Rings    [2]*Ring
	Kick     [2]*EventFD
	Call     [2]*EventFD
}

// NewDevice allocates memory, rings and eventfds; nothing is sent yet.
func NewDevice(c *Conn, cfg Config) (_ *Device, err error) {
	if cfg.Features == 0 {
		cfg.Features = DefaultFeatures
	}
	if cfg.QueueSize == 0 {
		cfg.QueueSize = 256
	}
	if cfg.Packed {
		cfg.Features |= virtio.FRingPacked
	}
	if cfg.BufSize == 0 {
		cfg.BufSize = 2048
	}
	if cfg.MemSize == 0 {
		ring := virtio.DescTableSize(cfg.QueueSize) + virtio.AvailRingSize(cfg.QueueSize) + virtio.UsedRingSize(cfg.QueueSize) + 3*4096
		cfg.MemSize = 2*ring + 2<<20
		if !cfg.NoBuffers {
			cfg.MemSize += 2 * cfg.QueueSize * (cfg.BufSize + 64)
		}
	}
	d := &Device{C: c, Cfg: cfg}
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	if d.Mem, err = NewMem(cfg.MemSize); err != nil {
		return nil, err
	}
	for i := range d.Rings {
		newRing := NewRing
		if cfg.Packed {
			newRing = NewPackedRing
		}
		if d.Rings[i], err = newRing(d.Mem, cfg.QueueSize); err != nil {
			return nil, err
		}
		if !cfg.NoBuffers {
			if err := d.Rings[i].Buffers(cfg.BufSize); err != nil {
				return nil, err
			}
		}
		if d.Kick[i], err = NewEventFD(true); err != nil {
			return nil, err
		}
		if d.Call[i], err = NewEventFD(!cfg.BlockingCall); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// RX and TX are the device's two rings.
func (d *Device) RX() *Ring { return d.Rings[0] }
func (d *Device) TX() *Ring { return d.Rings[1] }

// Negotiate runs GET_FEATURES, the protocol features (REPLY_ACK and
// STATUS when offered), SET_OWNER and SET_FEATURES.
func (d *Device) Negotiate() error {
	c := d.C
	off, err := c.GetU64(vhostuser.ReqGetFeatures)
	if err != nil {
		return err
	}
	d.Offered = off
	d.Features = d.Cfg.Features & off
	if d.Features&virtio.FProtocolFeatures != 0 {
		pf, err := c.GetU64(vhostuser.ReqGetProtocolFeatures)
		if err != nil {
			return err
		}
		want := vhostuser.ProtocolFStatus | d.Cfg.Protocol
		if !d.Cfg.NoReplyAck {
			want |= vhostuser.ProtocolFReplyAck
		}
		d.Protocol = pf & want
		if _, err := c.U64(vhostuser.ReqSetProtocolFeatures, d.Protocol); err != nil {
			return err
		}
		c.ReplyAck = d.Protocol&vhostuser.ProtocolFReplyAck != 0
	}
	if _, err := c.Call(vhostuser.ReqSetOwner, nil); err != nil {
		return err
	}
	_, err = c.U64(vhostuser.ReqSetFeatures, d.Features)
	return err
}

// LogBase sends SET_LOG_BASE (LOG_SHMFD: the back-end answers with an
// empty reply once the log is mapped, or closes the connection).
func (d *Device) LogBase(fd int, size, offset uint64) error {
	p := make([]byte, vhostuser.LogBaseLen)
	vhostuser.EncodeLogBase(p, size, offset)
	if err := d.C.WriteRaw(Message(vhostuser.ReqSetLogBase, vhostuser.FlagVersion, p), fd); err != nil {
		return err
	}
	_, err := d.C.ReadReply(vhostuser.ReqSetLogBase)
	return err
}

// SendMemTable sends the device's memory as a one-region table.
func (d *Device) SendMemTable() error { return d.C.MemTable(d.Mem) }

// StartRing sends vring i's call fd, size, base, address, kick fd and
// enable: with the kick fd the back-end starts the ring.
func (d *Device) StartRing(i int) error {
	c, r, idx := d.C, d.Rings[i], uint32(i)
	if _, err := c.U64(vhostuser.ReqSetVringCall, uint64(idx), d.Call[i].FD); err != nil {
		return err
	}
	if err := c.State(vhostuser.ReqSetVringNum, idx, uint32(r.Num)); err != nil {
		return err
	}
	base := uint32(0)
	if r.Packed {
		base = virtio.EventWrapBit // slot 0, wrap counter 1: a driver's start
	}
	if err := c.State(vhostuser.ReqSetVringBase, idx, base); err != nil {
		return err
	}
	p := make([]byte, vhostuser.VringAddrLen)
	r.Addr(idx).Encode(p)
	if _, err := c.Call(vhostuser.ReqSetVringAddr, p); err != nil {
		return err
	}
	if _, err := c.U64(vhostuser.ReqSetVringKick, uint64(idx), d.Kick[i].FD); err != nil {
		return err
	}
	if d.Features&virtio.FProtocolFeatures != 0 {
		return c.State(vhostuser.ReqSetVringEnable, idx, 1)
	}
	return nil
}

// Start is the whole handshake: negotiate, memory table, both rings.
func (d *Device) Start() error {
	if err := d.Negotiate(); err != nil {
		return err
	}
	if err := d.SendMemTable(); err != nil {
		return err
	}
	for i := range d.Rings {
		if err := d.StartRing(i); err != nil {
			return err
		}
	}
	return nil
}

// KickRing writes 1 to vring i's kick eventfd (EAGAIN at the maximum is
// not an error: the back-end has a kick pending anyway).
func (d *Device) KickRing(i int) error {
	if err := d.Kick[i].Add(1); err != nil && !errors.Is(err, errAgain) {
		return err
	}
	return nil
}

// Status reads the device status (GET_STATUS); NeedsReset tells whether
// the back-end marked the device broken.
func (d *Device) Status() (uint64, error) {
	if d.Protocol&vhostuser.ProtocolFStatus == 0 {
		return 0, fmt.Errorf("hostile: STATUS protocol feature not negotiated")
	}
	return d.C.GetU64(vhostuser.ReqGetStatus)
}

// NeedsReset is the virtio status bit a back-end sets on a broken device.
const NeedsReset = 0x40

// Close closes the connection, the eventfds and the memory (the back-end
// keeps its own copies until it lets go of them).
func (d *Device) Close() {
	if d.C != nil {
		d.C.Close()
	}
	for i := range d.Rings {
		d.Kick[i].Close()
		d.Call[i].Close()
	}
	if d.Mem != nil {
		d.Mem.Close()
	}
}

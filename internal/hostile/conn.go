package hostile

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/dataplane/vhostuser"
)

// Conn is the front-end end of one vhost-user connection.
type Conn struct {
	UC *net.UnixConn
	// ReplyAck: REPLY_ACK was negotiated and Call asks for an ack on
	// requests that have no reply of their own.
	ReplyAck bool
	// Timeout bounds each Call's write and its reply (default 2s).
	Timeout time.Duration
}

// Dial connects to a back-end listening on path (vmq in server mode).
func Dial(path string, timeout time.Duration) (*Conn, error) {
	c, err := net.DialTimeout("unix", path, timeout)
	if err != nil {
		return nil, fmt.Errorf("hostile: connect to %s: %w", path, err)
	}
	return &Conn{UC: c.(*net.UnixConn), Timeout: 2 * time.Second}, nil
}

// Listener waits for a back-end that connects (vmq in client mode).
type Listener struct {
	ln   *net.UnixListener
	Path string
}

// Listen listens on path, replacing a stale file.
func Listen(path string) (*Listener, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("hostile: remove %s: %w", path, err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("hostile: listen on %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(true)
	return &Listener{ln: ln, Path: path}, nil
}

// Accept waits at most timeout for the back-end to connect.
func (l *Listener) Accept(timeout time.Duration) (*Conn, error) {
	if err := l.ln.SetDeadline(time.Now().Add(timeout)); err != nil {
		return nil, err
	}
	c, err := l.ln.AcceptUnix()
	if err != nil {
		return nil, fmt.Errorf("hostile: accept on %s: %w", l.Path, err)
	}
	return &Conn{UC: c, Timeout: 2 * time.Second}, nil
}

// Close stops listening and removes the socket file.
func (l *Listener) Close() error { return l.ln.Close() }

// Close closes the connection.
func (c *Conn) Close() error { return c.UC.Close() }

// Message encodes a request: header then payload.
func Message(req vhostuser.Request, flags uint32, payload []byte) []byte {
	b := make([]byte, vhostuser.HeaderLen+len(payload))
	vhostuser.Header{Request: req, Flags: flags, Size: uint32(len(payload))}.Encode(b)
	copy(b[vhostuser.HeaderLen:], payload)
	return b
}

// WriteRaw writes b as it is (any part of any message), with fds attached
// to its first byte.
func (c *Conn) WriteRaw(b []byte, fds ...int) error {
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if err := c.UC.SetWriteDeadline(time.Now().Add(c.timeout())); err != nil {
		return err
	}
	n, _, err := c.UC.WriteMsgUnix(b, oob, nil)
	if err != nil {
		return fmt.Errorf("hostile: write %d bytes: %w", len(b), err)
	}
	if n != len(b) {
		return fmt.Errorf("hostile: short write %d of %d", n, len(b))
	}
	return nil
}

func (c *Conn) timeout() time.Duration {
	if c.Timeout <= 0 {
		return 2 * time.Second
	}
	return c.Timeout
}

// HasReply reports the requests a back-end always answers.
func HasReply(r vhostuser.Request) bool {
	switch r {
	case vhostuser.ReqGetFeatures, vhostuser.ReqGetProtocolFeatures, vhostuser.ReqGetVringBase,
		vhostuser.ReqGetQueueNum, vhostuser.ReqGetConfig, vhostuser.ReqGetMaxMemSlots,
		vhostuser.ReqGetStatus, vhostuser.ReqGetInflightFD:
		return true
	}
	return false
}

// ErrNack is a REPLY_ACK with a non-zero status: the back-end refused.
var ErrNack = errors.New("hostile: back-end refused the request")

// Call sends one request and reads its reply: the payload for requests
// with a reply, the ack (ErrNack if non-zero) with REPLY_ACK, nothing
// otherwise.
func (c *Conn) Call(req vhostuser.Request, payload []byte, fds ...int) ([]byte, error) {
	reply := HasReply(req)
	flags := uint32(vhostuser.FlagVersion)
	ack := !reply && c.ReplyAck
	if ack {
		flags |= vhostuser.FlagNeedReply
	}
	if err := c.WriteRaw(Message(req, flags, payload), fds...); err != nil {
		return nil, fmt.Errorf("%v: %w", req, err)
	}
	if !reply && !ack {
		return nil, nil
	}
	p, err := c.ReadReply(req)
	if err != nil {
		return nil, err
	}
	if ack {
		if len(p) != 8 {
			return nil, fmt.Errorf("%v: ack of %d bytes", req, len(p))
		}
		if v := binary.LittleEndian.Uint64(p); v != 0 {
			return nil, fmt.Errorf("%v: %w (ack %d)", req, ErrNack, v)
		}
		return nil, nil
	}
	return p, nil
}

// ReadReply reads one reply to req within the timeout.
func (c *Conn) ReadReply(req vhostuser.Request) ([]byte, error) {
	if err := c.UC.SetReadDeadline(time.Now().Add(c.timeout())); err != nil {
		return nil, err
	}
	defer c.UC.SetReadDeadline(time.Time{})
	var hb [vhostuser.HeaderLen]byte
	if _, err := io.ReadFull(c.UC, hb[:]); err != nil {
		return nil, fmt.Errorf("%v: read reply header: %w", req, err)
	}
	h := vhostuser.Header{
		Request: vhostuser.Request(binary.LittleEndian.Uint32(hb[0:])),
		Flags:   binary.LittleEndian.Uint32(hb[4:]),
		Size:    binary.LittleEndian.Uint32(hb[8:]),
	}
	if h.Request != req || h.Flags&vhostuser.FlagReply == 0 || h.Size > vhostuser.MaxPayloadLen {
		return nil, fmt.Errorf("%v: unexpected reply %v flags %#x size %d", req, h.Request, h.Flags, h.Size)
	}
	p := make([]byte, h.Size)
	if _, err := io.ReadFull(c.UC, p); err != nil {
		return nil, fmt.Errorf("%v: read reply payload: %w", req, err)
	}
	return p, nil
}

// U64 sends a request with a u64 payload (and fds).
func (c *Conn) U64(req vhostuser.Request, v uint64, fds ...int) ([]byte, error) {
	var p [8]byte
	binary.LittleEndian.PutUint64(p[:], v)
	return c.Call(req, p[:], fds...)
}

// GetU64 sends a request without payload and decodes its u64 reply.
func (c *Conn) GetU64(req vhostuser.Request) (uint64, error) {
	p, err := c.Call(req, nil)
	if err != nil {
		return 0, err
	}
	if len(p) != 8 {
		return 0, fmt.Errorf("%v: reply of %d bytes, want 8", req, len(p))
	}
	return binary.LittleEndian.Uint64(p), nil
}

// State sends a vring state request (NUM, BASE, ENABLE).
func (c *Conn) State(req vhostuser.Request, index, num uint32) error {
	var p [vhostuser.VringStateLen]byte
	vhostuser.VringState{Index: index, Num: num}.Encode(p[:])
	_, err := c.Call(req, p[:])
	return err
}

// MemTable sends SET_MEM_TABLE for the given memories, one region each.
func (c *Conn) MemTable(mems ...*Mem) error {
	regs := make([]vhostuser.MemRegion, len(mems))
	fds := make([]int, len(mems))
	for i, m := range mems {
		regs[i], fds[i] = m.Region(), m.FD
	}
	p := make([]byte, vhostuser.MemTableLen(len(regs)))
	vhostuser.EncodeMemTable(p, regs)
	_, err := c.Call(vhostuser.ReqSetMemTable, p, fds...)
	return err
}

// FloodUnread sends req (one with a reply) again and again without ever
// reading a reply, until the socket stops taking them for `stall` (the
// back-end no longer reads: it is blocked writing replies nobody reads)
// or max requests went out. It returns how many were sent.
func (c *Conn) FloodUnread(req vhostuser.Request, max int, stall time.Duration) (int, error) {
	msg := Message(req, vhostuser.FlagVersion, nil)
	for n := 0; n < max; n++ {
		if err := c.UC.SetWriteDeadline(time.Now().Add(stall)); err != nil {
			return n, err
		}
		if _, err := c.UC.Write(msg); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return n, nil
			}
			return n, fmt.Errorf("hostile: flood %v after %d: %w", req, n, err)
		}
	}
	return max, nil
}

// WaitHangup waits at most timeout for the back-end to close the
// connection, without reading anything: replies left unread stay unread.
func (c *Conn) WaitHangup(timeout time.Duration) error {
	rc, err := c.UC.SyscallConn()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	var perr error
	hung := false
	for !hung && time.Now().Before(deadline) {
		cerr := rc.Control(func(fd uintptr) {
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
			ms := int(min(time.Until(deadline), 100*time.Millisecond).Milliseconds())
			n, err := unix.Poll(pfd, max(ms, 1))
			if err != nil && err != unix.EINTR {
				perr = err
				hung = true
				return
			}
			hung = n > 0 && pfd[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR) != 0
		})
		if cerr != nil {
			return cerr
		}
	}
	if perr != nil {
		return fmt.Errorf("hostile: poll for hang-up: %w", perr)
	}
	if !hung {
		return fmt.Errorf("hostile: back-end kept the connection open for %v", timeout)
	}
	return nil
}

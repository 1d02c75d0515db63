package frontend

import (
	"encoding/binary"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// FuzzResponder: any wire frame gets no answer or a well-formed one,
// never a panic or an out-of-range read.
func FuzzResponder(f *testing.F) {
	f.Add(unhex(f, `ffffffffffff 020000000001 0806 0001 0800 06 04 0001 020000000001 0a000001 000000000000 0a00000a`))
	f.Add(unhex(f, `02000000000a 020000000001 0800 4500 0020 0001 0000 4001 66d2 0a000001 0a00000a 0800 32d9 0010 0050 6162 6364`))
	f.Add([]byte{})
	r := newResponder(guestMAC, guestIP)
	out := make([]byte, 2048)
	f.Fuzz(func(t *testing.T, frame []byte) {
		n, kind := r.reply(frame, out)
		if n == 0 {
			return
		}
		reply := out[:n]
		if net.HardwareAddr(reply[6:12]).String() != guestMAC.String() {
			t.Fatalf("reply from %v", net.HardwareAddr(reply[6:12]))
		}
		switch kind {
		case replyARP:
			if n != 42 || binary.BigEndian.Uint16(reply[20:]) != 2 {
				t.Fatalf("bad ARP reply %x", reply)
			}
		case replyICMP:
			if checksum(reply[14:34], 0) != 0 || checksum(reply[34:], 0) != 0 || reply[34] != 0 {
				t.Fatalf("bad echo reply %x", reply)
			}
			if [4]byte(reply[26:30]) != guestIP.As4() {
				t.Fatalf("reply from %v", reply[26:30])
			}
		default:
			t.Fatalf("reply of kind %v", kind)
		}
	})
}

// FuzzRxUsedRing: whatever a device writes into the used ring and the
// buffer headers, poll returns frames or an error, never panics.
func FuzzRxUsedRing(f *testing.F) {
	f.Add(true, uint16(3), []byte{0, 0, 0, 0, 100, 0, 0, 0, 1, 0, 0, 0, 200, 0, 0, 0}, uint16(2))
	f.Add(false, uint16(1), []byte{15, 0, 0, 0, 0, 1, 0, 0}, uint16(1))
	f.Add(true, uint16(0), []byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0}, uint16(1))
	f.Fuzz(func(t *testing.T, mrg bool, nbuf uint16, elems []byte, usedIdx uint16) {
		mem := testMem(t, 1)
		q, err := newRxQueue(mem, 16, 128, mrg, 0)
		if err != nil {
			t.Skip() // 128-byte buffers need mergeable
		}
		for i := range q.bufs {
			binary.LittleEndian.PutUint16(q.bufs[i][10:], nbuf+uint16(i))
		}
		copy(q.used[4:4+8*16], elems)
		store32(q.used, 0, uint32(usedIdx)<<16)
		for range 3 {
			if _, _, _, err := q.poll(64, func(fr []byte) {
				if len(fr) > maxMergedFrame {
					t.Fatalf("frame of %d bytes", len(fr))
				}
			}); err != nil {
				return
			}
		}
	})
}

// FuzzHandshake: a backend answering with arbitrary bytes makes setup
// fail cleanly (or succeed), never panic or hang.
func FuzzHandshake(f *testing.F) {
	ok := func(req uint32, v uint64) []byte {
		b := make([]byte, 20)
		binary.LittleEndian.PutUint32(b, req)
		binary.LittleEndian.PutUint32(b[4:], 0x5)
		binary.LittleEndian.PutUint32(b[8:], 8)
		binary.LittleEndian.PutUint64(b[12:], v)
		return b
	}
	f.Add(ok(1, 1<<32|1<<30))
	f.Add(append(ok(1, 1<<32|1<<30), ok(15, 0)...))
	f.Add(append(ok(1, 1<<32), 1, 0, 0, 0, 5, 0, 0, 0, 0xff, 0xff, 0, 0))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, replies []byte) {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		ours, err := fileConn(fds[0])
		if err != nil {
			t.Fatal(err)
		}
		peer, err := fileConn(fds[1])
		if err != nil {
			t.Fatal(err)
		}
		defer peer.Close()
		go func() {
			peer.Write(replies)
			var b [4096]byte
			for {
				if _, err := peer.Read(b[:]); err != nil {
					return
				}
			}
		}()
		g, err := newGuest("fuzz", Config{MAC: guestMAC, QueueSize: 16, HandshakeTimeout: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		d, err := g.setup(ours)
		if err == nil {
			g.teardown(d)
		}
	})
}

func fileConn(fd int) (*net.UnixConn, error) {
	f := os.NewFile(uintptr(fd), "socketpair")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	return c.(*net.UnixConn), nil
}

package hostile

import (
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/vmq/vmq/dataplane/vhostuser"
	"github.com/vmq/vmq/internal/testenv"
)

// readyHandler records the queues a port hands out.
type readyHandler struct {
	mu     sync.Mutex
	ready  map[int]bool
	broken string
}

func (h *readyHandler) QueueReady(q *vhostuser.Queue) {
	h.mu.Lock()
	h.ready[q.Index()] = true
	h.mu.Unlock()
}
func (h *readyHandler) QueueStopped(q *vhostuser.Queue) {
	h.mu.Lock()
	delete(h.ready, q.Index())
	h.mu.Unlock()
}
func (h *readyHandler) DeviceBroken(_ *vhostuser.Port, reason string) {
	h.mu.Lock()
	h.broken = reason
	h.mu.Unlock()
}

// The step-by-step handshake brings a real port's two queues up, in both
// socket directions, and a refused memory table comes back as ErrNack.
func TestDeviceHandshake(t *testing.T) {
	for _, client := range []bool{false, true} {
		t.Run(map[bool]string{false: "backend-listens", true: "backend-dials"}[client], func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "p.sock")
			h := &readyHandler{ready: map[int]bool{}}
			var c *Conn
			var port *vhostuser.Port
			var err error
			if client {
				ln, err := Listen(path)
				if err != nil {
					t.Fatal(err)
				}
				defer ln.Close()
				if port, err = vhostuser.Dial(path, vhostuser.Config{Handler: h}); err != nil {
					t.Fatal(err)
				}
				if c, err = ln.Accept(5 * time.Second); err != nil {
					t.Fatal(err)
				}
			} else {
				if port, err = vhostuser.Listen(path, vhostuser.Config{Handler: h}); err != nil {
					t.Fatal(err)
				}
				if c, err = Dial(path, time.Second); err != nil {
					t.Fatal(err)
				}
			}
			defer port.Close()
			d, err := NewDevice(c, Config{})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if err := d.Start(); err != nil {
				t.Fatal(err)
			}
			testenv.Eventually(t, "both queues ready", func() (bool, string) {
				h.mu.Lock()
				defer h.mu.Unlock()
				return h.ready[0] && h.ready[1], "not yet"
			})
			if st, err := d.Status(); err != nil || st&NeedsReset != 0 {
				t.Fatalf("status %#x, %v", st, err)
			}
			// Overlapping regions: refused, and said so through REPLY_ACK.
			m2, err := NewMem(4096)
			if err != nil {
				t.Fatal(err)
			}
			defer m2.Close()
			if err := c.MemTable(d.Mem, m2); !errors.Is(err, ErrNack) {
				t.Fatalf("overlapping memory table: %v, want ErrNack", err)
			}
		})
	}
}

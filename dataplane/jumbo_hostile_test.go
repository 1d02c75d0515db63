package dataplane

import (
	"fmt"
	"testing"
	"time"

	"github.com/vmq/vmq/dataplane/virtio"
	"github.com/vmq/vmq/internal/hostile"
	"github.com/vmq/vmq/internal/testenv"
)

// TestJumboHostileRX: at MTU 9000 a guest posts 4096 mergeable receive
// buffers of one byte. A 9000-byte frame from the wire would need 9012 of
// them, more than its ring holds and more than a round's budget walks:
// each is dropped and counted, the buffers stay posted, the device stays
// up. A 300-byte frame then fits (312 buffers, num_buffers exact). A
// witness VM on the same worker gets every frame before and after, and
// every UMEM frame comes back.
func TestJumboHostileRX(t *testing.T) {
	tb := newJumboBed(t, 1)
	const name, mac, n = "evil", "02:00:00:00:00:66", 4096
	sock := tb.Socket(name)
	tb.addPort(VM{Name: name, Slot: 6, MAC: mustMAC(mac), Socket: sock, QueuePairs: 1, MTU: jumboMTU})
	c, err := hostile.Dial(sock, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	d, err := hostile.NewDevice(c, hostile.Config{QueueSize: n, NoBuffers: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	if d.Features&virtio.NetFMrgRxbuf == 0 {
		t.Fatalf("MRG_RXBUF not negotiated (features %#x)", d.Features)
	}
	tb.waitRunning(name, 2)
	w := &witness{tb: tb, g: tb.addJumboVM("w", 2, mac2, 0, "")}
	w.send()
	defer w.check()

	base, err := d.Mem.AllocGPA(n)
	if err != nil {
		t.Fatal(err)
	}
	rx := d.RX()
	rx.PostOneByteRX(base)
	d.KickRing(0)
	const jumbos = 20
	tb.sendJumbo(mac, 0, jumboMTU, jumbos, 61)
	testenv.Eventually(t, "jumbo frames dropped", func() (bool, string) {
		v := tb.vmStats(name)
		var drops uint64
		for _, k := range v.DropsByReason {
			drops += k
		}
		return drops == jumbos, fmt.Sprintf("drops %v", v.DropsByReason)
	})
	if u := rx.UsedIdx(); u != 0 {
		t.Fatalf("used.idx %d after frames that fit nowhere: buffers were consumed", u)
	}
	tb.sendJumbo(mac, 0, 300, 1, 62)
	testenv.Eventually(t, "a 300-byte frame in one-byte buffers", func() (bool, string) {
		return rx.UsedIdx() >= virtio.NetHdrLen+300, fmt.Sprintf("used.idx %d", rx.UsedIdx())
	})
	var hdr []byte
	for i := uint16(0); i < virtio.NetHdrLen; i++ {
		id, l := rx.UsedElem(i)
		if l != 1 || id >= n {
			t.Fatalf("used entry %d: id %d length %d", i, id, l)
		}
		hdr = append(hdr, d.Mem.At(base+uint64(id), 1)...)
	}
	if nb := int(hdr[10]) | int(hdr[11])<<8; nb != virtio.NetHdrLen+300 || int(rx.UsedIdx()) != nb {
		t.Errorf("num_buffers %d, used.idx %d: want %d", nb, rx.UsedIdx(), virtio.NetHdrLen+300)
	}
	if p := tb.portStats(name); p.Broken != "" {
		t.Fatalf("device broken: %s", p.Broken)
	}
	t.Logf("evil: %+v", tb.vmStats(name).DropsByReason)
	checkFramesBack(t, tb)
}

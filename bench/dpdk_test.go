package bench

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"
)

// dpdkPair is the DPDK peer: a host testpmd forwarding (io) between
// net_af_xdp on the NIC and net_vhost, and a guest testpmd on
// net_virtio_user connected to it.
type dpdkPair struct {
	host, guest *testpmd
}

func (d *dpdkPair) close() {
	if d.guest != nil {
		d.guest.kill()
	}
	if d.host != nil {
		d.host.kill()
	}
}

// startDPDK starts both testpmds; the guest in guestMode (rxonly or
// txonly) with its lcores on guestCPU.
func (s *suite) startDPDK(guestMode string, guestCPU, size int) (*dpdkPair, error) {
	d := &dpdkPair{}
	sock := filepath.Join(s.dir, fmt.Sprintf("dpdk%d.sock", s.nextStream()))
	ring := fmt.Sprintf("--rxd=%d", s.ring)
	tring := fmt.Sprintf("--txd=%d", s.ring)
	var err error
	d.host, err = startTestpmd(s.b, "h", s.host, fmt.Sprintf("0@%d,1@%d", sutCPU, sutCPU),
		[]string{fmt.Sprintf("net_af_xdp0,iface=%s,start_queue=0,queue_count=1", s.nic.Name),
			fmt.Sprintf("net_vhost0,iface=%s,queues=1", sock)},
		"--forward-mode=io", "--nb-cores=1", ring, tring)
	if err != nil {
		d.close()
		return nil, err
	}
	d.guest, err = startTestpmd(s.b, "g", nil, fmt.Sprintf("0@%d,1@%d", guestCPU, guestCPU),
		[]string{fmt.Sprintf("net_virtio_user0,path=%s,queues=1,queue_size=%d,mrg_rxbuf=1,in_order=1,mac=%s",
			sock, s.ring, vmMAC(0))},
		"--forward-mode="+guestMode, "--nb-cores=1", ring, tring, fmt.Sprintf("--txpkts=%d", size))
	if err != nil {
		d.close()
		return nil, err
	}
	for _, p := range []*testpmd{d.host, d.guest} {
		if _, err := p.command("start", "packet forwarding"); err != nil {
			d.close()
			return nil, err
		}
	}
	return d, nil
}

func (d *dpdkPair) cpu(pmds ...*testpmd) func() (CPUTimes, error) {
	return func() (CPUTimes, error) {
		var sum CPUTimes
		for _, p := range pmds {
			c, err := ProcessCPU(p.Pid())
			if err != nil {
				return sum, err
			}
			sum.User += c.User
			sum.System += c.System
		}
		return sum, nil
	}
}

// dpdkRX: generator → NIC → af_xdp PMD → testpmd io → net_vhost →
// virtio_user rxonly, both testpmds on the system-under-test CPU.
func (s *suite) dpdkRX(size int) Point {
	p := Point{Dir: RX, System: DPDK, Size: size, VMs: 1, P50: -1, P99: -1, Note: "latency not measured (testpmd rxonly)"}
	guestCPU, counted := sutCPU, func(d *dpdkPair) []*testpmd { return []*testpmd{d.host, d.guest} }
	if s.split {
		guestCPU, counted = srcCPU, func(d *dpdkPair) []*testpmd { return []*testpmd{d.host} }
	}
	d, err := s.startDPDK("rxonly", guestCPU, size)
	if err != nil {
		p.Err = err.Error()
		return p
	}
	defer d.close()
	var perr error
	recv := func() uint64 {
		rx, _, err := d.guest.portPackets(0)
		if err != nil {
			perr = err
		}
		return rx
	}
	if err := s.runRX(&p, []net.HardwareAddr{vmMAC(0)}, recv, d.cpu(counted(d)...), nil); err != nil || perr != nil {
		p.Err = errors.Join(err, perr).Error()
	}
	d.debug(s)
	return p
}

// dpdkTX: virtio_user txonly (on srcCPU) → net_vhost → testpmd io →
// af_xdp PMD → NIC → wire peer, counted by an XDP_DROP sink there.
func (s *suite) dpdkTX(size int) Point {
	p := Point{Dir: TX, System: DPDK, Size: size, VMs: 1, P50: -1, P99: -1}
	sink, err := s.wireSink()
	if err != nil {
		p.Err = err.Error()
		return p
	}
	defer sink.Close()
	recv := func() uint64 { st, _ := sink.Stats(); return st.Frames }
	base := recv()
	d, err := s.startDPDK("txonly", srcCPU, size)
	if err != nil {
		p.Err = err.Error()
		return p
	}
	var perr error
	sent := func() uint64 {
		_, tx, err := d.guest.portPackets(0)
		if err != nil {
			perr = err
		}
		return tx
	}
	cpu := d.cpu(d.host)
	werr := s.window(&p, nil, func() sample {
		c, err := cpu()
		return sample{at: time.Now(), recv: recv(), sent: sent(), cpu: c, err: err}
	})
	if _, err := d.guest.command("stop", "Done."); err != nil {
		perr = errors.Join(perr, err)
	}
	total := settle(recv) - base
	guestSent := sent()
	d.close()
	if err := errors.Join(werr, perr); err != nil {
		p.Err = err.Error()
		return p
	}
	p.LossPct = lossPct(total, guestSent)
	return p
}

// debug logs both testpmds' forwarding statistics when VMQ_BENCH_DEBUG=1.
func (d *dpdkPair) debug(s *suite) {
	if os.Getenv("VMQ_BENCH_DEBUG") != "1" {
		return
	}
	for _, p := range []*testpmd{d.host, d.guest} {
		out, err := p.command("show fwd stats all", "+++++")
		fmt.Fprintf(os.Stderr, "testpmd %s: %v\n%s\n", p.name, err, out)
		out, err = p.command("show port stats all", "Tx-bps:")
		fmt.Fprintf(os.Stderr, "testpmd %s: %v\n%s\nlog:\n%s\n", p.name, err, out, tail(p.output(), 3000))
	}
}

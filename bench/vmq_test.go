package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/bpf"
	"github.com/vmq/vmq/dataplane"
	"github.com/vmq/vmq/guest/frontend"
	"github.com/vmq/vmq/pktgen"
)

// vmqRig is the filter on the NIC, the dataplane (one worker on queue 0)
// and n VMs, each with a Go guest in this process.
type vmqRig struct {
	filter *bpf.Filter
	dp     *dataplane.Dataplane
	macs   []net.HardwareAddr
	guests []*frontend.Guest
	cancel context.CancelFunc
	done   []chan error
	// guestTids are the guests' threads in the split layout (on srcCPU).
	guestTids []int
	cleanup   []func()
}

func (r *vmqRig) close() {
	if r.cancel != nil {
		r.cancel()
	}
	for _, g := range r.guests {
		g.Close()
	}
	for _, d := range r.done {
		<-d
	}
	if r.dp != nil {
		r.dp.Close()
	}
	if r.filter != nil {
		r.filter.Detach()
		r.filter.Close()
	}
}

func (s *suite) startVMQ(n int) (*vmqRig, error) {
	r := &vmqRig{}
	err := s.host.Do(func() error {
		f, err := bpf.Load(bpf.Config{MaxVMs: max(n, 16), MaxQueues: 2})
		if err != nil {
			return err
		}
		r.filter = f
		_, err = f.Attach(s.nic.Index, bpf.Native)
		return err
	})
	if err != nil {
		r.close()
		return nil, fmt.Errorf("vmq filter: %w", err)
	}
	h := s.host.Handle()
	r.dp, err = dataplane.New(dataplane.Config{Ifindex: s.nic.Index, Queues: []int{0}, Filter: r.filter,
		BusyPoll: 20 * time.Microsecond, Netns: &h, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		r.close()
		return nil, fmt.Errorf("vmq dataplane: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	dir := filepath.Join(s.dir, fmt.Sprintf("vmq%d", s.nextStream()))
	if err := mkdir(dir); err != nil {
		r.close()
		return nil, err
	}
	for i := range n {
		mac := vmMAC(i)
		name := fmt.Sprintf("vm%d", i)
		sock := filepath.Join(dir, name+".sock")
		vm := dataplane.VM{Name: name, Slot: uint32(i + 1), MAC: mac, Socket: sock, QueuePairs: 1}
		if err := r.dp.AddVM(ctx, vm); err != nil {
			r.close()
			return nil, err
		}
		if err := r.filter.SetFilter(mac, 0, vm.Slot); err != nil {
			r.close()
			return nil, fmt.Errorf("steer %s: %w", mac, err)
		}
		gcfg := frontend.Config{MAC: mac, QueuePairs: 1, MrgRxbuf: true, EventIdx: true,
			QueueSize: s.ring, Logger: slog.New(slog.DiscardHandler)}
		// Diagnostics: VMQ_BENCH_GUEST=busy (guest never sleeps), noevent (no EVENT_IDX).
		switch os.Getenv("VMQ_BENCH_GUEST") {
		case "busy":
			gcfg.BusyPoll = true
		case "noevent":
			gcfg.EventIdx = false
		}
		g, err := frontend.Dial(sock, gcfg)
		if err != nil {
			r.close()
			return nil, fmt.Errorf("guest %s: %w", name, err)
		}
		done := make(chan error, 1)
		if s.split {
			// The guest's loop on its own thread on the source CPU.
			tidc := make(chan int, 1)
			go func() {
				runtime.LockOSThread()
				src := CPUSet(srcCPU)
				unix.SchedSetaffinity(0, &src)
				tidc <- unix.Gettid()
				done <- g.Run(ctx) // the thread exits with the goroutine: never reused
			}()
			r.guestTids = append(r.guestTids, <-tidc)
		} else {
			go func() { done <- g.Run(ctx) }()
		}
		r.macs = append(r.macs, mac)
		r.guests = append(r.guests, g)
		r.done = append(r.done, done)
	}
	// Ready when every guest receives: its rx virtqueue runs on the worker.
	for try := 0; ; try++ {
		missing := 0
		for _, g := range r.guests {
			if g.Stats().RxFrames == 0 {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if try == 20 {
			r.close()
			return nil, fmt.Errorf("vmq: %d of %d guests receive nothing after 20 probes", missing, n)
		}
		g, err := s.startGen(r.macs, 64, 1, 0, uint64(2*n), 20000)
		if err != nil {
			r.close()
			return nil, err
		}
		if _, err := g.wait(); err != nil {
			r.close()
			return nil, err
		}
		time.Sleep(100 * time.Millisecond)
	}
	return r, nil
}

func mkdir(dir string) error {
	if err := unix.Mkdir(dir, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("mkdir %s: %w", dir, err)
	}
	return nil
}

func (r *vmqRig) rxFrames() uint64 {
	var n uint64
	for _, g := range r.guests {
		n += g.Stats().RxFrames
	}
	return n
}

// pinSUT puts every thread of this process on the system-under-test CPU.
func pinSUT() error { return PinProcess(CPUSet(sutCPU)) }

// vmqRX: generator → NIC → filter → XSK → worker → vhost-user → n Go guests.
func (s *suite) vmqRX(size, n int) Point {
	p := Point{Dir: RX, System: VMQ, Size: size, VMs: n, P50: -1, P99: -1}
	r, err := s.startVMQ(n)
	if err != nil {
		p.Err = err.Error()
		return p
	}
	defer r.close()
	// Everything but the guests' threads on the SUT CPU; again after the
	// warm-up, since threads spawned from a guest thread inherit its CPU.
	pin := func() error { return PinProcessExcept(CPUSet(sutCPU), r.guestTids...) }
	if err := pin(); err != nil {
		p.Err = err.Error()
		return p
	}
	// The SUT's CPU: this process without the guests' threads.
	cpu := func() (CPUTimes, error) {
		c, err := SelfCPU()
		for _, tid := range r.guestTids {
			g, gerr := ThreadCPU(tid)
			c.User -= g.User
			c.System -= g.System
			err = errors.Join(err, gerr)
		}
		return c, err
	}
	stream := s.stream + 1000 // runRX takes the next stream
	if err := s.runRX(&p, r.macs, r.rxFrames, cpu, pin); err != nil {
		p.Err = err.Error()
		return p
	}
	// Latency of VM 0's stream (the generator gives destination i stream+i).
	for _, st := range r.guests[0].Stats().Streams {
		if st.Stream == stream {
			p.P50, p.P99 = st.LatencyP50, st.LatencyP99
		}
	}
	snap := r.dp.Snapshot()
	drops := map[string]uint64{}
	for _, v := range snap.VMs {
		for r, n := range v.DropsByReason {
			drops[r] += n
		}
	}
	var sockDrops, fillEmpty uint64
	for _, so := range snap.Sockets {
		sockDrops += so.RxDropped
		fillEmpty += so.FillRingEmpty
	}
	p.Note = fmt.Sprintf("xsk rx_dropped %d, fill ring empty %d, worker drops %v", sockDrops, fillEmpty, drops)
	return p
}

// vmqTX: a Go guest generates (its thread on srcCPU) → worker → XSK tx →
// NIC → wire peer, counted by an XDP_DROP sink there.
func (s *suite) vmqTX(size int) Point {
	p := Point{Dir: TX, System: VMQ, Size: size, VMs: 1, P50: -1, P99: -1}
	r, err := s.startVMQ(1)
	if err != nil {
		p.Err = err.Error()
		return p
	}
	defer r.close()
	sink, err := s.wireSink()
	if err != nil {
		p.Err = err.Error()
		return p
	}
	defer sink.Close()
	if err := PinProcessExcept(CPUSet(sutCPU), r.guestTids...); err != nil {
		p.Err = err.Error()
		return p
	}
	recv := func() uint64 { st, _ := sink.Stats(); return st.Frames }
	g := r.guests[0]
	base, baseTx := recv(), g.Stats().TxFrames
	tidc := make(chan int, 1)
	res := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		src, sut := CPUSet(srcCPU), CPUSet(sutCPU)
		unix.SchedSetaffinity(0, &src)
		defer unix.SchedSetaffinity(0, &sut) // the thread goes back to the pool
		tidc <- unix.Gettid()
		_, err := g.Generate(context.Background(), frontend.Traffic{Dst: s.peer.MAC, Size: size,
			Duration: s.warm + s.win + s.win/4, Stream: s.nextStream()})
		res <- err
	}()
	tid := <-tidc
	// Threads the runtime spawned from the generating thread inherited
	// its CPU: put them back.
	guests := append([]int{tid}, r.guestTids...)
	repin := func() error { return PinProcessExcept(CPUSet(sutCPU), guests...) }
	werr := s.window(&p, repin, func() sample {
		c, err1 := SelfCPU()
		var gc CPUTimes
		var err2 error
		for _, g := range guests {
			tc, err := ThreadCPU(g)
			gc.User, gc.System = gc.User+tc.User, gc.System+tc.System
			err2 = errors.Join(err2, err)
		}
		return sample{at: time.Now(), recv: recv(), sent: g.Stats().TxFrames, cpu: c, srcCPU: gc, err: errors.Join(err1, err2)}
	})
	dumpThreads("vmq tx")
	if err := errors.Join(werr, <-res); err != nil {
		p.Err = err.Error()
		return p
	}
	total := settle(recv) - base
	p.LossPct = lossPct(total, g.Stats().TxFrames-baseTx)
	if p.CPUSeconds > 0 && p.DeliveredMpps > 0 {
		p.CPUPerMpkt = p.CPUSeconds / (p.DeliveredMpps * p.Window.Seconds())
	}
	return p
}

// wireSink attaches an XDP_DROP counting sink to the wire peer.
func (s *suite) wireSink() (*pktgen.Sink, error) {
	var sink *pktgen.Sink
	err := s.wire.Do(func() (err error) {
		sink, err = pktgen.AttachSink(s.peer.Index, pktgen.SinkOptions{})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("wire sink: %w", err)
	}
	return sink, nil
}

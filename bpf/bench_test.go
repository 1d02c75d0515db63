package bpf

import (
	"testing"

	"github.com/cilium/ebpf"
)

// BenchmarkFilter measures the program per frame with BPF_PROG_TEST_RUN
// repeating in the kernel (one syscall for b.N frames), so ns/op is the
// program plus the test-run loop, not a syscall per frame.
func BenchmarkFilter(b *testing.B) {
	r := newRig(b, Config{MaxVMs: testMaxVMs, MaxQueues: testMaxQueues, MaxFilters: 1024}, 1)
	installFilters(b, r.f, testModel(Drop, Drop))
	for i := 0; i < 200; i++ { // a fuller table than 3 entries
		m := []byte{0x02, 0x10, 0, 0, byte(i >> 8), byte(i)}
		if err := r.f.SetFilter(m, uint16(i%10), uint32(1+i%testMaxVMs)); err != nil {
			b.Fatal(err)
		}
	}
	r.setSockets(b, map[uint32]bool{idx(0, 0): true, idx(1, 0): true, idx(2, 0): true})
	for _, c := range []struct {
		name  string
		frame []byte
		want  Verdict
	}{
		{"redirect", frame(macA, nil, 64), VerdictRedirect},
		{"redirect-vlan", frame(macA, [][2]uint16{q(100)}, 64), VerdictRedirect},
		{"pass-unknown", frame(macC, nil, 64), VerdictPass},
		{"flood", frame(bcast, nil, 64), VerdictRedirect},
		{"nosocket-drop", frame(macB, [][2]uint16{q(200)}, 64), VerdictDrop},
	} {
		b.Run(c.name, func(b *testing.B) {
			var ret uint32
			err := r.ns.Do(func() error {
				b.ResetTimer()
				var err error
				ret, err = r.f.Program().Run(&ebpf.RunOptions{
					Data:    c.frame,
					Repeat:  uint32(b.N),
					Context: xdpMd{DataEnd: uint32(len(c.frame)), IngressIfindex: uint32(r.link.Index)},
				})
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
			if Verdict(ret) != c.want {
				b.Fatalf("verdict %v, want %v", Verdict(ret), c.want)
			}
		})
	}
}

// BenchmarkModel is the pure-Go decision; it must not allocate.
func BenchmarkModel(b *testing.B) {
	m := testModel(Drop, Drop)
	m.Sockets = map[uint32]bool{idx(1, 0): true}
	fr := frame(macA, [][2]uint16{q(100)}, 64)
	b.ReportAllocs()
	for b.Loop() {
		if m.Classify(fr, 0).Outcome == OutcomeBadSlot {
			b.Fatal("unexpected")
		}
	}
}

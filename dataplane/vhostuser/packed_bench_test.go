package vhostuser

import (
	"fmt"
	"testing"

	"github.com/vmq/vmq/dataplane/virtio"
	"github.com/vmq/vmq/internal/testenv"
)

// BenchmarkPackedPush is BenchmarkPush on a packed ring: the guest side
// takes each used buffer and posts it again in the loop.
func BenchmarkPackedPush(b *testing.B) {
	for _, size := range []int{64, 1514} {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			g := newPackedGuest(b, 256, packedTestFeatures|virtio.NetFMrgRxbuf, true)
			for i := 0; i < 256; i++ {
				g.postRX(2048)
			}
			f := frameOf(size, 1)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := g.q.Push(f); err != nil {
					b.Fatal(err)
				}
				if i%32 == 31 {
					g.q.Flush()
					for k := 0; k < 32; k++ { // the guest recycles the batch
						id := uint16(g.usedPos) // ids were posted in slot order
						if g.usedPos++; g.usedPos == g.num {
							g.usedPos, g.usedWrap = 0, !g.usedWrap
						}
						g.repost(id)
					}
				}
			}
			g.q.Flush()
		})
	}
}

// BenchmarkPackedPop is BenchmarkPop on a packed ring (header and frame
// in two descriptors).
func BenchmarkPackedPop(b *testing.B) {
	for _, size := range []int{64, 1514} {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			g := newPackedGuest(b, 256, packedTestFeatures, false)
			f := frameOf(size, 1)
			hdr, data := g.alloc(virtio.NetHdrLen), g.alloc(size)
			copy(g.at(data, size), f)
			// The guest side without the test guest's bookkeeping: two
			// descriptors per frame, id = its first slot.
			post := func() {
				s0, s1 := g.availPos, (g.availPos+1)%g.num
				fl := g.availFlags()
				writePackedDesc(g.mem[16*s1:], data, uint32(size), uint16(s0), fl)
				writePackedDesc(g.mem[16*s0:], hdr, virtio.NetHdrLen, uint16(s0), fl|virtio.DescFNext)
				if g.availPos += 2; g.availPos >= g.num {
					g.availPos, g.availWrap = g.availPos-g.num, !g.availWrap
				}
			}
			for i := 0; i < 128; i++ {
				post()
			}
			dst := make([]byte, 2048)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := g.q.Pop(dst); err != nil {
					b.Fatal(err)
				}
				if i%32 == 31 {
					g.q.Flush()
					for k := 0; k < 32; k++ {
						post() // the slots Flush just returned
					}
				}
			}
			g.q.Flush()
		})
	}
}

// BenchmarkDPDKComparePacked: vmq's back-end and DPDK's net_vhost, each
// with the same testpmd virtio_user guest on split and on packed rings
// (in_order=1 both), 64-byte frames, alternating for packedRounds rounds.
//
//	go test -run XXX -bench DPDKComparePacked -benchtime 1x ./dataplane/vhostuser
func BenchmarkDPDKComparePacked(b *testing.B) {
	testenv.RequireRoot(b)
	testenv.RequireCommand(b, "dpdk-testpmd")
	const packedRounds = 2
	rings := []struct{ name, opts string }{{"split", ",in_order=1"}, {"packed", ",in_order=1,packed_vq=1"}}
	for _, dir := range []string{"to_guest", "from_guest"} {
		b.Run(dir, func(b *testing.B) {
			res := map[string][]float64{}
			for r := 0; r < packedRounds; r++ {
				for _, backend := range []string{"vmq", "dpdk"} {
					for _, ring := range rings {
						k := backend + "-" + ring.name
						res[k] = append(res[k], measureBackendVdev(b, backend, dir == "to_guest", 64, ring.opts))
					}
				}
			}
			for _, backend := range []string{"vmq", "dpdk"} {
				s, p := median(res[backend+"-split"]), median(res[backend+"-packed"])
				b.Logf("%s %s: split %v packed %v Mpps", dir, backend, res[backend+"-split"], res[backend+"-packed"])
				b.ReportMetric(s, backend+"-split-Mpps")
				b.ReportMetric(p, backend+"-packed-Mpps")
			}
		})
	}
}

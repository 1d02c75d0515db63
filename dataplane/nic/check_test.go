package nic

import (
	"log/slog"
	"net"
	"strings"
	"testing"
)

func veth(queues, mtu int) Info {
	return Info{
		Name: "veth0", Index: 2, Driver: "veth", DriverVersion: "1.0", MTU: mtu,
		MAC:        net.HardwareAddr{2, 0, 0, 0, 0, 1},
		RxChannels: queues, TxChannels: queues, MaxRx: queues, MaxTx: queues,
		ChannelsKnown: true, Up: true,
		XDPFeatures: XDPBasic | XDPRedirect | XDPRxSG, XDPFeaturesKnown: true,
	}
}

func ixgbe(combined, maxCombined, mtu int) Info {
	return Info{
		Name: "eth0", Index: 3, Driver: "ixgbe", BusInfo: "0000:03:00.0", MTU: mtu,
		MAC:              net.HardwareAddr{2, 0, 0, 0, 0, 2},
		CombinedChannels: combined, TxChannels: 0, MaxCombined: maxCombined,
		ChannelsKnown: true, Up: true,
		XDPFeatures:      XDPBasic | XDPRedirect | XDPNdoXmit | XDPXSKZeroCopy,
		XDPFeaturesKnown: true,
	}
}

type want struct {
	field string
	fatal bool
	// all of these appear in the message
	says []string
}

func TestCheck(t *testing.T) {
	noFeatures := ixgbe(4, 64, 1500)
	noFeatures.Driver, noFeatures.XDPFeatures = "r8169", 0
	noZC := ixgbe(4, 64, 1500)
	noZC.XDPFeatures &^= XDPXSKZeroCopy
	unknown := ixgbe(4, 64, 1500)
	unknown.ChannelsKnown, unknown.CombinedChannels, unknown.MaxCombined = false, 0, 0
	down := ixgbe(4, 64, 1500)
	down.Up = false
	vethNoXDP := veth(2, 1500)
	vethNoXDP.XDPFeatures = 0
	// A kernel whose veth has no multi-buffer XDP (before 6.0).
	vethNoSG := func(mtu int) Info { i := veth(1, mtu); i.XDPFeatures &^= XDPRxSG; return i }

	for _, tc := range []struct {
		name string
		info Info
		req  Requirements
		want []want
	}{
		{"all good ixgbe", ixgbe(4, 64, 1500),
			Requirements{Queues: []int{0, 1, 2, 3}, FrameSize: 2048, AttachMode: "native", XSKMode: "zerocopy"}, nil},
		{"all good veth generic copy", veth(4, 1500),
			Requirements{Queues: []int{0, 3}, AttachMode: "generic", XSKMode: "copy"}, nil},
		{"zero values mean defaults", ixgbe(1, 1, 1500), Requirements{Queues: []int{0}}, nil},

		{"queue beyond combined channels", ixgbe(4, 64, 1500), Requirements{Queues: []int{0, 5}},
			[]want{{"queues", true, []string{`queue 5: eth0 has 4 combined channels; raise them with "ethtool -L eth0 combined 6" or use queues 0-3`}}}},
		{"queue beyond the NIC's maximum", ixgbe(4, 4, 1500), Requirements{Queues: []int{4}},
			[]want{{"queues", true, []string{"queue 4: eth0 has 4 combined channels (at most 4); use queues 0-3"}}}},
		{"queue beyond veth rx channels", veth(1, 1500), Requirements{Queues: []int{2}, XSKMode: "copy"},
			[]want{{"queues", true, []string{"queue 2: veth0 has 1 rx channels (at most 1;", "numrxqueues", "use queue 0"}}}},
		{"veth can raise", func() Info { i := veth(2, 1500); i.MaxRx, i.MaxTx = 4, 4; return i }(), Requirements{Queues: []int{3}, XSKMode: "copy"},
			[]want{{"queues", true, []string{`raise them with "ethtool -L veth0 rx 4 tx 4" or use queues 0-1`}}}},
		{"channels not reported", unknown, Requirements{Queues: []int{1}},
			[]want{{"queues", true, []string{"does not report its channels", "use queue 0"}}}},
		{"negative and duplicate queues", ixgbe(4, 64, 1500), Requirements{Queues: []int{-1, 2, 2}},
			[]want{{"queues", true, []string{"queue -1"}}, {"queues", true, []string{"queue 2: listed more than once"}}}},

		{"MTU 1500 fits 2048", ixgbe(4, 64, 1500), Requirements{FrameSize: 2048, UMEMHeadroom: 256}, nil},
		{"MTU 1774 is the 2048 limit", ixgbe(4, 64, 1774), Requirements{FrameSize: 2048}, nil},
		{"MTU 1775 does not fit 2048", ixgbe(4, 64, 1775), Requirements{FrameSize: 2048},
			[]want{{"mtu", true, []string{"MTU 1775", "needs 1793 bytes", "2048-byte frame holds 1792", "use frame_size 4096 or lower the MTU to 1774"}}}},
		{"MTU 1500 with big UMEM headroom", ixgbe(4, 64, 1500), Requirements{FrameSize: 2048, UMEMHeadroom: 512},
			[]want{{"mtu", true, []string{"needs 1518 bytes", "holds 1280", "512 of UMEM headroom", "use frame_size 4096"}}}},
		{"MTU 3000 fits 4096", ixgbe(4, 64, 3000), Requirements{FrameSize: 4096}, nil},
		{"MTU 3822 is the 4096 limit", ixgbe(4, 64, 3822), Requirements{FrameSize: 4096}, nil},
		{"MTU 9000 does not fit 4096 without multi-buffer", ixgbe(4, 64, 9000), Requirements{FrameSize: 4096},
			[]want{{"mtu", true, []string{"needs 9018 bytes", "4096-byte frame holds 3840", "no AF_XDP multi-buffer (XDP_USE_SG, Linux 6.6+)", `lower the MTU to 3822 ("ip link set dev eth0 mtu 3822")`}},
				{"attach_mode", false, []string{"generic mode", "driver ixgbe of eth0 has no multi-buffer XDP (rx-sg", "MTU 9000"}},
				{"xsk_mode", false, []string{"copy mode"}}}},
		{"MTU 9000 with multi-buffer on veth", veth(1, 9000), Requirements{FrameSize: 4096, AttachMode: "native", XSKMode: "copy", MultiBuffer: true},
			[]want{{"mtu", false, []string{"MTU 9000: a frame spans up to 3 UMEM frames", "MTU <= 3822"}}}},
		{"MTU 9000 with multi-buffer, 2048-byte frames", veth(1, 9000), Requirements{FrameSize: 2048, AttachMode: "native", XSKMode: "copy", MultiBuffer: true},
			[]want{{"mtu", false, []string{"up to 6 UMEM frames", "MTU <= 1774"}}}},
		{"MTU 9000 on a driver without multi-buffer XDP", ixgbe(4, 64, 9000), Requirements{FrameSize: 4096, AttachMode: "native", MultiBuffer: true},
			[]want{{"mtu", false, []string{"up to 3 UMEM frames"}},
				{"attach_mode", true, []string{"attach_mode native: driver ixgbe", "rx-sg", "lower the MTU to 3822", "attach_mode generic"}},
				{"xsk_mode", false, []string{"copy mode"}}}},
		{"MTU 9001 is above vmq's maximum", veth(1, 9001), Requirements{FrameSize: 4096, XSKMode: "copy", MultiBuffer: true},
			[]want{{"mtu", true, []string{"MTU 9001, above the 9000 vmq supports", "mtu 9000"}}}},
		{"bad frame size", ixgbe(4, 64, 1500), Requirements{FrameSize: 3000},
			[]want{{"frame_size", true, []string{"frame_size 3000", "2048 or 4096"}}}},
		{"negative headroom", ixgbe(4, 64, 1500), Requirements{UMEMHeadroom: -1},
			[]want{{"umem_headroom", true, nil}}},

		{"native on veth with big MTU, no multi-buffer XDP", vethNoSG(3507), Requirements{FrameSize: 4096, AttachMode: "native", XSKMode: "copy"},
			[]want{{"attach_mode", true, []string{"MTU <= 3506", "MTU is 3507", "attach_mode generic"}}}},
		{"native on veth with big MTU, multi-buffer XDP", veth(1, 3507), Requirements{FrameSize: 4096, AttachMode: "native", XSKMode: "copy"}, nil},
		{"auto on veth with big MTU falls back", vethNoSG(3800), Requirements{FrameSize: 4096},
			[]want{{"attach_mode", false, []string{"generic mode", "MTU <= 3506"}},
				{"xsk_mode", false, []string{"copy mode", "generic mode"}}}},
		{"native on veth MTU 3506 attaches", veth(1, 3506), Requirements{FrameSize: 4096, AttachMode: "native", XSKMode: "copy"}, nil},
		{"veth without xdp features (peer tx > rx)", vethNoXDP, Requirements{AttachMode: "native", XSKMode: "copy"},
			[]want{{"attach_mode", true, []string{"tx queues than it has rx queues"}}}},
		{"driver without native XDP", noFeatures, Requirements{AttachMode: "native"},
			[]want{{"attach_mode", true, []string{"driver r8169", "no native XDP", "xdp-features: none"}},
				{"xsk_mode", false, []string{"copy mode"}}}},
		{"driver without native XDP, auto", noFeatures, Requirements{},
			[]want{{"attach_mode", false, []string{"generic mode", "r8169"}}, {"xsk_mode", false, []string{"copy mode"}}}},

		{"auto veth is copy mode", veth(1, 1500), Requirements{},
			[]want{{"xsk_mode", false, []string{"copy mode", "does not offer AF_XDP zero-copy"}}}},
		{"zerocopy on veth", veth(1, 1500), Requirements{XSKMode: "zerocopy"},
			[]want{{"xsk_mode", true, []string{"xsk_mode zerocopy", "veth"}}}},
		{"zerocopy with generic attach", ixgbe(4, 64, 1500), Requirements{AttachMode: "generic", XSKMode: "zerocopy"},
			[]want{{"xsk_mode", true, []string{"needs native XDP"}}}},
		{"zerocopy on a driver without it", noZC, Requirements{XSKMode: "zerocopy"},
			[]want{{"xsk_mode", true, []string{"ixgbe", "does not offer AF_XDP zero-copy"}}}},
		{"bad modes", ixgbe(4, 64, 1500), Requirements{AttachMode: "offload", XSKMode: "fast"},
			[]want{{"attach_mode", true, []string{`"offload"`}}, {"xsk_mode", true, []string{`"fast"`}}}},
		{"link down is a note", down, Requirements{},
			[]want{{"link", false, []string{"eth0 is down", "ip link set dev eth0 up"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Check(tc.info, tc.req)
			for _, p := range got {
				t.Log(p)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %d problems, want %d", len(got), len(tc.want))
			}
			fatal := false
			for i, w := range tc.want {
				p := got[i]
				if p.Field != w.field || p.Fatal != w.fatal {
					t.Errorf("problem %d: field %q fatal %v, want %q %v", i, p.Field, p.Fatal, w.field, w.fatal)
				}
				for _, s := range w.says {
					if !strings.Contains(p.Message, s) {
						t.Errorf("problem %d: %q does not say %q", i, p.Message, s)
					}
				}
				fatal = fatal || w.fatal
			}
			if err := Err(got); (err != nil) != fatal {
				t.Errorf("Err = %v, want error: %v", err, fatal)
			}
		})
	}
}

func TestXDPFeaturesString(t *testing.T) {
	for f, s := range map[XDPFeatures]string{
		0:                                  "none",
		XDPBasic | XDPRedirect | XDPRxSG:   "basic,redirect,rx-sg",
		XDPXSKZeroCopy | XDPFeatures(1<<9): "xsk-zerocopy,0x200",
	} {
		if got := f.String(); got != s {
			t.Errorf("%#x: %q, want %q", uint64(f), got, s)
		}
	}
}

func TestInfoLogValue(t *testing.T) {
	var b strings.Builder
	logger := slog.New(slog.NewTextHandler(&b, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}))
	logger.Info("nic", "nic", veth(4, 1500))
	want := `level=INFO msg=nic nic.name=veth0 nic.index=2 nic.driver=veth nic.mtu=1500 nic.mac=02:00:00:00:00:01 nic.up=true nic.queues=4 nic.driver_version=1.0 nic.channels="combined 0/0 rx 4/4 tx 4/4" nic.xdp_features=basic,redirect,rx-sg` + "\n"
	if b.String() != want {
		t.Errorf("log line\n%s want\n%s", b.String(), want)
	}
}

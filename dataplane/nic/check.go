package nic

import (
	"errors"
	"fmt"
	"strings"
)

// Attach and socket modes, as spelled in vmq's configuration.
const (
	ModeAuto     = "auto"
	ModeNative   = "native"
	ModeGeneric  = "generic"
	ModeCopy     = "copy"
	ModeZeroCopy = "zerocopy"
)

const (
	// xdpPacketHeadroom is XDP_PACKET_HEADROOM: the kernel keeps it in front
	// of every frame's data in an AF_XDP chunk.
	xdpPacketHeadroom = 256
	// frameOverhead is what a frame carries beyond the MTU: the Ethernet
	// header and one 802.1Q tag.
	frameOverhead = 14 + 4
	// VethNativeMaxMTU is the largest peer MTU with which native XDP
	// attaches on a veth without a multi-buffer (xdp.frags) program:
	// SKB_WITH_OVERHEAD(4096 - 256) - 14. Above it the kernel says ERANGE.
	VethNativeMaxMTU = 3506
	defaultFrameSize = 2048
	// MaxMTU is the largest MTU vmq runs with: frames then span several
	// UMEM frames (AF_XDP multi-buffer).
	MaxMTU = 9000
)

// Requirements is what the configuration asks of one NIC.
type Requirements struct {
	// Queues are the rx queues vmqd runs workers and sockets on.
	Queues []int
	// FrameSize is the AF_XDP UMEM chunk size, 2048 or 4096 (0 means 2048).
	FrameSize int
	// UMEMHeadroom is the headroom the UMEM reserves in front of each
	// frame, on top of the kernel's XDP headroom.
	UMEMHeadroom int
	// AttachMode is the XDP attach mode: auto (native, else generic),
	// native or generic. Empty means auto.
	AttachMode string
	// XSKMode is the AF_XDP socket mode: auto (zero-copy, else copy),
	// copy or zerocopy. Empty means auto.
	XSKMode string
	// MultiBuffer says the kernel has AF_XDP multi-buffer (XDP_USE_SG,
	// Linux 6.6+; xsk.ProbeMultiBuffer): an MTU whose frames do not fit
	// one UMEM frame needs it.
	MultiBuffer bool
}

// Problem is one way the NIC does not fit the requirements. Fatal
// problems make the configuration unusable; the others explain a fallback
// (generic XDP, copy mode) or a state worth a warning.
type Problem struct {
	// Field is the configuration key at fault ("queues", "frame_size",
	// "mtu", "attach_mode", "xsk_mode", "link").
	Field   string
	Message string
	Fatal   bool
}

func (p Problem) String() string {
	if p.Fatal {
		return "error: " + p.Message
	}
	return "note: " + p.Message
}

// Err joins the fatal problems into one error, or returns nil if there
// are none.
func Err(problems []Problem) error {
	var errs []error
	for _, p := range problems {
		if p.Fatal {
			errs = append(errs, errors.New(p.Message))
		}
	}
	return errors.Join(errs...)
}

// Check compares the NIC with the requirements. It only reasons about
// what Inspect reported; the kernel has the last word when vmqd attaches.
func Check(info Info, req Requirements) []Problem {
	var ps []Problem
	add := func(field string, fatal bool, format string, args ...any) {
		ps = append(ps, Problem{Field: field, Message: fmt.Sprintf(format, args...), Fatal: fatal})
	}

	if !info.Up {
		add("link", false, "%s is down: nothing arrives until \"ip link set dev %s up\"", info.Name, info.Name)
	}

	checkQueues(info, req.Queues, add)

	frame := req.FrameSize
	if frame == 0 {
		frame = defaultFrameSize
	}
	switch {
	case frame != 2048 && frame != 4096:
		add("frame_size", true, "frame_size %d: AF_XDP frames (aligned chunks) must be 2048 or 4096 bytes", req.FrameSize)
	case req.UMEMHeadroom < 0:
		add("umem_headroom", true, "umem_headroom %d: must not be negative", req.UMEMHeadroom)
	default:
		room := frame - xdpPacketHeadroom - req.UMEMHeadroom
		need := info.MTU + frameOverhead
		fits := room - frameOverhead
		switch {
		case need <= room:
		case info.MTU > MaxMTU:
			add("mtu", true, "mtu: %s has MTU %d, above the %d vmq supports; lower it (\"ip link set dev %s mtu %d\")",
				info.Name, info.MTU, MaxMTU, info.Name, MaxMTU)
		case room < 1518 || !req.MultiBuffer:
			hint := fmt.Sprintf("lower the MTU to %d (\"ip link set dev %s mtu %d\")", fits, info.Name, fits)
			if fits < 68 {
				hint = "lower umem_headroom"
			}
			if frame == 2048 && need <= 4096-xdpPacketHeadroom-req.UMEMHeadroom {
				hint = "use frame_size 4096 or " + hint
			}
			why := ""
			if !req.MultiBuffer {
				why = " and this kernel has no AF_XDP multi-buffer (XDP_USE_SG, Linux 6.6+) to spread a frame over several"
			}
			add("mtu", true, "mtu: %s has MTU %d, so a frame needs %d bytes (MTU + 14 Ethernet + 4 VLAN), but a %d-byte frame holds %d after %d bytes of XDP headroom and %d of UMEM headroom%s; %s",
				info.Name, info.MTU, need, frame, max(room, 0), xdpPacketHeadroom, req.UMEMHeadroom, why, hint)
		default:
			add("mtu", false, "MTU %d: a frame spans up to %d UMEM frames (AF_XDP multi-buffer); frames that fit one (MTU <= %d) cost the same as before",
				info.MTU, (need+room-1)/room, fits)
		}
	}

	attach := modeOr(req.AttachMode, ModeAuto)
	xsk := modeOr(req.XSKMode, ModeAuto)
	validAttach := attach == ModeAuto || attach == ModeNative || attach == ModeGeneric
	if !validAttach {
		add("attach_mode", true, "attach_mode %q: must be auto, native or generic", req.AttachMode)
	}
	validXSK := xsk == ModeAuto || xsk == ModeCopy || xsk == ModeZeroCopy
	if !validXSK {
		add("xsk_mode", true, "xsk_mode %q: must be auto, copy or zerocopy", req.XSKMode)
	}
	if !validAttach || !validXSK {
		return ps
	}

	// Why native XDP would not attach.
	var noNative string
	switch {
	case info.XDPFeaturesKnown && !info.XDPFeatures.Has(XDPBasic) && info.IsVeth():
		// veth clears its features while the peer has more tx queues than
		// it has rx queues; native attach then fails with ENOSPC.
		noNative = fmt.Sprintf("veth %s offers no native XDP now (%d rx channels): its peer must not have more tx queues than it has rx queues: raise its rx channels to the peer's tx count (\"ethtool -L %s rx N\") or lower the peer's (\"ethtool -L PEER tx %d\")",
			info.Name, info.RxChannels, info.Name, info.RxChannels)
	case info.XDPFeaturesKnown && !info.XDPFeatures.Has(XDPBasic):
		noNative = fmt.Sprintf("driver %s of %s has no native XDP (xdp-features: %s; an out-of-tree driver may just not advertise it)", info.Driver, info.Name, info.XDPFeatures)
	case info.IsVeth() && info.MTU > VethNativeMaxMTU && info.XDPFeaturesKnown && !info.XDPFeatures.Has(XDPRxSG):
		noNative = fmt.Sprintf("native XDP on veth %s needs the peer's MTU <= %d without multi-buffer (rx-sg), and %s's MTU is %d (both ends usually match); lower it on both ends with \"ip link set dev %s mtu %d\"",
			info.Name, VethNativeMaxMTU, info.Name, info.MTU, info.Name, VethNativeMaxMTU)
	case info.MTU+frameOverhead > 4096-xdpPacketHeadroom && info.XDPFeaturesKnown && !info.XDPFeatures.Has(XDPRxSG):
		// A frame larger than a page reaches XDP in fragments, which
		// only a multi-buffer driver builds.
		noNative = fmt.Sprintf("driver %s of %s has no multi-buffer XDP (rx-sg not in xdp-features: %s), which MTU %d needs; lower the MTU to %d (\"ip link set dev %s mtu %d\")",
			info.Driver, info.Name, info.XDPFeatures, info.MTU, 4096-xdpPacketHeadroom-frameOverhead, info.Name, 4096-xdpPacketHeadroom-frameOverhead)
	}
	native := attach != ModeGeneric && noNative == ""
	if noNative != "" {
		switch attach {
		case ModeNative:
			add("attach_mode", true, "attach_mode native: %s; or use attach_mode generic", noNative)
		case ModeAuto:
			add("attach_mode", false, "XDP will attach in generic mode: %s", noNative)
		}
	}

	// Why sockets would run in copy mode.
	var noZC string
	switch {
	case xsk == ModeCopy:
	case !native:
		noZC = "zero-copy needs native XDP, and XDP on " + info.Name + " attaches in generic mode"
	case info.XDPFeaturesKnown && !info.XDPFeatures.Has(XDPXSKZeroCopy):
		noZC = fmt.Sprintf("driver %s of %s does not offer AF_XDP zero-copy (xdp-features: %s)", info.Driver, info.Name, info.XDPFeatures)
	case info.IsVeth():
		noZC = "AF_XDP on veth is copy mode only"
	}
	if noZC != "" {
		switch xsk {
		case ModeZeroCopy:
			add("xsk_mode", true, "xsk_mode zerocopy: %s; use xsk_mode copy or auto", noZC)
		case ModeAuto:
			add("xsk_mode", false, "AF_XDP sockets will run in copy mode: %s", noZC)
		}
	}
	return ps
}

func modeOr(s, def string) string {
	if s == "" {
		return def
	}
	return strings.ToLower(s)
}

func checkQueues(info Info, queues []int, add func(string, bool, string, ...any)) {
	have := info.Queues()
	usable := "use queue 0"
	if have > 1 {
		usable = fmt.Sprintf("use queues 0-%d", have-1)
	}
	need := 0
	for _, q := range queues {
		need = max(need, q+1)
	}
	seen := make(map[int]bool, len(queues))
	for _, q := range queues {
		switch {
		case q < 0:
			add("queues", true, "queue %d: queue numbers start at 0", q)
		case seen[q]:
			add("queues", true, "queue %d: listed more than once; each queue has one worker", q)
		case q >= have:
			state, fix := raiseHint(info, need)
			if fix != "" {
				add("queues", true, "queue %d: %s; %s or %s", q, state, fix, usable)
			} else {
				add("queues", true, "queue %d: %s; %s", q, state, usable)
			}
		}
		seen[q] = true
	}
}

// raiseHint says how many queues the NIC has and, if it can have need of
// them, the command that raises them.
func raiseHint(info Info, need int) (state, fix string) {
	n := info.Name
	switch {
	case !info.ChannelsKnown:
		return fmt.Sprintf("%s does not report its channels (ethtool -l), so only queue 0 is assumed", n), ""
	case info.MaxCombined > 0 || info.CombinedChannels > 0:
		state = fmt.Sprintf("%s has %d combined channels", n, info.CombinedChannels)
		if info.RxChannels > 0 {
			state = fmt.Sprintf("%s has %d combined and %d rx channels", n, info.CombinedChannels, info.RxChannels)
		}
		if want := need - info.RxChannels; want <= info.MaxCombined {
			return state, fmt.Sprintf("raise them with \"ethtool -L %s combined %d\"", n, want)
		}
		return fmt.Sprintf("%s (at most %d)", state, info.MaxCombined), ""
	default:
		state = fmt.Sprintf("%s has %d rx channels", n, info.RxChannels)
		if need <= info.MaxRx {
			// Raise tx too: AF_XDP sends on the same queue id, and a veth
			// peer's tx queues must not outnumber our rx queues for XDP.
			return state, fmt.Sprintf("raise them with \"ethtool -L %s rx %d tx %d\"", n, need, need)
		}
		if info.IsVeth() {
			return fmt.Sprintf("%s (at most %d; a veth's maximum is fixed when it is created: numrxqueues/numtxqueues)", state, info.MaxRx), ""
		}
		return fmt.Sprintf("%s (at most %d)", state, info.MaxRx), ""
	}
}

package nic_test

import (
	"fmt"

	"github.com/vmq/vmq/dataplane/nic"
)

// vmqd inspects each configured NIC at start, logs it and the notes, and
// refuses to start on a fatal problem.
func ExampleCheck() {
	info := nic.Info{ // as nic.Inspect("eth0") would report an ixgbe port
		Name: "eth0", Driver: "ixgbe", MTU: 1500, Up: true,
		CombinedChannels: 4, MaxCombined: 63, ChannelsKnown: true,
		XDPFeatures:      nic.XDPBasic | nic.XDPRedirect | nic.XDPNdoXmit | nic.XDPXSKZeroCopy,
		XDPFeaturesKnown: true,
	}
	problems := nic.Check(info, nic.Requirements{Queues: []int{0, 1, 5}, FrameSize: 2048})
	for _, p := range problems {
		fmt.Println(p)
	}
	fmt.Println("start:", nic.Err(problems) == nil)
	// Output:
	// error: queue 5: eth0 has 4 combined channels; raise them with "ethtool -L eth0 combined 6" or use queues 0-3
	// start: false
}

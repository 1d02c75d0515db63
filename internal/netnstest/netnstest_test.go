package netnstest

import (
	"net"
	"strings"
	"testing"
)

func TestVethPairAcrossNamespaces(t *testing.T) {
	host, wire := New(t), New(t)
	a, b := NewVethPair(t, host, wire, VethOptions{Queues: 4, MTU: 1500})
	if a.Index == 0 || b.Index == 0 || len(a.MAC) != 6 {
		t.Fatalf("bad links: %+v %+v", a, b)
	}
	// Each end is visible only in its own namespace.
	out := host.Run(t, "ip", "-o", "link", "show")
	if !strings.Contains(out, a.Name) || strings.Contains(out, b.Name+":") {
		t.Fatalf("host namespace links:\n%s", out)
	}
	err := wire.Do(func() error {
		_, err := net.InterfaceByName(b.Name)
		return err
	})
	if err != nil {
		t.Fatalf("peer not in wire namespace: %v", err)
	}
	if ch := wire.Run(t, "ethtool", "-l", b.Name); !strings.Contains(ch, "RX:\t\t4") {
		t.Fatalf("channels not raised:\n%s", ch)
	}
}

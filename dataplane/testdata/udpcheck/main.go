// udpcheck runs inside a test guest: it receives a sequence-numbered UDP
// stream (u64 sequence, then bytes derived from it) and checks every
// frame. A frame with sequence ^0 ends the run: it prints one summary
// line and exits.
package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"strings"
)

func main() {
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{Port: 9000})
	if err != nil {
		fmt.Println("UDPCHECK-ERROR", err)
		os.Exit(1)
	}
	fmt.Println("UDPCHECK-READY")
	var recv, corrupt, dup, late, next uint64
	var gaps []string
	seen := map[uint64]bool{}
	buf := make([]byte, 2048)
	for {
		n, err := conn.Read(buf)
		if err != nil {
			fmt.Println("UDPCHECK-ERROR", err)
			os.Exit(1)
		}
		if n < 8 {
			corrupt++
			continue
		}
		seq := binary.BigEndian.Uint64(buf)
		if seq == ^uint64(0) {
			break
		}
		ok := true
		for i := 8; i < n; i++ {
			if buf[i] != byte(seq)+byte(i) {
				ok = false
				break
			}
		}
		if !ok || n != 200 {
			corrupt++
			continue
		}
		if seen[seq] {
			dup++
			continue
		}
		seen[seq] = true
		recv++
		switch {
		case seq == next:
			next++
		case seq > next:
			gaps = append(gaps, fmt.Sprintf("%d+%d", next, seq-next))
			next = seq + 1
		default:
			late++ // arrived after a later one: reordered
		}
	}
	fmt.Printf("UDPCHECK recv=%d corrupt=%d dup=%d late=%d next=%d gaps=%s\n",
		recv, corrupt, dup, late, next, strings.Join(gaps, ","))
}

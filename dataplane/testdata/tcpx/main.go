// tcpx runs inside a test guest: one TCP transfer, its bytes hashed.
//
//	tcpx recv PORT [fast]     accept one connection, read to EOF
//	tcpx send ADDR N [fast]   connect, write N bytes of a fixed pseudo-random stream
//
// fast (for benchmarks): no hashing, and the sender writes zeros, so
// the guest's CPU goes to its network stack (under TCG hashing costs
// more than the transfer).
//
// Each prints one line, TCPX-RECV or TCPX-SENT, with the byte count, the
// SHA-256 of the bytes, the wall time and the CPU time the whole guest
// spent meanwhile (busy jiffies of /proc/stat, in ms).
package main

import (
	"bufio"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmq/vmq/internal/xorstream"
)

func main() {
	if len(os.Args) < 3 {
		fail(fmt.Errorf("usage: tcpx recv PORT | tcpx send ADDR N"))
	}
	switch os.Args[1] {
	case "recv":
		ln, err := net.Listen("tcp", ":"+os.Args[2])
		if err != nil {
			fail(err)
		}
		c, err := ln.Accept()
		if err != nil {
			fail(err)
		}
		cpu0, t0 := busyMS(), time.Now()
		h := sha256.New()
		var w io.Writer = h
		if fast() {
			w = io.Discard
		}
		n, err := io.CopyBuffer(w, c, make([]byte, 256<<10))
		if err != nil {
			fail(err)
		}
		report("TCPX-RECV", n, h.Sum(nil), t0, cpu0)
	case "send":
		if len(os.Args) < 4 {
			fail(fmt.Errorf("send: no byte count"))
		}
		total, err := strconv.ParseInt(os.Args[3], 10, 64)
		if err != nil {
			fail(err)
		}
		// The receiver may not listen yet: retry while refused.
		var c net.Conn
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			c, err = net.DialTimeout("tcp", os.Args[2], 10*time.Second)
			if err == nil || !errors.Is(err, syscall.ECONNREFUSED) || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			fail(err)
		}
		cpu0, t0 := busyMS(), time.Now()
		h := sha256.New()
		buf := make([]byte, 256<<10)
		x := xorstream.Seed
		var sent int64
		for sent < total {
			n := int(min(int64(len(buf)), total-sent))
			if fast() {
				if _, err := c.Write(buf[:n]); err != nil {
					fail(err)
				}
				sent += int64(n)
				continue
			}
			xorstream.Fill(buf[:n], &x)
			h.Write(buf[:n])
			if _, err := c.Write(buf[:n]); err != nil {
				fail(err)
			}
			sent += int64(n)
		}
		if err := c.Close(); err != nil {
			fail(err)
		}
		report("TCPX-SENT", sent, h.Sum(nil), t0, cpu0)
	default:
		fail(fmt.Errorf("unknown mode %q", os.Args[1]))
	}
}

func fast() bool { return len(os.Args) > 3 && os.Args[len(os.Args)-1] == "fast" }

func report(what string, n int64, sum []byte, t0 time.Time, cpu0 int64) {
	fmt.Printf("%s %d %x %d %d\n", what, n, sum, time.Since(t0).Milliseconds(), busyMS()-cpu0)
}

// busyMS is the guest's CPU time in all but idle and iowait, in ms
// (USER_HZ is 100).
func busyMS() int64 {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan()
	fields := strings.Fields(sc.Text())
	var busy int64
	for i, s := range fields[1:] {
		v, _ := strconv.ParseInt(s, 10, 64)
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy * 10
}

func fail(err error) {
	fmt.Println("TCPX-ERROR", err)
	os.Exit(1)
}

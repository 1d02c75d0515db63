package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmq/vmq/internal/netnstest"
	"github.com/vmq/vmq/pktgen"
)

func TestFlagErrors(t *testing.T) {
	bad := [][]string{
		{},
		{"--dev", "x"},
		{"--dev", "x", "--dst-mac", "02:00:00:00:00:0a"}, // no count or duration
		{"--dev", "x", "--dst-mac", "zz", "--count", "1"},
		{"--dev", "x", "--dst-mac", "02:00:00:00:00:0a@5000", "--count", "1"},
		{"--dev", "x", "--dst-mac", "02:00:00:00:00:0a", "--count", "1", "--size", "2000"}, // jumbo needs --mode packet
		{"--dev", "x", "--dst-mac", "02:00:00:00:00:0a", "--count", "1", "--size", "9019", "--mode", "packet"},
		{"--dev", "x", "--dst-mac", "02:00:00:00:00:0a", "--count", "1", "--mode", "dpdk"},
		{"--dev", "x", "--dst-mac", "02:00:00:00:00:0a", "--count", "1", "--udp-src", "9-1"},
		{"--dev", "x", "--dst-mac", "02:00:00:00:00:0a", "--count", "1", "--qinq", "5"},
		{"--dev", "x", "--dst-mac", "02:00:00:00:00:0a,02:00:00:00:00:0b@3", "--count", "1"},
		{"--dev", "x", "--dst-mac", "02:00:00:00:00:0a", "--count", "1", "extra"},
		{"--dev", "x", "--dst-mac", "02:00:00:00:00:0a", "--count", "1", "--mode", "packet", "--no-stamp"},
		{"--dev", "x", "--dst-mac", "02:00:00:00:00:0a", "--count", "1", "--clock-every", "0"},
	}
	for _, args := range bad {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), args, &out, &errOut); code != 2 {
			t.Errorf("%q: exit %d, want 2 (stderr %q)", args, code, errOut.String())
		}
	}
	c, err := parseFlags(strings.Fields("--dev x --dst-mac 02:00:00:00:00:0a@7,02:00:00:00:00:0b --vlan 9 --qinq 100 --udp-src 1000-1999 --count 5"), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.spec.Dests) != 2 || c.spec.Dests[0].VLAN != 7 || c.spec.Dests[1].VLAN != 9 || c.spec.OuterVLAN != 100 ||
		c.spec.SrcPorts != (pktgen.PortRange{First: 1000, Last: 1999}) {
		t.Fatalf("parsed %+v", c.spec)
	}
}

// The command sends into a veth in a named namespace (--netns); --json
// prints a summary that parses, and the far end's sink saw every frame.
func TestCommandJSON(t *testing.T) {
	nsA, nsB := netnstest.New(t), netnstest.New(t)
	a, b := netnstest.NewVethPair(t, nsA, nsB, netnstest.VethOptions{Queues: 2})
	bin := filepath.Join(t.TempDir(), "vmq-pktgen")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	for _, tc := range []struct {
		mode    string
		threads string
		stream  uint32
		noStamp bool
	}{{"xdp", "2", 10, false}, {"packet", "1", 20, false}, {"xsk", "1", 30, false}, {"xdp", "1", 50, true}} {
		name := tc.mode
		if tc.noStamp {
			name += "-nostamp"
		}
		t.Run(name, func(t *testing.T) {
			var sink *pktgen.Sink
			if err := nsB.Do(func() (err error) {
				sink, err = pktgen.AttachSink(b.Index, pktgen.SinkOptions{Stream: tc.stream})
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer sink.Close()
			const count = 1001
			cmd := exec.Command(bin, "--dev", a.Name, "--netns", nsA.Name, "--dst-mac", b.MAC.String()+"@5",
				"--qinq", "6", "--udp-src", "1000-1099", "--size", "128", "--count", "1001", "--rate", "20000",
				"--threads", tc.threads, "--stream", strconv.FormatUint(uint64(tc.stream), 10), "--mode", tc.mode, "--udp-csum", "--json",
				"--no-stamp="+strconv.FormatBool(tc.noStamp))
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil {
				t.Fatalf("%v\nstderr: %s\nstdout: %s", err, stderr.String(), stdout.String())
			}
			var sum Summary
			if err := json.Unmarshal(stdout.Bytes(), &sum); err != nil {
				t.Fatalf("summary %q: %v", stdout.String(), err)
			}
			if sum.Sent+sum.Errors != count || sum.FrameLen != 128 || sum.Mode != tc.mode || sum.Error != "" || sum.PPS <= 0 {
				t.Fatalf("summary %+v", sum)
			}
			if strings.Contains(stderr.String(), "warning") {
				t.Fatalf("stderr: %s", stderr.String())
			}
			st, err := sink.Stats()
			if tc.noStamp {
				// Frames without a payload: the sink counts them, no more.
				for i := 0; err == nil && st.Frames < sum.Sent && i < 100; i++ {
					time.Sleep(20 * time.Millisecond)
					st, err = sink.Stats()
				}
				if err != nil || st.Frames < sum.Sent || st.Frames > sum.Sent+100 || st.Payloads != 0 || st.Bytes < sum.Bytes {
					t.Fatalf("sink %+v, %v; command sent %d", st, err, sum.Sent)
				}
				return
			}
			for i := 0; err == nil && st.Payloads < sum.Sent && i < 100; i++ {
				time.Sleep(20 * time.Millisecond)
				st, err = sink.Stats()
			}
			if err != nil {
				t.Fatal(err)
			}
			if st.Payloads != sum.Sent || st.Dups != 0 {
				t.Fatalf("sink %+v, command sent %d", st, sum.Sent)
			}
			// The first thread's stream: all of its frames, seq 0..n-1
			// (packet mode may count frames refused by a full queue).
			want := uint64(count)
			if tc.threads == "2" {
				want = count/2 + 1
			}
			if tc.mode != "packet" && (st.Tracked != want || st.MaxSeq != want) {
				t.Fatalf("sink %+v: tracked stream should have %d", st, want)
			}
		})
	}
}

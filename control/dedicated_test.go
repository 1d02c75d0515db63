package control

import (
	"strings"
	"testing"

	"github.com/vmq/vmq/dataplane"
)

const dedicatedYAML = `
nic: veth0
queues: [0, 1]
vms:
  - name: a
    mac: "02:00:00:00:00:0a"
    socket: %[1]s/a.sock
    queue: dedicated
    queue_id: 2
  - name: b
    mac: "02:00:00:00:00:0b"
    socket: %[1]s/b.sock
    dedicated: required
  - name: c
    mac: "02:00:00:00:00:0c"
    socket: %[1]s/c.sock
`

func TestParseDedicated(t *testing.T) {
	cfg, err := Parse([]byte(sprintf(dedicatedYAML, t.TempDir())))
	if err != nil {
		t.Fatal(err)
	}
	a, b, c := cfg.VMs[0], cfg.VMs[1], cfg.VMs[2]
	if a.DedicatedMode() != dataplane.DedicatedPreferred || a.DedicatedQueue() != 2 || a.Dedicated != "preferred" {
		t.Errorf("a: %v queue %d", a.DedicatedMode(), a.DedicatedQueue())
	}
	if b.DedicatedMode() != dataplane.DedicatedRequired || b.DedicatedQueue() != -1 || b.Queue != QueueDedicated {
		t.Errorf("b: %v queue %d", b.DedicatedMode(), b.DedicatedQueue())
	}
	if c.DedicatedMode() != dataplane.DedicatedOff {
		t.Errorf("c: %v", c.DedicatedMode())
	}
}

func TestParseDedicatedErrors(t *testing.T) {
	for _, tc := range []struct{ vm, field, msg string }{
		{"queue: dedicated\n    queue_id: 1", "vms[0].queue_id", "queue 1 is a shared queue"},
		{"queue: dedicated\n    queue_id: 64", "vms[0].queue_id", "outside 0..63"},
		{"queue: shared\n    queue_id: 3", "vms[0].queue_id", "needs queue: dedicated"},
		{"queue: shared\n    dedicated: required", "vms[0].dedicated", "with queue: shared"},
		{"queue: fast", "vms[0].queue", `"fast" is not shared or dedicated`},
		{"dedicated: maybe", "vms[0].dedicated", `"maybe" is not required or preferred`},
	} {
		y := sprintf(`
nic: veth0
queues: [0, 1]
vms:
  - name: x
    mac: "02:00:00:00:00:0a"
    socket: %[1]s/x.sock
    `+tc.vm+"\n", t.TempDir())
		_, err := Parse([]byte(y))
		var found bool
		for _, fe := range FieldErrors(err) {
			if fe.Field == tc.field && strings.Contains(fe.Msg, tc.msg) && strings.Contains(fe.Msg, `VM "x"`) {
				found = true
			}
		}
		if !found {
			t.Errorf("%q: got %v, want %s: ...%s", tc.vm, err, tc.field, tc.msg)
		}
	}
	// Two VMs on one queue.
	y := sprintf(`
nic: veth0
vms:
  - {name: x, mac: "02:00:00:00:00:0a", socket: %[1]s/x.sock, queue: dedicated, queue_id: 3}
  - {name: y, mac: "02:00:00:00:00:0b", socket: %[1]s/y.sock, queue: dedicated, queue_id: 3}
`, t.TempDir())
	if _, err := Parse([]byte(y)); err == nil || !strings.Contains(err.Error(), "already vms[0]'s dedicated queue") {
		t.Errorf("shared queue_id: %v", err)
	}
}

func TestParseDedicatedSteering(t *testing.T) {
	base := "nic: veth0\nqueues: [0]\n"
	cfg, err := Parse([]byte(base + "dedicated_steering: external\n"))
	if err != nil || cfg.DedicatedSteering != SteeringExternal {
		t.Fatalf("external: %v %+v", err, cfg)
	}
	_, err = Parse([]byte(base + "dedicated_steering: tc\n"))
	if fe := FieldErrors(err); len(fe) != 1 || fe[0].Field != "dedicated_steering" {
		t.Fatalf("tc: %v", err)
	}
}

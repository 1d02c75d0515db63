package control

import (
	"reflect"
	"testing"

	"gopkg.in/yaml.v3"
)

// FuzzParseConfig: Parse never panics, and an accepted config survives a
// marshal/parse round trip unchanged (so what vmqd accepted is what it
// would accept again on reload).
func FuzzParseConfig(f *testing.F) {
	f.Add(ExampleConfig())
	f.Add([]byte("nic: eth0\n"))
	f.Add([]byte("nic: eth0\nqueues: [0, 3]\nvms:\n  - {name: a, mac: '02:00:00:00:00:01', socket: /tmp/a.sock, vlan: 4094, queue_pairs: 2}\n"))
	f.Add([]byte("nic: eth0\napi: {mode: 0o640, tcp: '[::1]:9470'}\npolling: {busy_poll: 0s}\n"))
	f.Add([]byte("a: &a [*a, *a]\n"))
	f.Add([]byte("nic: !!binary aGVsbG8=\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data)
		if err != nil {
			if cfg != nil {
				t.Fatalf("config returned with error %v", err)
			}
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("accepted config fails Validate: %v", err)
		}
		out, err := yaml.Marshal(cfg)
		if err != nil {
			t.Fatalf("marshal accepted config: %v", err)
		}
		again, err := Parse(out)
		if err != nil {
			t.Fatalf("re-parse of\n%s\nfailed: %v", out, err)
		}
		if !reflect.DeepEqual(cfg, again) {
			t.Fatalf("round trip changed the config:\n%+v\n%+v", cfg, again)
		}
	})
}

package control

import (
	"context"
	"fmt"
	"sync"
	"testing"
)

// Concurrent API adds, removes and reads: slots stay unique, every VM
// ends where its own goroutine left it, and the fakes see no ordering
// violation (filter before dataplane on add, after on remove).
func TestConcurrentAddRemove(t *testing.T) {
	e, dir := startedEnv(t)
	c, _ := startAPI(t, e)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				name := fmt.Sprintf("g%d-%d", g, i)
				vm := VMConfig{Name: name, MAC: fmt.Sprintf("02:00:00:01:%02x:%02x", g, i), Socket: fmt.Sprintf("%s/%s.sock", dir, name)}
				if _, err := c.AddVM(ctx, vm); err != nil {
					errs <- err
					return
				}
				if _, err := c.ListVMs(ctx); err != nil {
					errs <- err
					return
				}
				if i%2 == 0 {
					if err := c.RemoveVM(ctx, name); err != nil {
						errs <- err
						return
					}
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	vms := e.ctl.VMs()
	if len(vms) != 3+8*5 {
		t.Fatalf("%d VMs, want %d", len(vms), 3+8*5)
	}
	slots := map[uint32]string{}
	for _, vm := range vms {
		if other, dup := slots[vm.Slot]; dup {
			t.Errorf("slot %d held by %s and %s", vm.Slot, vm.Name, other)
		}
		slots[vm.Slot] = vm.Name
		if e.ft.snapshot()[vm.Key()] != vm.Slot {
			t.Errorf("%s: filter %d, registry slot %d", vm.Name, e.ft.snapshot()[vm.Key()], vm.Slot)
		}
	}
	if n := len(e.ft.snapshot()); n != len(vms) {
		t.Errorf("%d filters for %d VMs", n, len(vms))
	}
}

func BenchmarkParseConfig(b *testing.B) {
	data := ExampleConfig()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(data); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAPIListVMs(b *testing.B) {
	dir := b.TempDir()
	e := newEnv(b, testConfig(b, dir), nil)
	if _, err := e.ctl.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < 50; i++ {
		if _, err := e.ctl.AddVM(context.Background(), testVM(dir, fmt.Sprintf("v%d", i), 0x10+i)); err != nil {
			b.Fatal(err)
		}
	}
	sock := dir + "/bench.sock"
	l, err := ListenUnix(sock, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	srv := NewServer(e.ctl, e.ctl.log)
	go srv.Serve(l)
	b.Cleanup(func() { srv.Shutdown(context.Background()) })
	c := NewClient(sock)
	defer c.Close()
	b.ReportAllocs()
	for b.Loop() {
		vms, err := c.ListVMs(context.Background())
		if err != nil || len(vms) != 53 {
			b.Fatal(len(vms), err)
		}
	}
}

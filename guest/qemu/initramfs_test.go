package qemu

import (
	"bytes"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/vmq/vmq/internal/testenv"
)

var sampleFiles = []File{
	{Name: "bin", Mode: ModeDir | 0o755},
	{Name: "bin/hello", Mode: ModeRegular | 0o755, Data: []byte("#!/bin/sh\necho hi\n")},
	{Name: "bin/sh", Mode: ModeSymlink | 0o777, Data: []byte("busybox")},
	{Name: "dev", Mode: ModeDir | 0o755},
	{Name: "dev/console", Mode: ModeCharDev | 0o600, Major: 5, Minor: 1},
	{Name: "odd", Mode: ModeRegular | 0o644, Data: []byte("12345")}, // data needs padding
}

func TestCPIORoundTrip(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteCPIO(&buf, sampleFiles); err != nil {
		t.Fatal(err)
	}
	if buf.Len()%4 != 0 {
		t.Errorf("archive is %d bytes, not 4-aligned", buf.Len())
	}
	got, err := ReadCPIO(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	want := slices.Clone(sampleFiles)
	for i := range want {
		if want[i].Data == nil {
			want[i].Data = []byte{}
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, want)
	}
	if _, err := ReadCPIO(buf.Bytes()[:buf.Len()-8]); err == nil {
		t.Error("truncated archive (no trailer) read without error")
	}
	if err := WriteCPIO(&buf, []File{{Name: "/"}}); err == nil {
		t.Error("empty name accepted")
	}
}

// TestCPIOWithCpioTool checks the archive against GNU cpio, an
// independent reader of the format the kernel unpacks.
func TestCPIOWithCpioTool(t *testing.T) {
	cpio := testenv.RequireCommand(t, "cpio")
	var buf bytes.Buffer
	if err := WriteCPIO(&buf, sampleFiles); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(cpio, "-itv", "--quiet")
	cmd.Stdin = &buf
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -it: %v\n%s", err, out)
	}
	listing := string(out)
	for _, want := range []string{"drwxr-xr-x", " bin/hello", "bin/sh -> busybox", "crw-------", " dev/console", " odd"} {
		if !strings.Contains(listing, want) {
			t.Errorf("cpio listing lacks %q:\n%s", want, listing)
		}
	}
	// Extract too: contents must survive.
	dir := t.TempDir()
	buf.Reset()
	if err := WriteCPIO(&buf, []File{sampleFiles[0], sampleFiles[1], sampleFiles[5]}); err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(cpio, "-id", "--quiet")
	cmd.Dir, cmd.Stdin = dir, &buf
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -id: %v\n%s", err, out)
	}
	for _, f := range []File{sampleFiles[1], sampleFiles[5]} {
		data, err := os.ReadFile(filepath.Join(dir, f.Name))
		if err != nil || !bytes.Equal(data, f.Data) {
			t.Errorf("%s extracted as %q (%v), want %q", f.Name, data, err, f.Data)
		}
	}
}

const sampleDep = `kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
`

func TestResolveModules(t *testing.T) {
	deps, err := ParseModulesDep(strings.NewReader(sampleDep))
	if err != nil {
		t.Fatal(err)
	}
	order, err := ResolveModules(deps, map[string]bool{"e1000": true}, "virtio_pci", "virtio_net", "e1000")
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, p := range order {
		if _, dup := pos[modName(p)]; dup {
			t.Fatalf("%s listed twice: %v", p, order)
		}
		pos[modName(p)] = i
	}
	if len(order) != 8 {
		t.Fatalf("got %d modules, want 8: %v", len(order), order)
	}
	// Every module after each of its dependencies.
	for mod, ds := range deps {
		for _, d := range ds {
			if pos[modName(d)] > pos[modName(mod)] {
				t.Errorf("%s loads before its dependency %s: %v", mod, d, order)
			}
		}
	}
	if _, err := ResolveModules(deps, nil, "nosuch"); err == nil {
		t.Error("unknown module resolved")
	}
	loop := map[string][]string{"a.ko": {"b.ko"}, "b.ko": {"a.ko"}}
	if _, err := ResolveModules(loop, nil, "a"); err == nil || !strings.Contains(err.Error(), "loop") {
		t.Errorf("dependency loop: err %v", err)
	}
	if _, err := ParseModulesDep(strings.NewReader("no colon here\n")); err == nil {
		t.Error("malformed modules.dep line accepted")
	}
}

// TestInstalledKernelModules resolves the virtio-net modules of the
// installed guest kernel: they must exist as plain .ko files.
func TestInstalledKernelModules(t *testing.T) {
	k, err := FindKernel()
	if err != nil {
		testenv.Skip(t, "%v", err)
	}
	mods, err := k.Modules(NetModules...)
	if err != nil {
		t.Fatal(err)
	}
	names := ModuleNames(mods)
	if names[len(names)-1] != "virtio_net" && names[len(names)-1] != "virtio_pci" {
		t.Errorf("last module %s is not one asked for: %v", names[len(names)-1], names)
	}
	for _, m := range mods {
		if _, err := os.Stat(m); err != nil {
			t.Error(err)
		}
	}
	t.Logf("kernel %s: %v", k.Version, names)
}

func TestInitramfsLayout(t *testing.T) {
	bb := testenv.RequireCommand(t, "busybox")
	if err := CheckStatic(bb); err != nil {
		testenv.Skip(t, "%v", err)
	}
	dir := t.TempDir()
	mod := filepath.Join(dir, "fake.ko")
	os.WriteFile(mod, []byte("not really a module"), 0o644)
	init := InitScript([]string{"fake"}, netip.MustParsePrefix("10.1.2.3/24"))
	file := filepath.Join(dir, "initrd")
	if err := (Initramfs{Busybox: bb, Modules: []string{mod}, Init: init}).Write(file); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(file)
	files, err := ReadCPIO(data)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]File{}
	for _, f := range files {
		byName[f.Name] = f
	}
	for _, name := range []string{"init", "bin/busybox", "bin/sh", "dev/console", "lib/modules/fake.ko"} {
		if _, ok := byName[name]; !ok {
			t.Errorf("initramfs lacks %s", name)
		}
	}
	if f := byName["init"]; f.Mode&0o111 == 0 || !strings.Contains(string(f.Data), "ip addr add 10.1.2.3/24 dev eth0") ||
		!strings.Contains(string(f.Data), "insmod /lib/modules/$m.ko") {
		t.Errorf("init: mode %o, script:\n%s", f.Mode, f.Data)
	}
	if err := CheckStatic("/bin/ls"); err == nil {
		t.Error("a dynamically linked /bin/ls passed as static")
	}
}

func FuzzReadCPIO(f *testing.F) {
	var buf bytes.Buffer
	WriteCPIO(&buf, sampleFiles)
	f.Add(buf.Bytes())
	f.Add([]byte("070701"))
	f.Fuzz(func(t *testing.T, data []byte) {
		files, err := ReadCPIO(data)
		if err != nil {
			return
		}
		// What parses must survive a rewrite unchanged.
		var out bytes.Buffer
		if err := WriteCPIO(&out, files); err != nil {
			return // names WriteCPIO refuses (empty, NUL)
		}
		again, err := ReadCPIO(out.Bytes())
		if err != nil || len(again) != len(files) {
			t.Fatalf("rewrite of %d files read back as %d: %v", len(files), len(again), err)
		}
	})
}

func FuzzModulesDep(f *testing.F) {
	f.Add(sampleDep, "virtio_net")
	f.Add("a.ko: b.ko\nb.ko: a.ko\n", "a")
	f.Fuzz(func(t *testing.T, text, name string) {
		deps, err := ParseModulesDep(strings.NewReader(text))
		if err != nil {
			return
		}
		order, err := ResolveModules(deps, nil, name)
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, p := range order {
			for _, d := range deps[p] {
				if !seen[d] {
					t.Fatalf("%s before its dependency %s: %v", p, d, order)
				}
			}
			seen[p] = true
		}
	})
}

package qemu

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// CPIO entry types for File.Mode (the S_IFMT bits of a newc header).
const (
	ModeDir     = 0o040000
	ModeRegular = 0o100000
	ModeSymlink = 0o120000
	ModeCharDev = 0o020000
)

// File is one initramfs entry.
type File struct {
	Name string // path inside the archive, without a leading slash
	Mode uint32 // type bits (ModeDir, ...) | permissions
	Data []byte // contents; for a symlink, its target
	// Major and Minor are a device node's numbers.
	Major, Minor uint32
}

// WriteCPIO writes files as a newc ("070701") cpio archive, the format
// the kernel unpacks an initramfs from. Parent directories must come
// before their entries; WriteCPIO does not invent them.
func WriteCPIO(w io.Writer, files []File) error {
	bw := bufio.NewWriter(w)
	var off int64
	write := func(b []byte) {
		n, _ := bw.Write(b) // bufio keeps the first error; Flush reports it
		off += int64(n)
	}
	pad := func() {
		if r := off % 4; r != 0 {
			write(make([]byte, 4-r))
		}
	}
	entry := func(ino uint32, f File) error {
		name := strings.TrimPrefix(f.Name, "/")
		if name == "" || strings.IndexByte(name, 0) >= 0 {
			return fmt.Errorf("cpio entry %q: bad name", f.Name)
		}
		if uint64(len(f.Data)) > 0xffffffff {
			return fmt.Errorf("cpio entry %q: %d bytes is too big for newc", name, len(f.Data))
		}
		nlink := uint32(1)
		if f.Mode&0o170000 == ModeDir {
			nlink = 2
		}
		hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
			ino, f.Mode, 0, 0, nlink, 0, len(f.Data), 0, 0, f.Major, f.Minor, len(name)+1, 0)
		write([]byte(hdr))
		write([]byte(name))
		write([]byte{0})
		pad()
		write(f.Data)
		pad()
		return nil
	}
	for i, f := range files {
		if err := entry(uint32(i+1), f); err != nil {
			return err
		}
	}
	if err := entry(0, File{Name: "TRAILER!!!"}); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write cpio: %w", err)
	}
	return nil
}

// ReadCPIO parses a newc archive written by WriteCPIO (or any newc
// archive without hard links), stopping at the trailer.
func ReadCPIO(data []byte) ([]File, error) {
	var files []File
	off := 0
	align := func(n int) int { return (n + 3) &^ 3 }
	for {
		if len(data)-off < 110 {
			return nil, fmt.Errorf("cpio at %d: truncated header", off)
		}
		h := data[off : off+110]
		if string(h[:6]) != "070701" {
			return nil, fmt.Errorf("cpio at %d: bad magic %q", off, h[:6])
		}
		var fields [13]uint32
		for i := range fields {
			var v uint32
			for _, c := range h[6+8*i : 14+8*i] {
				var d byte
				switch {
				case c >= '0' && c <= '9':
					d = c - '0'
				case c >= 'a' && c <= 'f':
					d = c - 'a' + 10
				case c >= 'A' && c <= 'F':
					d = c - 'A' + 10
				default:
					return nil, fmt.Errorf("cpio at %d: bad hex digit %q", off, c)
				}
				v = v<<4 | uint32(d)
			}
			fields[i] = v
		}
		mode, size, major, minor, namesize := fields[1], int(fields[6]), fields[9], fields[10], int(fields[11])
		if namesize < 1 || namesize > 4096 || namesize > len(data)-off-110 {
			return nil, fmt.Errorf("cpio at %d: name size %d out of range", off, namesize)
		}
		name := data[off+110 : off+110+namesize]
		if name[namesize-1] != 0 {
			return nil, fmt.Errorf("cpio at %d: name not NUL-terminated", off)
		}
		off = align(off + 110 + namesize)
		if string(name[:namesize-1]) == "TRAILER!!!" {
			return files, nil
		}
		if size < 0 || off > len(data) || size > len(data)-off {
			return nil, fmt.Errorf("cpio entry %q: %d bytes past the end", name[:namesize-1], size)
		}
		files = append(files, File{Name: string(name[:namesize-1]), Mode: mode,
			Data: bytes.Clone(data[off : off+size]), Major: major, Minor: minor})
		off = align(off + size)
	}
}

// Initramfs is what goes into a guest's initial root filesystem.
type Initramfs struct {
	Busybox string   // a statically linked busybox binary
	Modules []string // kernel module files, in load order
	Init    string   // the /init shell script (run by busybox sh)
	// Extra are more files (e.g. a static test program under bin/);
	// their directories must exist.
	Extra []File
}

// Files lays the initramfs out: busybox as /bin/busybox with /bin/sh, the
// modules under /lib/modules/ (loaded by the init script in the given
// order), /dev/console and /init.
func (r Initramfs) Files() ([]File, error) {
	bb, err := os.ReadFile(r.Busybox)
	if err != nil {
		return nil, fmt.Errorf("initramfs: %w", err)
	}
	if err := CheckStatic(r.Busybox); err != nil {
		return nil, fmt.Errorf("initramfs: %w", err)
	}
	files := []File{
		{Name: "bin", Mode: ModeDir | 0o755},
		{Name: "sbin", Mode: ModeDir | 0o755},
		{Name: "usr", Mode: ModeDir | 0o755},
		{Name: "usr/bin", Mode: ModeDir | 0o755},
		{Name: "usr/sbin", Mode: ModeDir | 0o755},
		{Name: "dev", Mode: ModeDir | 0o755},
		{Name: "dev/console", Mode: ModeCharDev | 0o600, Major: 5, Minor: 1},
		{Name: "proc", Mode: ModeDir | 0o755},
		{Name: "sys", Mode: ModeDir | 0o755},
		{Name: "tmp", Mode: ModeDir | 0o1777},
		{Name: "lib", Mode: ModeDir | 0o755},
		{Name: "lib/modules", Mode: ModeDir | 0o755},
		{Name: "bin/busybox", Mode: ModeRegular | 0o755, Data: bb},
		{Name: "bin/sh", Mode: ModeSymlink | 0o777, Data: []byte("busybox")},
		{Name: "init", Mode: ModeRegular | 0o755, Data: []byte(r.Init)},
	}
	seen := map[string]bool{}
	for _, m := range r.Modules {
		base := path.Base(m)
		if seen[base] {
			return nil, fmt.Errorf("initramfs: two modules named %s", base)
		}
		seen[base] = true
		data, err := os.ReadFile(m)
		if err != nil {
			return nil, fmt.Errorf("initramfs: %w", err)
		}
		files = append(files, File{Name: "lib/modules/" + base, Mode: ModeRegular | 0o644, Data: data})
	}
	return append(files, r.Extra...), nil
}

// Write writes the initramfs archive to file.
func (r Initramfs) Write(file string) error {
	files, err := r.Files()
	if err != nil {
		return err
	}
	f, err := os.Create(file)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	if err := WriteCPIO(f, files); err != nil {
		f.Close()
		return fmt.Errorf("initramfs %s: %w", file, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("initramfs %s: %w", file, err)
	}
	return nil
}

// CheckStatic refuses a dynamically linked binary: the initramfs has no
// libc or loader.
func CheckStatic(file string) error {
	f, err := elf.Open(file)
	if err != nil {
		return fmt.Errorf("busybox %s: %w", file, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("busybox %s is dynamically linked (install busybox-static)", file)
		}
	}
	return nil
}

// ModuleNames are the module base names (without .ko) of files, in order.
func ModuleNames(files []string) []string {
	out := make([]string, len(files))
	for i, f := range files {
		out[i] = strings.TrimSuffix(path.Base(f), ".ko")
	}
	return out
}

// ParseModulesDep parses a modules.dep file: "path.ko: dep1.ko dep2.ko"
// per line, paths relative to the modules directory.
func ParseModulesDep(r io.Reader) (map[string][]string, error) {
	deps := map[string][]string{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		mod, rest, ok := strings.Cut(text, ":")
		mod = strings.TrimSpace(mod)
		if !ok || mod == "" {
			return nil, fmt.Errorf("modules.dep line %d: no \"module:\" in %q", line, text)
		}
		deps[mod] = strings.Fields(rest)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("modules.dep: %w", err)
	}
	return deps, nil
}

// ResolveModules returns the module paths (relative to the modules
// directory) needed for the named modules, dependencies first, each once.
// Names match a module's base name without ".ko"; builtin lists modules
// compiled into the kernel, which need no file.
func ResolveModules(deps map[string][]string, builtin map[string]bool, names ...string) ([]string, error) {
	byName := map[string]string{}
	for p := range deps {
		byName[modName(p)] = p
	}
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(p string) error
	visit = func(p string) error {
		switch state[p] {
		case 1:
			return fmt.Errorf("module %s: dependency loop", p)
		case 2:
			return nil
		}
		state[p] = 1
		// modules.dep lists every transitive dependency; visiting them
		// in turn still puts each after its own dependencies.
		for _, d := range deps[p] {
			if _, ok := deps[d]; !ok {
				return fmt.Errorf("module %s: dependency %s missing from modules.dep", p, d)
			}
			if err := visit(d); err != nil {
				return err
			}
		}
		state[p] = 2
		order = append(order, p)
		return nil
	}
	for _, n := range names {
		p, ok := byName[n]
		if !ok {
			if builtin[n] {
				continue
			}
			return nil, fmt.Errorf("module %s: not in modules.dep nor builtin", n)
		}
		if err := visit(p); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// modName is a module path's name: its base without .ko[.xz|.zst|.gz],
// with '-' read as '_' as the kernel does.
func modName(p string) string {
	b := path.Base(p)
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		b = strings.TrimSuffix(b, ext)
	}
	return strings.ReplaceAll(strings.TrimSuffix(b, ".ko"), "-", "_")
}

// Kernel is a guest kernel image with its modules directory.
type Kernel struct {
	Image   string // bzImage (/boot/vmlinuz-VERSION)
	Version string
	ModDir  string // /lib/modules/VERSION
}

// ErrNoKernel means no usable guest kernel is installed.
var ErrNoKernel = errors.New("no guest kernel (apt-get install linux-image-amd64)")

// FindKernel picks the guest kernel: $VMQ_GUEST_KERNEL (a vmlinuz path)
// if set, else the newest /boot/vmlinuz-* that has /lib/modules/VERSION.
func FindKernel() (Kernel, error) {
	var images []string
	if env := os.Getenv("VMQ_GUEST_KERNEL"); env != "" {
		images = []string{env}
	} else {
		m, _ := filepath.Glob("/boot/vmlinuz-*")
		sort.Sort(sort.Reverse(sort.StringSlice(m)))
		images = m
	}
	for _, img := range images {
		ver := strings.TrimPrefix(path.Base(img), "vmlinuz-")
		k := Kernel{Image: img, Version: ver, ModDir: "/lib/modules/" + ver}
		if _, err := os.Stat(k.Image); err != nil {
			continue
		}
		if _, err := os.Stat(k.ModDir + "/modules.dep"); err != nil {
			continue
		}
		return k, nil
	}
	return Kernel{}, ErrNoKernel
}

// Modules resolves the named modules of k to file paths, dependencies
// first. Compressed modules are refused: busybox insmod cannot load them
// unless the kernel decompresses, which this helper does not check.
func (k Kernel) Modules(names ...string) ([]string, error) {
	f, err := os.Open(k.ModDir + "/modules.dep")
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", k.Version, err)
	}
	defer f.Close()
	deps, err := ParseModulesDep(f)
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", k.Version, err)
	}
	builtin := map[string]bool{}
	if b, err := os.ReadFile(k.ModDir + "/modules.builtin"); err == nil {
		for _, l := range strings.Fields(string(b)) {
			builtin[modName(l)] = true
		}
	}
	rel, err := ResolveModules(deps, builtin, names...)
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", k.Version, err)
	}
	out := make([]string, len(rel))
	for i, p := range rel {
		if !strings.HasSuffix(p, ".ko") {
			return nil, fmt.Errorf("kernel %s: module %s is compressed; busybox insmod needs plain .ko", k.Version, p)
		}
		out[i] = k.ModDir + "/" + p
	}
	return out, nil
}

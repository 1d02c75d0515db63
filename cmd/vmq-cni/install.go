package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// install copies this executable to --bin-dir/vmq-cni and, with --conf,
// that file to --conf-dir, each through a temporary file and a rename.
func install(args []string) error {
	fs := flag.NewFlagSet("vmq-cni install", flag.ContinueOnError)
	binDir := fs.String("bin-dir", "/opt/cni/bin", "CNI plugin directory")
	conf := fs.String("conf", "", "a network config file to install")
	confDir := fs.String("conf-dir", "/etc/cni/multus/net.d", "where --conf goes")
	if err := fs.Parse(args); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	if err := copyAtomic(self, filepath.Join(*binDir, "vmq-cni"), 0o755); err != nil {
		return err
	}
	fmt.Println(filepath.Join(*binDir, "vmq-cni"))
	if *conf != "" {
		dst := filepath.Join(*confDir, filepath.Base(*conf))
		if err := copyAtomic(*conf, dst, 0o644); err != nil {
			return err
		}
		fmt.Println(dst)
	}
	return nil
}

func copyAtomic(src, dst string, mode os.FileMode) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("open %s: %w", src, err)
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("directory of %s: %w", dst, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-*")
	if err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := io.Copy(tmp, in); err != nil {
		return fmt.Errorf("copy %s to %s: %w", src, tmp.Name(), err)
	}
	if err := tmp.Chmod(mode); err != nil {
		return fmt.Errorf("chmod %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	return nil
}

package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// The init container's job: `vmq-cni install` puts the binary and the
// config in place (replacing old ones), leaving no temporary files.
func TestInstall(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "vmq-cni")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	binDir, confDir := filepath.Join(dir, "opt-cni-bin"), filepath.Join(dir, "net.d")
	conf := filepath.Join(dir, "vmq-net.conf")
	os.WriteFile(conf, []byte(`{"cniVersion":"1.1.0","name":"vmq-net","type":"vmq-cni"}`), 0o600)
	os.MkdirAll(binDir, 0o755)
	os.WriteFile(filepath.Join(binDir, "vmq-cni"), []byte("old"), 0o755)
	for range 2 {
		if out, err := exec.Command(bin, "install", "--bin-dir", binDir, "--conf", conf, "--conf-dir", confDir).CombinedOutput(); err != nil {
			t.Fatalf("install: %v\n%s", err, out)
		}
	}
	want, _ := os.ReadFile(bin)
	got, _ := os.ReadFile(filepath.Join(binDir, "vmq-cni"))
	if !bytes.Equal(got, want) {
		t.Fatal("installed binary differs from the built one")
	}
	if st, err := os.Stat(filepath.Join(binDir, "vmq-cni")); err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("installed binary: %v, %v", st, err)
	}
	if b, _ := os.ReadFile(filepath.Join(confDir, "vmq-net.conf")); !bytes.Contains(b, []byte(`"type":"vmq-cni"`)) {
		t.Fatalf("installed conf: %q", b)
	}
	for _, d := range []string{binDir, confDir} {
		if ents, _ := os.ReadDir(d); len(ents) != 1 {
			t.Fatalf("%s holds %d entries, want 1", d, len(ents))
		}
	}
}

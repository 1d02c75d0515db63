package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// stateVersion is the state file's format version.
const stateVersion = 1

// stateFile is the state file: the VMs added over the API. They are the
// node's desired state (a CNI ADD made them), not config, so the daemon
// keeps them across restarts instead of the YAML.
type stateFile struct {
	Version int        `json:"version"`
	VMs     []VMConfig `json:"vms"`
}

// LoadState reads the VMs persisted at path. A missing file is no VMs
// (first start).
func LoadState(path string) ([]VMConfig, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state file: %w", err)
	}
	var st stateFile
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("state file %s: %w", path, err)
	}
	if st.Version != stateVersion {
		return nil, fmt.Errorf("state file %s: version %d, this vmqd reads %d", path, st.Version, stateVersion)
	}
	return st.VMs, nil
}

// SaveState writes vms to path atomically: a temporary file in the same
// directory, synced, renamed over path, and the directory synced, so a
// crash leaves the old or the new state, never a torn file.
func SaveState(path string, vms []VMConfig) (err error) {
	if vms == nil {
		vms = []VMConfig{}
	}
	b, err := json.MarshalIndent(stateFile{Version: stateVersion, VMs: vms}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write state file: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err := f.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("write state file %s: %w", f.Name(), err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync state file %s: %w", f.Name(), err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close state file %s: %w", f.Name(), err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("replace state file %s: %w", path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open state directory to sync: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync state directory %s: %w", dir, err)
	}
	return nil
}

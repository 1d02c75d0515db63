package control

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/vmq/vmq/dataplane"
)

// Client talks to vmqd's API over its unix socket.
type Client struct {
	http *http.Client
	base string
}

// NewClient makes a client for the API socket at path.
func NewClient(socketPath string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socketPath)
		},
		MaxIdleConns:    2,
		IdleConnTimeout: 30 * time.Second,
	}
	return &Client{http: &http.Client{Transport: tr}, base: "http://vmqd"}
}

// NewTCPClient makes a client for a TCP API address (host:port).
func NewTCPClient(addr string) *Client {
	return &Client{http: &http.Client{}, base: "http://" + addr}
}

// Close releases idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// ListVMs lists the VMs.
func (c *Client) ListVMs(ctx context.Context) ([]VMInfo, error) {
	var out []VMInfo
	err := c.do(ctx, http.MethodGet, "/v1/vms", nil, &out)
	return out, err
}

// AddVM adds a VM.
func (c *Client) AddVM(ctx context.Context, vm VMConfig) (VMInfo, error) {
	var out VMInfo
	err := c.do(ctx, http.MethodPost, "/v1/vms", vm, &out)
	return out, err
}

// GetVM shows one VM with its counters.
func (c *Client) GetVM(ctx context.Context, name string) (VMDetail, error) {
	var out VMDetail
	err := c.do(ctx, http.MethodGet, "/v1/vms/"+url.PathEscape(name), nil, &out)
	return out, err
}

// PatchVM changes a running VM's settings (its QoS limits) live.
func (c *Client) PatchVM(ctx context.Context, name string, p VMPatch) (VMInfo, error) {
	var out VMInfo
	err := c.do(ctx, http.MethodPatch, "/v1/vms/"+url.PathEscape(name), p, &out)
	return out, err
}

// RemoveVM removes a VM.
func (c *Client) RemoveVM(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/vms/"+url.PathEscape(name), nil, nil)
}

// Status returns the NIC, worker and VM status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var out Status
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, &out)
	return out, err
}

// Stats returns the dataplane snapshot.
func (c *Client) Stats(ctx context.Context) (dataplane.Snapshot, error) {
	var out dataplane.Snapshot
	err := c.do(ctx, http.MethodGet, "/v1/stats", nil, &out)
	return out, err
}

// do sends a request; a non-2xx answer becomes an *APIError.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("%s %s: encode request: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("vmqd API: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read response: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		e := &APIError{}
		if json.Unmarshal(data, e) != nil || e.Message == "" {
			e.Message = fmt.Sprintf("%s %s: %s", method, path, bytes.TrimSpace(data))
		}
		e.Status = resp.StatusCode
		return e
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: decode response: %w", method, path, err)
	}
	return nil
}

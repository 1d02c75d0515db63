package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"
)

// API paths (version 1). Bodies are JSON.
//
//	GET    /v1/vms          → []VMInfo
//	POST   /v1/vms          VMConfig → 201 VMInfo
//	GET    /v1/vms/{name}   → VMDetail
//	PATCH  /v1/vms/{name}   VMPatch → VMInfo (limits change live)
//	DELETE /v1/vms/{name}   → 204
//	GET    /v1/status       → Status
//	GET    /v1/stats        → dataplane.Snapshot
//
// Errors are {"error": "...", "fields": [{"field", "message"}]} with 400
// (bad JSON, invalid VM), 404 (unknown VM), 409 (duplicate), 413, 503.
const maxBodyBytes = 64 << 10

// APIError is the error body, and the client's error type.
type APIError struct {
	Status  int           `json:"-"`
	Message string        `json:"error"`
	Fields  []*FieldError `json:"fields,omitempty"`
}

func (e *APIError) Error() string {
	if e.Status != 0 {
		return fmt.Sprintf("%s (HTTP %d)", e.Message, e.Status)
	}
	return e.Message
}

// Server serves the control API.
type Server struct {
	ctl  *Controller
	log  *slog.Logger
	http *http.Server
}

// NewServer makes an API server over a controller.
func NewServer(ctl *Controller, log *slog.Logger) *Server {
	if log == nil {
		log = slog.Default()
	}
	s := &Server{ctl: ctl, log: log}
	s.http = &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return s
}

// Serve serves on l (the unix listener from ListenUnix, or a TCP one if
// configured) until Shutdown. It returns nil after Shutdown.
func (s *Server) Serve(l net.Listener) error {
	if err := s.http.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve API on %s: %w", l.Addr(), err)
	}
	return nil
}

// Shutdown stops the listeners and waits for requests in flight.
func (s *Server) Shutdown(ctx context.Context) error { return s.http.Shutdown(ctx) }

// Handler is the API's HTTP handler.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/vms", s.listVMs)
	mux.HandleFunc("POST /v1/vms", s.addVM)
	mux.HandleFunc("GET /v1/vms/{name}", s.showVM)
	mux.HandleFunc("PATCH /v1/vms/{name}", s.patchVM)
	mux.HandleFunc("DELETE /v1/vms/{name}", s.removeVM)
	mux.HandleFunc("POST /v1/vms/{name}/migration", s.prepareMigration)
	mux.HandleFunc("DELETE /v1/vms/{name}/migration", s.abortMigration)
	mux.HandleFunc("GET /v1/status", s.status)
	mux.HandleFunc("GET /v1/stats", s.stats)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, pattern := mux.Handler(r)
		if pattern != "" {
			mux.ServeHTTP(w, r) // sets the path values h would not see
			return
		}
		// The mux's own 404/405 answers are plain text; keep the status
		// and Allow header, answer in JSON like every other error.
		c := &statusCapture{header: http.Header{}}
		h.ServeHTTP(c, r)
		if allow := c.header.Get("Allow"); allow != "" {
			w.Header().Set("Allow", allow)
		}
		msg := fmt.Sprintf("no API endpoint %s %s", r.Method, r.URL.Path)
		if c.status == http.StatusMethodNotAllowed {
			msg = fmt.Sprintf("method %s not allowed on %s", r.Method, r.URL.Path)
		}
		s.writeError(w, r, &APIError{Status: c.status, Message: msg})
	})
}

// statusCapture records a status and discards the body.
type statusCapture struct {
	header http.Header
	status int
}

func (c *statusCapture) Header() http.Header { return c.header }
func (c *statusCapture) WriteHeader(s int) {
	if c.status == 0 {
		c.status = s
	}
}
func (c *statusCapture) Write(b []byte) (int, error) {
	c.WriteHeader(http.StatusOK)
	return len(b), nil
}

func (s *Server) listVMs(w http.ResponseWriter, r *http.Request) {
	s.writeJSON(w, http.StatusOK, s.ctl.VMs())
}

func (s *Server) showVM(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	d, ok := s.ctl.Detail(name)
	if !ok {
		s.writeError(w, r, &APIError{Status: http.StatusNotFound, Message: fmt.Sprintf("VM %q: %v", name, ErrNotFound)})
		return
	}
	s.writeJSON(w, http.StatusOK, d)
}

// decodeBody reads one JSON object (unknown fields are errors) into v, or
// answers the error and returns false.
func (s *Server) decodeBody(w http.ResponseWriter, r *http.Request, v any, what string) bool {
	body := http.MaxBytesReader(w, r.Body, maxBodyBytes)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			s.writeError(w, r, &APIError{Status: http.StatusRequestEntityTooLarge, Message: fmt.Sprintf("request body is larger than %d bytes", maxBodyBytes)})
			return false
		}
		s.writeError(w, r, &APIError{Status: http.StatusBadRequest, Message: "bad JSON: " + err.Error()})
		return false
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		s.writeError(w, r, &APIError{Status: http.StatusBadRequest, Message: "bad JSON: trailing data after the " + what + " object"})
		return false
	}
	return true
}

func (s *Server) patchVM(w http.ResponseWriter, r *http.Request) {
	var p VMPatch
	if !s.decodeBody(w, r, &p, "patch") {
		return
	}
	name := r.PathValue("name")
	if p.Limits == nil {
		s.writeError(w, r, &APIError{Status: http.StatusBadRequest, Message: "nothing to change: the patch has no limits"})
		return
	}
	info, err := s.ctl.SetLimits(r.Context(), name, *p.Limits)
	if err != nil {
		s.writeError(w, r, apiErrorFor(err))
		return
	}
	s.writeJSON(w, http.StatusOK, info)
}

func (s *Server) addVM(w http.ResponseWriter, r *http.Request) {
	var vm VMConfig
	if !s.decodeBody(w, r, &vm, "VM") {
		return
	}
	info, err := s.ctl.AddVM(r.Context(), vm)
	if err != nil {
		s.writeError(w, r, apiErrorFor(err))
		return
	}
	s.writeJSON(w, http.StatusCreated, info)
}

func (s *Server) removeVM(w http.ResponseWriter, r *http.Request) {
	if err := s.ctl.RemoveVM(r.Context(), r.PathValue("name")); err != nil {
		s.writeError(w, r, apiErrorFor(err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	s.writeJSON(w, http.StatusOK, s.ctl.Status())
}

func (s *Server) stats(w http.ResponseWriter, r *http.Request) {
	s.writeJSON(w, http.StatusOK, s.ctl.Snapshot())
}

func apiErrorFor(err error) *APIError {
	e := &APIError{Message: err.Error()}
	switch {
	case errors.Is(err, ErrInvalid):
		e.Status = http.StatusBadRequest
		e.Fields = FieldErrors(err)
		// One line per field reads better than Join's newlines.
		e.Message = strings.ReplaceAll(err.Error(), "\n", "; ")
		if len(e.Fields) > 0 {
			msgs := make([]string, len(e.Fields))
			for i, f := range e.Fields {
				msgs[i] = f.Error()
			}
			e.Message = "invalid VM: " + strings.Join(msgs, "; ")
		}
	case errors.Is(err, ErrNotFound):
		e.Status = http.StatusNotFound
	case errors.Is(err, ErrDuplicate):
		e.Status = http.StatusConflict
		// Name what clashes: a client retrying an add (vmq-cni) must tell
		// "my port exists" from "the MAC is in use".
		var de *DuplicateError
		if errors.As(err, &de) {
			e.Fields = []*FieldError{{Field: "vm." + de.Field, Msg: de.Error()}}
		}
	case errors.Is(err, ErrNoSlot), errors.Is(err, ErrNotStarted):
		e.Status = http.StatusServiceUnavailable
	default:
		e.Status = http.StatusInternalServerError
	}
	return e
}

func (s *Server) writeError(w http.ResponseWriter, r *http.Request, e *APIError) {
	lvl := slog.LevelInfo
	if e.Status >= 500 {
		lvl = slog.LevelError
	}
	s.log.Log(r.Context(), lvl, "API request failed", "method", r.Method, "path", r.URL.Path, "status", e.Status, "err", e.Message)
	s.writeJSON(w, e.Status, e)
}

func (s *Server) writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		s.log.Error("encode API response", "err", err)
		http.Error(w, `{"error":"internal: cannot encode response"}`, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// Command vmqd is vmq's NetVSP: it attaches the VMQ filter (XDP) to a NIC,
// serves each VM's queue (an AF_XDP socket per NIC queue) to the guest
// over vhost-user, and runs the control API and Prometheus metrics.
//
//	vmqd --config /etc/vmq/vmqd.yaml
//	vmqd lab                 # a self-contained lab in network namespaces
//
// SIGTERM or SIGINT stop it (keeping the XDP steering in place when the
// config says keep_steering_on_exit); SIGHUP reloads the config.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/vishvananda/netns"

	"github.com/vmq/vmq/control"
	"github.com/vmq/vmq/metrics"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "lab" {
		os.Exit(labMain(os.Args[2:], os.Stdout, os.Stderr))
	}
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("vmqd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "/etc/vmq/vmqd.yaml", "configuration file")
	metricsAddr := fs.String("metrics-addr", "", "serve /metrics here, overriding the config (\"-\": off)")
	netnsName := fs.String("netns", "", "the NIC is in this named network namespace (/run/netns/NAME)")
	check := fs.Bool("check-config", false, "validate the configuration and exit")
	version := fs.Bool("version", false, "print the version and exit")
	newLogger := control.LogFlags(fs)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: vmqd [flags]\n       vmqd lab [flags]\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *version {
		fmt.Fprintln(os.Stdout, "vmqd", metrics.Version)
		return 0
	}
	log, err := newLogger(stderr)
	if err != nil {
		fmt.Fprintln(stderr, "vmqd:", err)
		return 2
	}
	// Packages that log through slog's default (metrics' scrape errors and
	// listener, xsk's notices) then keep the daemon's format and level: a
	// JSON log stays JSON.
	slog.SetDefault(log)
	cfg, err := control.Load(*cfgPath)
	if err != nil {
		fmt.Fprintf(stderr, "vmqd: %v\n", err)
		return 2
	}
	if *check {
		fmt.Fprintf(stderr, "%s: ok (%d VMs on %s)\n", *cfgPath, len(cfg.VMs), cfg.NIC)
		return 0
	}
	opts := daemonOptions{cfg: cfg, log: log, metricsAddr: *metricsAddr}
	if *netnsName != "" {
		h, err := netns.GetFromName(*netnsName)
		if err != nil {
			fmt.Fprintf(stderr, "vmqd: network namespace %s: %v\n", *netnsName, err)
			return 2
		}
		defer h.Close()
		opts.netns = &h
	}

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	ctx := context.Background()
	d, err := startDaemon(ctx, opts)
	if err != nil {
		log.Error("vmqd failed to start", "err", err)
		return 1
	}
	log.Info("vmqd running", "version", metrics.Version, "config", *cfgPath, "vms", len(cfg.VMs))
	for sig := range sigs {
		if sig == syscall.SIGHUP {
			if err := d.reload(ctx, *cfgPath); err != nil {
				log.Error("reload failed; the running config stays", "err", err)
			}
			continue
		}
		log.Info("stopping", "signal", sig.String())
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := d.stop(sctx)
		cancel()
		if err != nil {
			log.Error("stop", "err", err)
			return 1
		}
		return 0
	}
	return 0
}

// Package bpf is the VMQ filter: an XDP program (filter.c, built by bpf2go
// into filter_bpfel.go/.o, committed so `go build` needs no clang) and a
// small Go API to load, attach, pin and program it.
//
// # Decision
//
// For each frame on NIC rx queue q the program:
//
//  1. Parses Ethernet and, if the ethertype is 802.1Q (0x8100) or 802.1ad
//     (0x88a8), one tag: the outer VLAN id counts, an inner tag is payload.
//     VID 0 (priority tag) is untagged. A frame shorter than 14 bytes, or
//     tagged and shorter than 18, is Malformed: Config.Malformed (default
//     Drop). (Linux never hands XDP a frame under 14 bytes, not even via
//     BPF_PROG_TEST_RUN; the check is there because the verifier and the
//     wire demand it.) The program is multi-buffer aware (xdp.frags), so
//     jumbo frames reach it as a linear part plus fragments: the headers
//     are read from the linear part, or copied out of the frame when the
//     linear part is shorter than them; a VM's byte counter counts the
//     fragments too.
//  2. Group destination (broadcast, multicast: bit 0 of the first octet):
//     redirect to the flood socket of queue q if one is registered
//     (Flooded; the daemon replicates to the VMs of the VLAN), else
//     XDP_PASS (FloodPassed). Group MACs are never looked up as filters.
//  3. Unicast: look up (dst MAC, VLAN) in the filter table. No match:
//     XDP_PASS to the host stack, the default queue (Passed).
//  4. Match on VM slot s: redirect into the XSKMAP at s*MaxQueues+q
//     (Redirected). If that entry holds no socket the frame is NoSocket
//     and gets Config.NoSocket, default Drop: a VM's frame must not leak
//     into the host stack while its socket is down (e.g. a daemon restart);
//     Pass is there for setups that want the host to see them. A queue
//     q >= MaxQueues (BadQueue) or a slot outside 1..MaxVMs (BadSlot, only
//     possible if someone wrote the map behind the API) take the same
//     action; a group frame on such a queue is passed (BadQueue).
//
// bpf_redirect_map is called with flags 0, so a missing socket shows up as
// XDP_ABORTED from the helper and is counted before the program picks
// its own verdict. Model.Classify is the same decision in pure Go;
// FuzzFilter holds the kernel program to it.
//
// # Maps
//
//   - filters (hash, MaxFilters entries): key {mac [6]u8, vlan u16 host
//     order} -> u32 VM slot 1..MaxVMs.
//   - xsks (XSKMAP, (MaxVMs+1)*MaxQueues entries): index slot*MaxQueues+q
//     is the AF_XDP socket of VM slot for NIC queue q. Slot 0 is reserved
//     for the switch's flood socket of each queue (index q). The kernel
//     only delivers to a socket bound to the same (interface, queue), which
//     is why the index includes the queue: a VM has one socket per queue
//     ("VMMQ"), and sockets of one queue share one UMEM.
//   - config (array, 1 entry): malformed and no-socket actions, changeable
//     at run time with SetActions.
//   - vm_stats (per-CPU array, MaxVMs+1 entries, by slot): packets and
//     bytes redirected to the VM, and redirect errors (frames for the VM
//     with no socket on their queue, or on a queue >= MaxQueues).
//   - global_stats (per-CPU array, 1 entry): exactly one
//     outcome per frame (redirected, passed, flooded, flood_passed,
//     malformed, no_socket, bad_queue, bad_slot), and dropped (the DROP
//     verdicts among them); its frames field stays 0, GlobalCounters
//     sums the outcomes. Readers sum over CPUs (VMCounters,
//     AllVMCounters, GlobalCounters).
//
// MaxQueues and MaxVMs are also compiled into the program's read-only data
// at load time, so they always agree with the map shapes.
//
// Counters count the program's decision. A redirect can still fail after
// the program returns (the socket's rx ring or fill ring empty); the
// kernel counts those per socket (XDP_STATISTICS rx_dropped), the xsk
// layer reports them.
//
// # Pinning and restarts
//
// With Config.PinDir (conventionally DefaultPinDir(ifname) =
// /sys/fs/bpf/vmq/<ifname>) the five maps are pinned there by name and the
// XDP link as "link". A later Load with the same shape reuses the maps
// (filters and counters survive) and picks up the link: Attach on the same
// interface then swaps the program in place, Detach removes it. A Load with
// another shape fails with an error wrapping ebpf.ErrMapIncompatible. Close
// keeps the pins, so the program keeps steering after the daemon exits
// (sockets close with the daemon, so VM frames then take the NoSocket
// action); Unpin removes the pins. PinDir must be on bpffs: Load does not
// mount it and says so. `ip netns exec` remounts /sys, hiding the host's
// bpffs.
//
// # Threading
//
// A Filter holds no lock and no per-packet state: every method is a few
// bpf syscalls, safe from several goroutines, except that Attach, Detach,
// Close and Unpin must not race each other. Attach and Load use the
// calling thread's network namespace (lock the OS thread when switching
// namespaces). Socket registration takes the fd of a bound AF_XDP socket;
// the map keeps its own reference, and closing the socket removes it from
// the map.
package bpf

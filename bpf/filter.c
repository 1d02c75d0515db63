// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
//go:build ignore

// The vmq VMQ filter: steers frames by (destination MAC, VLAN) into the
// AF_XDP socket of a VM for the frame's rx queue. See doc.go for the map
// layout and the meaning of every counter.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char __license[] SEC("license") = "Dual MIT/GPL";

struct filter_key {
	__u8 mac[ETH_ALEN];
	__u16 vlan; /* host byte order; 0 = untagged or priority-tagged */
};

struct filter_config {
	__u32 malformed_action; /* XDP_DROP or XDP_PASS */
	__u32 no_socket_action; /* XDP_DROP or XDP_PASS */
};

struct vm_counters {
	__u64 packets;         /* redirected to this VM's socket */
	__u64 bytes;
	__u64 redirect_errors; /* matched this VM, but no socket for the queue */
};

/* Every frame bumps exactly one of the outcome counters (redirected ..
 * bad_slot); dropped counts the DROP verdicts among them. frames stays 0:
 * readers sum the outcomes (one increment a frame less). */
struct global_counters {
	__u64 frames;
	__u64 redirected;
	__u64 passed;
	__u64 flooded;
	__u64 flood_passed;
	__u64 malformed;
	__u64 no_socket;
	__u64 bad_queue;
	__u64 bad_slot;
	__u64 dropped;
};

/* Set by the loader; they fix the shape of xsks and vm_stats. */
volatile const __u32 max_queues = 1;
volatile const __u32 max_vms = 1;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct filter_key);
	__type(value, __u32);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} filters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct filter_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct vm_counters);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} vm_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct global_counters);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} global_stats SEC(".maps");

/* One bit per (queue, slot): set when a frame is redirected to that
 * socket, cleared by the queue's worker (which mmaps the map), so a worker
 * with many VMs visits only sockets that have frames. Queue q owns words
 * [q*W, q*W+W) with W = max_vms/64 + 1; bit slot%64 of word slot/64, slot 0
 * being the flood socket. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pending SEC(".maps");

struct vlan_tag {
	__be16 tci;
	__be16 proto;
};

enum { MALFORMED, NO_SOCKET };

/* A drop verdict is counted; pass is anything but XDP_DROP so a corrupt
 * config never yields an action the program did not mean. The config is
 * read only here: the frames that get this far are the rare ones. */
static __always_inline int verdict(struct global_counters *gs, int which)
{
	__u32 zero = 0;
	struct filter_config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg)
		return XDP_PASS; /* cannot happen: an array of one */
	__u32 action = which == MALFORMED ? cfg->malformed_action : cfg->no_socket_action;
	if (action == XDP_DROP) {
		gs->dropped++;
		return XDP_DROP;
	}
	return XDP_PASS;
}

/* Marks the socket of slot on queue as having frames. The bit is read
 * first so a busy socket costs no locked write per frame. */
static __always_inline void mark_pending(__u32 queue, __u32 slot)
{
	__u32 idx = queue * ((max_vms >> 6) + 1) + (slot >> 6);
	__u64 *word = bpf_map_lookup_elem(&pending, &idx);
	__u64 bit = 1ULL << (slot & 63);

	if (word && !(*word & bit))
		__sync_fetch_and_or(word, bit);
}

/* The headers the filter reads: Ethernet and one VLAN tag. */
struct l2_hdr {
	struct ethhdr eth;
	struct vlan_tag tag;
};

/* Multi-buffer aware (xdp.frags): jumbo frames arrive as a linear part
 * plus fragments. The headers are read from the linear part; only when it
 * is shorter than they are (no driver does that today) are they copied
 * out of the whole frame. */
SEC("xdp.frags")
int vmq_filter(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;

	struct global_counters *gs = bpf_map_lookup_elem(&global_stats, &zero);
	if (!gs)
		return XDP_PASS; /* cannot happen: an array of one */

	struct l2_hdr copy;
	struct l2_hdr *h = data;
	__u64 len = data_end - data;
	if ((void *)(h + 1) > data_end) {
		len = bpf_xdp_get_buff_len(ctx);
		__builtin_memset(&copy, 0, sizeof(copy));
		h = &copy;
		if (len < sizeof(copy.eth) ||
		    bpf_xdp_load_bytes(ctx, 0, &copy, len < sizeof(copy) ? sizeof(copy.eth) : sizeof(copy)) < 0) {
			gs->malformed++;
			return verdict(gs, MALFORMED);
		}
	}

	struct filter_key key = {};
	__builtin_memcpy(key.mac, h->eth.h_dest, ETH_ALEN);
	if (h->eth.h_proto == bpf_htons(ETH_P_8021Q) ||
	    h->eth.h_proto == bpf_htons(ETH_P_8021AD)) {
		/* Only the outer tag counts; an inner tag is payload to us. */
		if (len < sizeof(*h)) {
			gs->malformed++;
			return verdict(gs, MALFORMED);
		}
		key.vlan = bpf_ntohs(h->tag.tci) & 0x0fff;
	}

	__u32 queue = ctx->rx_queue_index;

	if (key.mac[0] & 1) {
		/* Broadcast or multicast: the switch's flood socket, slot 0. */
		if (queue >= max_queues) {
			gs->bad_queue++;
			return XDP_PASS;
		}
		if (bpf_redirect_map(&xsks, queue, 0) == XDP_REDIRECT) {
			mark_pending(queue, 0);
			gs->flooded++;
			return XDP_REDIRECT;
		}
		gs->flood_passed++;
		return XDP_PASS;
	}

	__u32 *slotp = bpf_map_lookup_elem(&filters, &key);
	if (!slotp) {
		gs->passed++;
		return XDP_PASS;
	}
	__u32 slot = *slotp;
	if (slot == 0 || slot > max_vms) {
		gs->bad_slot++;
		return verdict(gs, NO_SOCKET);
	}
	struct vm_counters *vs = bpf_map_lookup_elem(&vm_stats, &slot);
	if (!vs)
		return XDP_PASS; /* cannot happen: slot <= max_vms */

	if (queue >= max_queues) {
		gs->bad_queue++;
		vs->redirect_errors++;
		return verdict(gs, NO_SOCKET);
	}
	if (bpf_redirect_map(&xsks, slot * max_queues + queue, 0) == XDP_REDIRECT) {
		mark_pending(queue, slot);
		gs->redirected++;
		vs->packets++;
		vs->bytes += bpf_xdp_get_buff_len(ctx); /* fragments included */
		return XDP_REDIRECT;
	}
	gs->no_socket++;
	vs->redirect_errors++;
	return verdict(gs, NO_SOCKET);
}

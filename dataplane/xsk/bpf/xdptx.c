// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
//go:build ignore

// vmq's XDP transmit: the worker stages a batch of frames, then makes one
// BPF_PROG_RUN call with BPF_F_TEST_XDP_LIVE_FRAMES and repeat = the batch.
// Every run takes the next staged frame of its queue (ctx->rx_queue_index:
// one worker owns one queue), sizes the live frame to it, copies the bytes
// in and returns XDP_TX, which live mode turns into a redirect out of the
// ingress interface: the frames leave in bulks through ndo_xdp_xmit, with
// no skb and no softirq per frame.
//
// Anything malformed (a length out of range, a run past the staged count,
// a queue without slots) is dropped and counted, never read out of bounds.
// The program is also attached to a private loopback (internal/xdplive)
// only to stay in the XDP dispatcher: frames of any other interface pass.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char __license[] SEC("license") = "Dual MIT/GPL";

#define TX_SLOT 2048       // bytes per staged frame (xsk.XDPTxSlot)
#define TX_RING 256        // staged frames per queue (xsk.XDPTxMaxBatch)
#define TX_MIN_LEN 14      // an Ethernet header
#define BULK_MAX 16        // the kernel's DEV_MAP_BULK_SIZE: frames per bulk

// barrier_var (bpf_helpers.h) keeps clang from turning a checked index
// into a pointer it advances (the verifier then sees an unbounded pointer).

// One queue's batch, written by its worker through the mmapped map between
// calls and advanced by the program during one.
struct txq {
	__u32 n;               // frames staged for this call
	__u32 next;            // the next frame to send (the worker sets 0)
	__u32 ifindex;         // the interface the frames leave by
	__u32 prog_id;         // vmq_xdp_tx's id (redirect errors of other programs are not ours)
	__u64 sent;            // frames sent (XDP_TX), ever
	__u64 bad_len;         // dropped: length out of TX_MIN_LEN..TX_SLOT
	__u64 overrun;         // dropped: runs past n
	__u64 no_slot;         // dropped: no slot map entry or tail adjust failed
	// The kernel's bulk transmits during this queue's calls (tracepoint
	// xdp:xdp_devmap_xmit): frames a driver refused in ndo_xdp_xmit are
	// dropped where BPF_PROG_RUN's caller cannot see them.
	__u64 xmit_sent;
	__u64 xmit_drops;
	__u64 xmit_errs;       // bulks that returned an error
	// Drops that could not be matched to a staged frame (lost_idx holds
	// the ones that could).
	__u64 xmit_unmatched;
	__u16 len[TX_RING];    // each staged frame's length
	// Which staged frames the driver dropped in this call (the worker
	// sets the counts to 0 before it and sends those frames again). Every
	// XDP_TX frame is appended to order when the program returns it; the
	// kernel sends them in that order in bulks of up to BULK_MAX
	// (bq_xmit_all), each reported by xdp_devmap_xmit with the frames the
	// driver took first and the ones it dropped, the bulk's tail, after.
	__u32 order_n;         // XDP_TX frames of this call
	__u32 bulk_pos;        // of them, reported by bulks so far
	__u32 lost_n;          // entries of lost_idx
	__u32 pad;
	__u16 order[TX_RING];  // staged index of each XDP_TX frame, in order
	__u16 lost_idx[TX_RING]; // staged indices dropped, in order
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1); // set at load: one per queue
	__type(key, __u32);
	__type(value, struct txq);
} tx_queues SEC(".maps");

// The thread of each queue's worker (tid → queue), so that the tracepoint
// below knows whose bulk transmit it sees.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1); // set at load: one per queue
	__type(key, __u32);
	__type(value, __u32);
} tx_tids SEC(".maps");

// Frame bytes, TX_RING slots per queue: slot queue*TX_RING + i.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, TX_RING); // set at load: TX_RING per queue
	__type(key, __u32);
	__type(value, __u8[TX_SLOT]);
} tx_slots SEC(".maps");

SEC("xdp")
int vmq_xdp_tx(struct xdp_md *ctx)
{
	__u32 q = ctx->rx_queue_index;
	struct txq *t = bpf_map_lookup_elem(&tx_queues, &q);

	if (!t || t->ifindex != ctx->ingress_ifindex)
		return XDP_PASS; // the keeper's loopback, or a queue never set up
	__u32 i = t->next;
	if (i >= t->n || i >= TX_RING) {
		t->overrun++;
		return XDP_DROP;
	}
	t->next = i + 1;
	__u32 len = t->len[i];
	if (len < TX_MIN_LEN || len > TX_SLOT) {
		t->bad_len++;
		return XDP_DROP;
	}
	__u32 key = q * TX_RING + i;
	__u8 *src = bpf_map_lookup_elem(&tx_slots, &key);
	if (!src) {
		t->no_slot++;
		return XDP_DROP;
	}
	int delta = (int)len - (int)(ctx->data_end - ctx->data);
	if (delta && bpf_xdp_adjust_tail(ctx, delta)) {
		t->no_slot++;
		return XDP_DROP;
	}
	if (bpf_xdp_store_bytes(ctx, 0, src, len)) {
		t->no_slot++;
		return XDP_DROP;
	}
	t->sent++;
	__u32 o = t->order_n;
	if (o < TX_RING) {
		t->order[o & (TX_RING - 1)] = i;
		t->order_n = o + 1;
	}
	return XDP_TX;
}

// The state of the queue whose worker thread is running (a tracepoint runs
// in the context of the flush it reports), if its interface is ifindex.
static __always_inline struct txq *caller_txq(__s32 ifindex)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u32 *q = bpf_map_lookup_elem(&tx_tids, &tid);
	if (!q)
		return 0;
	struct txq *t = bpf_map_lookup_elem(&tx_queues, q);
	if (!t || (__u32)ifindex != t->ifindex)
		return 0;
	return t;
}

// The fields of tracepoint xdp:xdp_devmap_xmit (its format file).
struct devmap_xmit_args {
	__u64 common;
	__s32 from_ifindex;
	__u32 act;
	__s32 to_ifindex;
	__s32 drops;
	__s32 sent;
	__s32 err;
};

// Runs in the context of the thread whose bulk it is: a worker's flush
// (live frames transmit synchronously, in the BPF_PROG_RUN call).
SEC("tracepoint/xdp/xdp_devmap_xmit")
int vmq_xdp_tx_xmit(struct devmap_xmit_args *a)
{
	struct txq *t = caller_txq(a->to_ifindex);
	if (!t)
		return 0;
	t->xmit_sent += a->sent;
	t->xmit_drops += a->drops;
	if (a->err)
		t->xmit_errs++;
	if (a->sent < 0 || a->drops < 0)
		return 0;
	// The bulk is order[bulk_pos, bulk_pos + sent + drops): the tail of
	// drops frames was dropped.
	__u32 pos = t->bulk_pos + (__u32)a->sent;
	__u32 drops = (__u32)a->drops;
	__u32 matched = 0;
	for (__u32 k = 0; k < BULK_MAX && k < drops; k++) {
		__u32 p = pos + k, l = t->lost_n;
		if (p >= t->order_n || p >= TX_RING || l >= TX_RING)
			break;
		barrier_var(p);
		barrier_var(l);
		t->lost_idx[l & (TX_RING - 1)] = t->order[p & (TX_RING - 1)];
		t->lost_n = l + 1;
		matched++;
	}
	t->xmit_unmatched += drops - matched;
	t->bulk_pos = pos + drops;
	return 0;
}

// The fields of tracepoint xdp:xdp_redirect_err (its format file).
struct redirect_err_args {
	__u64 common;
	__s32 prog_id;
	__u32 act;
	__s32 ifindex;
	__s32 err;
	__s32 to_ifindex;
	__u32 map_id;
	__s32 map_index;
};

// A frame refused before the bulk: an interface without ndo_xdp_xmit
// (NETDEV_XDP_ACT_NDO_XMIT off, e.g. a veth whose peer lost XDP), or too
// long for it. One frame each.
SEC("tracepoint/xdp/xdp_redirect_err")
int vmq_xdp_tx_redirect_err(struct redirect_err_args *a)
{
	struct txq *t = caller_txq(a->ifindex);
	if (!t || (__u32)a->prog_id != t->prog_id)
		return 0;
	t->xmit_drops++;
	t->xmit_errs++;
	// The frame the program has just returned (enqueueing follows each
	// run at once) never reached a bulk: take it out of order.
	__u32 o = t->order_n, l = t->lost_n;
	if (o > t->bulk_pos && o <= TX_RING && l < TX_RING) {
		t->order_n = o - 1;
		t->lost_idx[l & (TX_RING - 1)] = t->order[(o - 1) & (TX_RING - 1)];
		t->lost_n = l + 1;
	} else {
		t->xmit_unmatched++;
	}
	return 0;
}

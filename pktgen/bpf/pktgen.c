// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// vmq-pktgen's XDP programs.
//
// pktgen_xdp runs under BPF_PROG_RUN with BPF_F_TEST_XDP_LIVE_FRAMES: every
// run stamps one frame and returns XDP_TX, which the kernel turns into a
// transmit out of the ctx's ingress interface. Live-frame pages are recycled
// without being re-initialised from data_in, and a receiver may have written
// to them, so every run rewrites the whole header (and the payload, when
// stamping); only the bytes after that are left as data_in made them.
//
// The same program is also attached (generic XDP) to the loopback of a
// private network namespace, only so that it stays in the kernel's XDP
// dispatcher: otherwise every BPF_PROG_RUN call adds it and removes it
// again, two synchronize_rcu() waits of ~20 ms. It passes every frame that
// does not come from the generator's interface untouched.
//
// pktgen_sink is a receiver for tests and benchmarks: it counts frames,
// marks payload sequence numbers in a bitmap and drops (or passes) them.
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>

#define MAX_DSTS 256 // pktgen.MaxDests
#define HDR_MAX 56
#define PAYLOAD_MAGIC 0x564d5131
#define PAYLOAD_LEN 24

struct gen_config {
	__u64 limit;       // stamp frames while seq < limit, drop the rest
	__u64 call;        // BPF_PROG_RUN call number: a new one rereads the clock
	__u32 n_dsts;      // destinations rotated frame by frame, >= 1
	__u32 pad0;
	__u16 sport_first;
	__u16 sport_count; // >= 1
	__u16 dport_first;
	__u16 dport_count; // >= 1
	__u8 tags;         // VLAN tags in the header: 0, 1 or 2
	__u8 udp_csum;     // compute the UDP checksum
	__u8 stamp;        // write the payload (stream, seq, timestamp)
	__u8 pad;
	__u32 ifindex;     // the generator's interface; frames of others pass
	__u32 clock_every; // frames per clock read, >= 1
};

// One destination: the frame header up to the UDP data (42, 46 or 50 bytes)
// with UDP ports and checksum zero, the payload's first 8 bytes (magic and
// stream, as sent), and the unfolded one's-complement sum of everything
// the UDP checksum covers except the per-frame fields (ports, and when
// stamping seq and timestamp).
struct gen_dst {
	__u8 hdr[HDR_MAX];
	__u64 pl_head;
	__u32 csum_base;
	__u32 pad;
};

// The frame number's parts are kept incrementally: a 64-bit division per
// frame costs more than the rest of the bookkeeping.
struct gen_state {
	__u64 seq;   // frames stamped and transmitted (the next frame number)
	__u64 over;  // runs past the limit, dropped
	__u64 sseq;  // seq / n_dsts: the frame's number in its stream
	__u64 ts;    // the timestamp being stamped
	__u64 call;  // the call ts was read in
	__u32 di;    // seq % n_dsts: the destination
	__u32 si;    // sseq % sport_count
	__u32 pi;    // (sseq / sport_count) % dport_count
	__u32 clock_left; // frames left before the clock is read again
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_config);
} gen_conf SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_DSTS);
	__type(key, __u32);
	__type(value, struct gen_dst);
} gen_dsts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_state);
} gen_st SEC(".maps");

static __always_inline void put_be16(__u8 *p, __u16 v)
{
	*(__u16 *)p = __builtin_bswap16(v);
}

static __always_inline void put_be64(__u8 *p, __u64 v)
{
	*(__u64 *)p = __builtin_bswap64(v);
}

static __always_inline int stamp(struct xdp_md *ctx, const struct gen_config *cfg,
				 const struct gen_dst *dst, const int hlen,
				 __u64 sseq, __u64 ts, __u16 sport, __u16 dport)
{
	__u8 *data = (void *)(long)ctx->data;
	__u8 *end = (void *)(long)ctx->data_end;

	if (data + hlen + PAYLOAD_LEN > end)
		return XDP_ABORTED;

	// hlen is 42, 46 or 50: copy in 64-bit words, then the 2-6 bytes
	// left (x86 takes unaligned stores at full speed).
#pragma unroll
	for (int i = 0; i + 8 <= hlen; i += 8)
		*(__u64 *)(data + i) = *(const __u64 *)(dst->hdr + i);
	if (hlen % 8 >= 4)
		*(__u32 *)(data + hlen / 8 * 8) = *(const __u32 *)(dst->hdr + hlen / 8 * 8);
	if (hlen % 4 == 2)
		*(__u16 *)(data + hlen - 2) = *(const __u16 *)(dst->hdr + hlen - 2);

	__u8 *udp = data + hlen - 8;
	__u8 *pl = data + hlen;

	put_be16(udp, sport);
	put_be16(udp + 2, dport);
	if (cfg->stamp) {
		*(__u64 *)pl = dst->pl_head;
		put_be64(pl + 8, sseq);
		put_be64(pl + 16, ts);
	}

	if (cfg->udp_csum) {
		// csum_base has the payload's constant part (magic and stream,
		// or nothing: data_in's zeros when not stamping).
		__u64 sum = dst->csum_base;
		sum += sport + dport;
		if (cfg->stamp) {
			sum += (sseq >> 48) + ((sseq >> 32) & 0xffff) + ((sseq >> 16) & 0xffff) + (sseq & 0xffff);
			sum += (ts >> 48) + ((ts >> 32) & 0xffff) + ((ts >> 16) & 0xffff) + (ts & 0xffff);
		}
		sum = (sum & 0xffff) + (sum >> 16);
		sum = (sum & 0xffff) + (sum >> 16);
		sum = (sum & 0xffff) + (sum >> 16);
		__u16 c = ~sum & 0xffff;
		if (c == 0)
			c = 0xffff;
		put_be16(udp + 6, c);
	}
	return XDP_TX;
}

SEC("xdp")
int pktgen_xdp(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct gen_config *cfg = bpf_map_lookup_elem(&gen_conf, &zero);
	struct gen_state *st = bpf_map_lookup_elem(&gen_st, &zero);
	if (!cfg || !st)
		return XDP_ABORTED;
	// The dispatcher keeper (loopback of a private namespace) sees only
	// frames of other interfaces: leave them alone.
	if (ctx->ingress_ifindex != cfg->ifindex)
		return XDP_PASS;

	// One generator is driven by one thread at a time, so plain
	// read-modify-write of the state is enough.
	__u64 seq = st->seq;
	if (seq >= cfg->limit) {
		st->over++;
		return XDP_DROP;
	}
	__u32 di = st->di;
	struct gen_dst *dst = bpf_map_lookup_elem(&gen_dsts, &di);
	if (!dst)
		return XDP_ABORTED;
	__u64 sseq = st->sseq;
	__u16 sport = cfg->sport_first + st->si;
	__u16 dport = cfg->dport_first + st->pi;

	// The timestamp is read once per clock_every frames (and at the
	// start of every call): the clock read is the costliest part of a
	// stamp. A frame's timestamp is never later than its transmit.
	__u64 ts = 0;
	if (cfg->stamp) {
		ts = st->ts;
		if (st->clock_left == 0 || st->call != cfg->call) {
			ts = bpf_ktime_get_ns();
			st->ts = ts;
			st->call = cfg->call;
			st->clock_left = cfg->clock_every;
		}
		st->clock_left--;
	}

	int act;
	switch (cfg->tags) {
	case 0:
		act = stamp(ctx, cfg, dst, 42, sseq, ts, sport, dport);
		break;
	case 1:
		act = stamp(ctx, cfg, dst, 46, sseq, ts, sport, dport);
		break;
	default:
		act = stamp(ctx, cfg, dst, 50, sseq, ts, sport, dport);
		break;
	}
	if (act != XDP_TX)
		return act;

	// Next frame: destination, then the stream's ports, as FlowSpec says.
	st->seq = seq + 1;
	if (++di >= cfg->n_dsts) {
		di = 0;
		st->sseq = sseq + 1;
		__u32 si = st->si + 1;
		if (si >= cfg->sport_count) {
			si = 0;
			__u32 pi = st->pi + 1;
			if (pi >= cfg->dport_count)
				pi = 0;
			st->pi = pi;
		}
		st->si = si;
	}
	st->di = di;
	return XDP_TX;
}

// ---- sink ----

#define SINK_BITMAP_WORDS (1 << 16) // 4Mi sequence numbers

struct sink_config {
	__u32 action; // XDP_DROP or XDP_PASS
	__u32 stream; // stream whose sequence numbers go into the bitmap
};

struct sink_stats {
	__u64 frames;     // every frame seen
	__u64 bytes;
	__u64 payloads;   // frames with a vmq-pktgen payload
	__u64 tracked;    // payloads of the tracked stream with seq in the bitmap's range
	__u64 dups;       // tracked seqs seen before
	__u64 ts_back;    // payload timestamps older than the previous one
	__u64 last_ts;
	__u64 max_seq;    // highest tracked seq + 1
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sink_config);
} sink_conf SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sink_stats);
} sink_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SINK_BITMAP_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} sink_seen SEC(".maps");

static __always_inline __u64 get_be64(const __u8 *p)
{
	return __builtin_bswap64(*(const __u64 *)p);
}

static __always_inline __u32 get_be32(const __u8 *p)
{
	return __builtin_bswap32(*(const __u32 *)p);
}

SEC("xdp")
int pktgen_sink(struct xdp_md *ctx)
{
	__u8 *data = (void *)(long)ctx->data;
	__u8 *end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct sink_config *cfg = bpf_map_lookup_elem(&sink_conf, &zero);
	struct sink_stats *s = bpf_map_lookup_elem(&sink_counts, &zero);
	if (!cfg || !s)
		return XDP_ABORTED;
	__u32 action = cfg->action == XDP_PASS ? XDP_PASS : XDP_DROP;

	// Receivers on veth run on the sender's CPU; several senders may run
	// at once, so the counters are atomic.
	__sync_fetch_and_add(&s->frames, 1);
	__sync_fetch_and_add(&s->bytes, end - data);

	__u32 off = 12;
	__u16 et = 0;
#pragma unroll
	for (int i = 0; i < 3; i++) {
		if (data + off + 2 > end)
			return action;
		et = (data[off] << 8) | data[off + 1];
		off += 2;
		if (et != 0x8100 && et != 0x88a8)
			break;
		off += 2;
	}
	if (et != 0x0800)
		return action;
	if (data + off + 20 > end)
		return action;
	__u8 *ip = data + off;
	if ((ip[0] >> 4) != 4 || ip[9] != 17)
		return action;
	__u32 ihl = (ip[0] & 0x0f) * 4;
	if (ihl < 20 || ihl > 60)
		return action;
	__u8 *pl = ip + ihl + 8;
	if (pl + PAYLOAD_LEN > end)
		return action;
	if (get_be32(pl) != PAYLOAD_MAGIC)
		return action;
	__sync_fetch_and_add(&s->payloads, 1);
	if (get_be32(pl + 4) != cfg->stream)
		return action;

	__u64 seq = get_be64(pl + 8);
	__u64 ts = get_be64(pl + 16);
	if (ts < s->last_ts)
		__sync_fetch_and_add(&s->ts_back, 1);
	s->last_ts = ts;
	if (seq >= (__u64)SINK_BITMAP_WORDS * 64)
		return action;
	__u32 word = seq / 64;
	__u64 bit = 1ULL << (seq % 64);
	__u64 *w = bpf_map_lookup_elem(&sink_seen, &word);
	if (!w)
		return action;
	__u64 old = __sync_fetch_and_or(w, bit);
	if (old & bit)
		__sync_fetch_and_add(&s->dups, 1);
	else
		__sync_fetch_and_add(&s->tracked, 1);
	if (seq + 1 > s->max_seq)
		s->max_seq = seq + 1;
	return action;
}

char _license[] SEC("license") = "Dual BSD/GPL";

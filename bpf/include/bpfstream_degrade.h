/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * bpfstream_degrade.h: graceful degradation when the consumer falls behind (backpressure).
 *
 * Include after bpfstream.h. Before sending an event, ask
 *
 *     if (!bpfstream_degrade_admit(key))
 *             return 0;                  (summarized: counted under `key`, send nothing)
 *     e = bpfstream_reserve(...); ...    (full fidelity, or the 1-in-N sample)
 *
 * Policy (read-only globals set at load time; userspace: the CLI's lab::degrade::DegradePolicy):
 *   - when the bytes waiting in the ring (bpf_ringbuf_query(BPF_RB_AVAIL_DATA)) reach
 *     `bpfstream_degrade_high`, switch to degraded mode;
 *   - in degraded mode, count each event per key in the `bpfstream_summary` hash map instead
 *     of sending it, except every `bpfstream_degrade_sample`-th event (0: none), which is sent;
 *   - when the bytes waiting fall to `bpfstream_degrade_low` or below, return to full fidelity
 *     (checked as events arrive: after the load stops, the mode changes with the next event).
 * Each switch is announced in the stream by a `struct bpfstream_degrade_notice` record (first
 * u64 = BPFSTREAM_DEGRADE_MAGIC, which no CLOCK_MONOTONIC timestamp reaches), sent with a
 * forced wakeup so the consumer learns it at once.
 *
 * Accounting: notices bypass the `bpfstream_stats` counters (they have their own), so for the
 * application's events: produced = (bpfstream_stats.produced) + summarized, and
 * bpfstream_stats.produced = delivered + dropped as always. An event that cannot be summarized
 * (summary map full) is sent instead, never lost unaccounted.
 *
 * Perf variant: a BPF program cannot read a perf buffer's fill level, so there is no watermark
 * to act on: admit() always sends, and userspace (DegradePolicy::check) refuses the policy there.
 */
#ifndef BPFSTREAM_DEGRADE_H
#define BPFSTREAM_DEGRADE_H

#include "bpfstream.h"

#ifndef BPFSTREAM_SUMMARY_KEYS
#define BPFSTREAM_SUMMARY_KEYS 1024	/* distinct keys the summary can hold (userspace may resize) */
#endif

#define BPFSTREAM_DEGRADE_MAGIC 0xb9f5de9a0de9a0deULL	/* > 2^63: never a ktime timestamp */

const volatile __u64 bpfstream_degrade_high = 0;	/* 0: policy off */
const volatile __u64 bpfstream_degrade_low = 0;
const volatile __u32 bpfstream_degrade_sample = 0;

/* Mirrored in Rust by the CLI's lab::degrade::Notice (layout checked against this BTF). */
struct bpfstream_degrade_notice {
	__u64 magic;		/* BPFSTREAM_DEGRADE_MAGIC */
	__u64 ts_ns;		/* bpf_ktime_get_ns() at the switch */
	__u64 fill;		/* bytes waiting in the ring at the switch */
	__u32 degraded;		/* 1: degraded from now on; 0: full fidelity again */
	__u32 cpu;
};

BPFSTREAM_EXPORT_STRUCT(bpfstream_degrade_notice);

/* Per CPU; mirrored in Rust by the CLI's lab::degrade::DegradeCounters. */
struct bpfstream_degrade_counters {
	__u64 summarized;	/* events counted in the summary instead of sent */
	__u64 sampled;		/* events sent in degraded mode (1 in N) */
	__u64 notices;		/* notices written */
	__u64 notices_dropped;	/* notices the ring had no room for */
	__u64 summary_full;	/* events sent because their key did not fit in the summary */
	__u64 degraded_seen;	/* events seen in degraded mode (drives the 1-in-N sample) */
};

/* The mode, one for all CPUs: 0 full fidelity, 1 degraded. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} bpfstream_degrade_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bpfstream_degrade_counters);
} bpfstream_degrade_stats SEC(".maps");

/* key -> events summarized under it (cumulative; userspace reads, never resets). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BPFSTREAM_SUMMARY_KEYS);
	__type(key, __u64);
	__type(value, __u64);
} bpfstream_summary SEC(".maps");

#ifndef BPFSTREAM_PERF
static __always_inline void bpfstream_degrade_announce(struct bpfstream_degrade_counters *c, __u32 degraded,
							__u64 fill)
{
	struct bpfstream_degrade_notice n = {
		.magic = BPFSTREAM_DEGRADE_MAGIC,
		.ts_ns = bpf_ktime_get_ns(),
		.fill = fill,
		.degraded = degraded,
		.cpu = bpf_get_smp_processor_id(),
	};

	if (bpf_ringbuf_output(&events, &n, sizeof(n), BPF_RB_FORCE_WAKEUP) == 0)
		c->notices++;
	else
		c->notices_dropped++;
}

/* Counts one event under `key`; false if the summary has no room for a new key. */
static __always_inline bool bpfstream_degrade_summarize(__u64 key)
{
	__u64 zero = 0, *count;

	count = bpf_map_lookup_elem(&bpfstream_summary, &key);
	if (!count) {
		/* Another CPU may insert the same key first: BPF_NOEXIST fails then, lookup finds it. */
		bpf_map_update_elem(&bpfstream_summary, &key, &zero, BPF_NOEXIST);
		count = bpf_map_lookup_elem(&bpfstream_summary, &key);
		if (!count)
			return false;
	}
	__sync_fetch_and_add(count, 1);
	return true;
}

/*
 * Whether to send the event with aggregation `key` (true), or not because it was summarized
 * (false). Switches modes at the watermarks and announces each switch.
 */
static __always_inline bool bpfstream_degrade_admit(__u64 key)
{
	struct bpfstream_degrade_counters *c;
	__u32 zero = 0;
	__u64 *mode, fill;

	if (bpfstream_degrade_high == 0)
		return true;
	mode = bpf_map_lookup_elem(&bpfstream_degrade_state, &zero);
	c = bpf_map_lookup_elem(&bpfstream_degrade_stats, &zero);
	if (!mode || !c)
		return true;
	fill = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	if (*mode == 0) {
		if (fill < bpfstream_degrade_high)
			return true;
		/* One CPU wins the switch and announces it. */
		if (__sync_val_compare_and_swap(mode, 0, 1) == 0)
			bpfstream_degrade_announce(c, 1, fill);
	} else if (fill <= bpfstream_degrade_low) {
		if (__sync_val_compare_and_swap(mode, 1, 0) == 1)
			bpfstream_degrade_announce(c, 0, fill);
		return true;
	}
	if (bpfstream_degrade_sample && ++c->degraded_seen % bpfstream_degrade_sample == 0) {
		c->sampled++;
		return true;
	}
	if (!bpfstream_degrade_summarize(key)) {
		c->summary_full++;
		return true;
	}
	c->summarized++;
	return false;
}
#else
static __always_inline bool bpfstream_degrade_admit(__u64 key)
{
	return true;
}
#endif /* BPFSTREAM_PERF */

#endif /* BPFSTREAM_DEGRADE_H */

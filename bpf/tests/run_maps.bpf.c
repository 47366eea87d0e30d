// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * For `bpfstream run`'s tests: one object, three events maps, one record per call of
 * bpfstream_run_maps(seq, map) in the traced process (a uprobe the test attaches with
 * --uprobe), sent to the map `map` names: 0 the default stream `events` (counted in
 * bpfstream_stats), 1 the stream `second` (BPFSTREAM_STREAM: counted in second_stats), 2 the ring
 * `plain`, written with bpf_ringbuf_output and counted nowhere. In the perf build `events` and
 * `second` are perf event arrays and `plain` is still a ring: ring and perf in one object.
 */
#define BPFSTREAM_PREEMPTIBLE
#include "bpfstream.h"
#include <bpf/bpf_tracing.h>

struct map_event {
	__u64 seq;
	__u32 map;	/* a name the JSON line uses for itself */
};

BPFSTREAM_EXPORT_STRUCT(map_event);

BPFSTREAM_STREAM(second);

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} plain SEC(".maps");

SEC("uprobe")
int maps(struct pt_regs *ctx)
{
	struct map_event plain_event = { .seq = PT_REGS_PARM1(ctx), .map = 2 };
	__u32 map = PT_REGS_PARM2(ctx);
	struct map_event *e;

	if (map == 2) {
		bpf_ringbuf_output(&plain, &plain_event, sizeof(plain_event), 0);
		return 0;
	}
	e = map == 0 ? bpfstream_scratch() : bpfstream_scratch_to(second);
	if (!e)
		return 0;
	e->seq = PT_REGS_PARM1(ctx);
	e->map = map;
	if (map == 0)
		bpfstream_output(ctx, e, sizeof(*e));
	else
		bpfstream_output_to(second, ctx, e, sizeof(*e));
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

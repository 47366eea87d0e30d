// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * bpfstream lab backpressure: the lab's bursts (lab.h) sent through the degradation policy of
 * bpfstream_degrade.h; each record's aggregation key is the trigger's key.
 */
#include "bpfstream.h"
#include "bpfstream_degrade.h"
#include "lab.h"

const volatile __u32 targ_tgid = 0;

struct burst {
	void *ctx;
	__u64 seq;
	__u32 key;
	__u32 tid;
};

static long emit_one(__u64 index, void *data)
{
	struct burst *b = data;
	struct lab_event *e;

	if (!bpfstream_degrade_admit(b->key))
		return 0;
	e = bpfstream_reserve(struct lab_event);
	if (!e)
		return 0;
	e->seq = b->seq + index;
	e->cpu = bpf_get_smp_processor_id();
	e->class = LAB_CLASS_BULK;
	e->key = b->key;
	e->tid = b->tid;
	__builtin_memset(e->payload, 0, sizeof(e->payload));
	e->ts_ns = bpf_ktime_get_ns();
	bpfstream_submit(b->ctx, e);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_prctl")
int lab_degrade_burst(struct trace_event_raw_sys_enter *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct burst b;
	__u64 count;

	if ((__u32)(id >> 32) != targ_tgid || ctx->args[0] != LAB_PRCTL_OPTION)
		return 0;
	count = ctx->args[1];
	if (count > LAB_MAX_BURST)
		count = LAB_MAX_BURST;
	b.ctx = ctx;
	b.key = ctx->args[2];
	b.seq = ctx->args[3];
	b.tid = (__u32)id;
	bpf_loop(count, emit_one, &b, 0);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * bpfstream lab load: bursts of records on demand (see lab.h), and one critical record per
 * failed openat(), both only for the lab's own process.
 */
#include "bpfstream.h"
#include "lab.h"

BPFSTREAM_EXPORT_STRUCT(lab_event);

const volatile __u32 targ_tgid = 0;

struct burst {
	void *ctx;
	__u64 seq;
	__u32 class;
	__u32 key;
	__u32 tid;
};

static __always_inline void lab_emit(void *ctx, __u64 seq, __u32 class, __u32 key, __u32 tid)
{
	struct lab_event *e = bpfstream_reserve(struct lab_event);

	if (!e)
		return;
	e->seq = seq;
	e->cpu = bpf_get_smp_processor_id();
	e->class = class;
	e->key = key;
	e->tid = tid;
	__builtin_memset(e->payload, 0, sizeof(e->payload));
	/* Last, so that the timestamp is as close to the commit as it can be. */
	e->ts_ns = bpf_ktime_get_ns();
	bpfstream_submit(ctx, e);
}

static long emit_one(__u64 index, void *data)
{
	struct burst *b = data;

	lab_emit(b->ctx, b->seq + index, b->class, b->key, b->tid);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_prctl")
int lab_burst(struct trace_event_raw_sys_enter *ctx)
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
	b.class = ctx->args[4];
	b.tid = (__u32)id;
	bpf_loop(count, emit_one, &b, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_openat")
int lab_failed_open(struct trace_event_raw_sys_exit *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();

	if ((__u32)(id >> 32) != targ_tgid || ctx->ret >= 0)
		return 0;
	lab_emit(ctx, 0, LAB_CLASS_CRITICAL, (__u32)-ctx->ret, (__u32)id);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * bpfstream lab load: bursts of records on demand (see lab.h), and one critical record per
 * failed openat(), both only for the lab's own process.
 */
#include "bpfstream.h"
#include "lab.h"

BPFSTREAM_EXPORT_STRUCT(lab_event);

static __always_inline void lab_emit(void *ctx, __u64 seq, __u32 class, __u32 key, __u32 tid)
{
	struct lab_event *e = bpfstream_reserve(struct lab_event);

	if (!e)
		return;
	lab_fill(e, seq, class, key, tid);
	bpfstream_submit(ctx, e);
}

static long emit_one(__u64 index, void *data)
{
	struct lab_burst *b = data;

	lab_emit(b->ctx, b->seq + index, b->class, b->key, b->tid);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_prctl")
int lab_burst(struct syscall_trace_enter___lab *ctx)
{
	struct lab_burst b;
	__u64 count = lab_trigger(ctx, &b);

	if (count)
		bpf_loop(count, emit_one, &b, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_openat")
int lab_failed_open(struct syscall_trace_exit *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();

	if ((__u32)(id >> 32) != targ_tgid || ctx->ret >= 0)
		return 0;
	lab_emit(ctx, 0, LAB_CLASS_CRITICAL, (__u32)-ctx->ret, (__u32)id);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

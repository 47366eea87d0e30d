// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * bpfstream lab backpressure: the lab's bursts (lab.h) sent through the degradation policy of
 * bpfstream_degrade.h; each record's aggregation key is the trigger's key, and every record is
 * of the bulk class.
 */
#include "bpfstream.h"
#include "bpfstream_degrade.h"
#include "lab.h"

static long emit_one(__u64 index, void *data)
{
	struct lab_burst *b = data;
	struct lab_event *e;

	if (!bpfstream_degrade_admit(b->key))
		return 0;
	e = bpfstream_reserve(struct lab_event);
	if (!e)
		return 0;
	lab_fill(e, b->seq + index, LAB_CLASS_BULK, b->key, b->tid);
	bpfstream_submit(b->ctx, e);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_prctl")
int lab_degrade_burst(struct syscall_trace_enter___lab *ctx)
{
	struct lab_burst b;
	__u64 count = lab_trigger(ctx, &b);

	if (count)
		bpf_loop(count, emit_one, &b, 0);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

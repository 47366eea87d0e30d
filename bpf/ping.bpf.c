// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* bpfstream ping: one record per call of bpfstream_ping(u64 seq, u32 len) in the traced process. */
/* A uprobe program: preemptible, so scratch memory is guarded (see bpfstream.h). */
#define BPFSTREAM_PREEMPTIBLE
#include "bpfstream.h"
#include <bpf/bpf_tracing.h>
#include "ping.h"

/* Only this process (0: any). */
const volatile __u32 targ_tgid = 0;

/* Never read: keeps struct ping_event in the object's BTF, where tests check the Rust mirror. */
const volatile struct ping_event ping_event_layout = {};

SEC("uprobe")
int handle_ping(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct ping_event *e;
	__u64 seq, len;
	__u8 *data;
	__u32 i;

	if (targ_tgid && tgid != targ_tgid)
		return 0;
	seq = PT_REGS_PARM1(ctx);
	len = (__u32)PT_REGS_PARM2(ctx);
	if (len > PING_DATA_MAX)
		len = PING_DATA_MAX;

	if (len == 0) {
		e = bpfstream_reserve(struct ping_event);
		if (!e)
			return 0;
		e->seq = seq;
		e->len = 0;
		e->cpu = bpf_get_smp_processor_id();
		bpfstream_submit(ctx, e);
		return 0;
	}

	e = bpfstream_scratch();
	if (!e)
		return 0;
	e->seq = seq;
	e->len = len;
	e->cpu = bpf_get_smp_processor_id();
	data = (__u8 *)(e + 1);
	for (i = 0; i < PING_DATA_MAX; i++) {
		if (i >= len)
			break;
		data[i] = seq + i;
	}
	bpfstream_output(ctx, e, sizeof(*e) + len);
	return 0;
}

/*
 * One call of bpfstream_ping_behind_discard(seq) in the traced process: reserves a record, sends
 * ping `seq` (fixed size) reserved behind it, then discards the first. The consumer waits at
 * the discarded record while the ping behind it is committed: only the discard's wakeup (or the
 * consumer's own look) can announce it.
 */
SEC("uprobe")
int handle_ping_behind_discard(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct ping_event *e;
#ifndef BPFSTREAM_PERF
	struct ping_event *head;
#endif

	if (targ_tgid && tgid != targ_tgid)
		return 0;
#ifndef BPFSTREAM_PERF
	/* (The perf variant has no reservations: it just sends the ping.) */
	head = bpf_ringbuf_reserve(&events, sizeof(*head), 0);
	if (!head)
		return 0;
#endif
	e = bpfstream_reserve(struct ping_event);
	if (e) {
		e->seq = PT_REGS_PARM1(ctx);
		e->len = 0;
		e->cpu = bpf_get_smp_processor_id();
		bpfstream_submit(ctx, e);
	}
#ifndef BPFSTREAM_PERF
	bpfstream_discard(head);
#endif
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

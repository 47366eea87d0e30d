/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The lab's synthetic load (`bpfstream lab`): records triggered by the lab's own threads, so that
 * nothing else on the machine can change the counts. Mirrored in Rust by
 * experiments/src/lab/load.rs (layout tested there).
 *
 * Trigger: prctl(LAB_PRCTL_OPTION, count, key, seq, class) from the lab's process. The kernel
 * rejects the unknown option (EINVAL) after the sys_enter tracepoint has seen it; the BPF
 * program (filtered to the lab's tgid) emits `count` records in one go: a burst no consumer can
 * drain while it is being written.
 */
#ifndef BPFSTREAM_LAB_H
#define BPFSTREAM_LAB_H

#define LAB_PRCTL_OPTION 0x62706673	/* "bpfs": no prctl option has this number */
#define LAB_MAX_BURST 65536		/* records per trigger, at most */

enum lab_class {
	LAB_CLASS_BULK = 0,
	LAB_CLASS_CRITICAL = 1,
};

struct lab_event {
	__u64 ts_ns;		/* bpf_ktime_get_ns() when the record was written, CLOCK_MONOTONIC */
	__u64 seq;		/* the trigger's seq + index in its burst: unique per load thread */
	__u32 cpu;		/* CPU that wrote it */
	__u32 class;		/* enum lab_class */
	__u32 key;		/* aggregation key (e.g. a syscall number) */
	__u32 tid;		/* thread that triggered it */
	__u8 payload[32];	/* stands for a tracer's data: a comm, a few arguments */
};

#ifdef BPFSTREAM_H	/* BPF side: the trigger and the record, shared by the lab's programs */

const volatile __u32 targ_tgid = 0;	/* the lab's process */

/* One trigger, as bpf_loop() callbacks see it. */
struct lab_burst {
	void *ctx;
	__u64 seq;
	__u32 class;
	__u32 key;
	__u32 tid;
};

/*
 * Whether `ctx` is a trigger of the lab's process; if so, fills `b` and returns the count.
 * A syscalls/sys_enter_* record is `struct syscall_trace_enter` (common header, int nr, args),
 * not raw_syscalls' `trace_event_raw_sys_enter` (header, long id, args): the two agree only
 * where the common header is 8 bytes. PREEMPT_RT's (6.1) is 12, so there nr is at 12 and args
 * at 16, and the raw_syscalls layout reads past the record (attach fails with EACCES). CO-RE
 * relocates these fields to the running kernel's layout (`args` with a size here: aya rejects
 * an index into the kernel's `args[0]` on the program's side).
 */
struct syscall_trace_enter___lab {
	struct trace_entry ent;
	int nr;
	unsigned long args[6];
} __attribute__((preserve_access_index));

static __always_inline __u64 lab_trigger(struct syscall_trace_enter___lab *ctx, struct lab_burst *b)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u64 count;

	if ((__u32)(id >> 32) != targ_tgid || ctx->args[0] != LAB_PRCTL_OPTION)
		return 0;
	count = ctx->args[1];
	b->ctx = ctx;
	b->key = ctx->args[2];
	b->seq = ctx->args[3];
	b->class = ctx->args[4];
	b->tid = (__u32)id;
	return count > LAB_MAX_BURST ? LAB_MAX_BURST : count;
}

/* Fills a reserved record; the timestamp last, as close to the commit as it can be. */
static __always_inline void lab_fill(struct lab_event *e, __u64 seq, __u32 class, __u32 key, __u32 tid)
{
	e->seq = seq;
	e->cpu = bpf_get_smp_processor_id();
	e->class = class;
	e->key = key;
	e->tid = tid;
	__builtin_memset(e->payload, 0, sizeof(e->payload));
	e->ts_ns = bpf_ktime_get_ns();
}

#endif /* BPFSTREAM_H */

#endif

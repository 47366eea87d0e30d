/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The lab's synthetic load (`bpfstream lab`): records triggered by the lab's own threads, so that
 * nothing else on the machine can change the counts. Mirrored in Rust by cli/src/lab/load.rs
 * (layout tested there).
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

#endif

/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* The syscall tracer's records; mirrored in Rust by cli/src/tools/syscalls.rs and
 * cli/src/tools/syscall_summary.rs (layouts tested there against this object's BTF). */
#ifndef BPFSTREAM_SYSCALLS_H
#define BPFSTREAM_SYSCALLS_H

/* --syscall filter: one bit per syscall number (x86-64 numbers end at 469 in Linux 6.18). */
#define SYSCALLS_MASK_WORDS 8
#define SYSCALLS_MASK_BITS (SYSCALLS_MASK_WORDS * 64)

struct syscall_event {
	__u64 ts_ns;		/* bpf_ktime_get_ns() at sys_exit; the call began at ts_ns - duration_ns */
	__u64 duration_ns;	/* sys_enter to sys_exit */
	__s64 ret;		/* return value; -errno on failure */
	__s64 nr;		/* syscall number (x86-64) */
	__u32 pid;		/* tgid */
	__u32 tid;
	char comm[16];
	__u64 cgroup_id;	/* cgroup v2 id of the task */
};

/*
 * --summary: latencies in log-linear buckets (mirrored by cli/src/histogram.rs). Values below
 * SUB have a bucket each; from there every power of two [2^e, 2^(e+1)) is cut into SUB equal
 * buckets, so a bucket is at most 1/SUB of its lowest value wide, and its midpoint is within
 * 1/(2 SUB) = 1.6 % of any value in it. Values from 2^MAX_EXP ns (18 minutes) on share the last
 * bucket.
 *
 *   bucket:  0 1 ... 31 | 32 ... 63      | 64 ... 95      | ... | 1120 ... 1151
 *   values:  0 1 ... 31 | 32 ... 63 (1)  | 64 ... 127 (2) | ... | 2^39 ... (2^34 wide, and above)
 */
#define SYSCALL_HIST_SUB_BITS 5
#define SYSCALL_HIST_SUB (1 << SYSCALL_HIST_SUB_BITS)
#define SYSCALL_HIST_MAX_EXP 40
#define SYSCALL_HIST_BUCKETS (SYSCALL_HIST_SUB + (SYSCALL_HIST_MAX_EXP - SYSCALL_HIST_SUB_BITS) * SYSCALL_HIST_SUB)

/* Rows of the in-kernel summary table (one per syscall, or per process with --by-process). */
#define SYSCALL_STATS_ROWS 1024

/*
 * One row of the summary, per CPU (a BPF_MAP_TYPE_PERCPU_HASH value): only that CPU's exits
 * write it, so no atomics, and userspace sums the CPUs. Cumulative since attach: userspace
 * subtracts its previous reading for --interval, so nothing is ever reset under a writer.
 */
struct syscall_counts {
	__u64 count;
	__u64 errors;		/* returns in -4095..-1 */
	__u64 total_ns;
	__u64 max_ns;
};

struct syscall_stats {
	struct syscall_counts counts;
	char comm[16];		/* --by-process: the comm at the process's first traced syscall */
	__u64 buckets[SYSCALL_HIST_BUCKETS];
};

#endif

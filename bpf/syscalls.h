/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* The syscall tracer's record; mirrored in Rust by cli/src/tools/syscalls.rs (layout tested there). */
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

#endif

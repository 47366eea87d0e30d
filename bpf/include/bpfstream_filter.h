/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * bpfstream_filter.h: the task filters every tracer applies in the kernel, so unwanted events
 * are never produced. Userspace sets the globals at load time (cli/src/lifecycle.rs,
 * `task_filter_globals`); 0 or empty means no filter.
 */
#ifndef BPFSTREAM_FILTER_H
#define BPFSTREAM_FILTER_H

#include "bpfstream.h"

const volatile __u32 self_tgid = 0;	/* the tracer itself: never traced */
const volatile __u32 targ_pid = 0;	/* only this process (tgid) */
const volatile __u32 targ_tid = 0;	/* only this thread */
const volatile bool filter_comm = false;
const volatile char targ_comm[16] = {};	/* only tasks whose comm is exactly this */

/* The pid/tid filters: cheap, so callers test them before anything else. */
static __always_inline bool bpfstream_task_wanted(__u64 pid_tgid)
{
	__u32 pid = pid_tgid >> 32, tid = (__u32)pid_tgid;

	if (self_tgid && pid == self_tgid)
		return false;
	if (targ_pid && pid != targ_pid)
		return false;
	return !targ_tid || tid == targ_tid;
}

/* The comm filter, on the current task's comm (TASK_COMM_LEN bytes, NUL-terminated). */
static __always_inline bool bpfstream_comm_wanted(const char *comm)
{
	if (!filter_comm)
		return true;
#pragma unroll
	for (int i = 0; i < 16; i++) {
		if (comm[i] != targ_comm[i])
			return false;
		if (comm[i] == 0)
			return true;
	}
	return true;
}

#endif /* BPFSTREAM_FILTER_H */

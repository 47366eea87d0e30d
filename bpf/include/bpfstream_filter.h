/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * bpfstream_filter.h: the task filters every tracer applies in the kernel, so unwanted events
 * are never produced. Userspace sets the globals at load time (cli/src/lifecycle.rs,
 * `task_filter_globals`); 0, false or empty means no filter. A filter that is off is a branch
 * on a load-time constant, which the verifier removes: it costs nothing.
 */
#ifndef BPFSTREAM_FILTER_H
#define BPFSTREAM_FILTER_H

#include "bpfstream.h"

const volatile __u32 self_tgid = 0;	/* the tracer itself: never traced */
const volatile __u32 targ_pid = 0;	/* only this process (tgid) */
const volatile __u32 targ_tid = 0;	/* only this thread */
const volatile bool filter_uid = false;
const volatile __u32 targ_uid = 0;	/* only tasks of this real uid */
const volatile __u64 targ_cgroup = 0;	/* only tasks in this cgroup v2 (its id) or below it */
const volatile __u32 targ_cgroup_level = 0;	/* its depth: 0 is the root cgroup */
const volatile bool filter_comm = false;
const volatile bool comm_substring = false;	/* true: comm contains targ_comm (-n) */
const volatile __u32 targ_comm_len = 0;	/* strlen(targ_comm), 1..15 */
const volatile char targ_comm[16] = {};	/* false: comm is exactly this (--name) */

/*
 * The pid/tid/uid/cgroup filters, before anything else. pid and tid are cheap; uid and cgroup
 * cost a helper call each, only when asked for. The cgroup test takes the current task's
 * ancestor at the target's depth, so tasks in its child cgroups match too (as a cgroup's
 * processes include its children's in systemd's and the kernel's accounting).
 */
static __always_inline bool bpfstream_task_wanted(__u64 pid_tgid)
{
	__u32 pid = pid_tgid >> 32, tid = (__u32)pid_tgid;

	if (self_tgid && pid == self_tgid)
		return false;
	if (targ_pid && pid != targ_pid)
		return false;
	if (targ_tid && tid != targ_tid)
		return false;
	if (filter_uid && (__u32)bpf_get_current_uid_gid() != targ_uid)
		return false;
	return !targ_cgroup || bpf_get_current_ancestor_cgroup_id(targ_cgroup_level) == targ_cgroup;
}

/* Whether `comm` contains targ_comm at `at`. */
static __always_inline bool bpfstream_comm_at(const char *comm, __u32 at)
{
	for (__u32 i = 0; i < 15; i++) {
		if (i >= targ_comm_len)
			return true;
		if (at + i >= 15 || comm[(at + i) & 15] != targ_comm[i])
			return false;
	}
	return true;
}

/* The comm filter, on the current task's comm (TASK_COMM_LEN bytes, NUL-terminated). */
static __always_inline bool bpfstream_comm_wanted(const char *comm)
{
	if (!filter_comm)
		return true;
	if (comm_substring) {
		for (__u32 at = 0; at < 15; at++) {
			if (comm[at] == 0)
				return false;
			if (bpfstream_comm_at(comm, at))
				return true;
		}
		return false;
	}
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

// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* execsnoop, the template: one record per exec, from the sched_process_exec tracepoint, with
 * the time, the new program's pid, its parent's and its name. Built twice by build.rs: a ring
 * buffer (default) and a perf buffer (-DBPFSTREAM_PERF). */
#include "vmlinux.h"
#include "bpfstream.h"
#include <bpf/bpf_core_read.h>

struct exec_event {
	__u64 ts_ns;
	__u32 pid;
	__u32 ppid;
	char comm[16];
};
BPFSTREAM_EXPORT_STRUCT(exec_event);	/* keeps the struct in BTF, for the layout check */

/* Only the children of this process, if set (at load time). */
const volatile __u32 targ_ppid = 0;

SEC("tracepoint/sched/sched_process_exec")
int handle_exec(struct trace_event_raw_sched_process_exec *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 ppid = BPF_CORE_READ(task, real_parent, tgid);
	struct exec_event *e;

	if (targ_ppid && ppid != targ_ppid)
		return 0;
	e = bpfstream_reserve(struct exec_event);
	if (!e)
		return 0;	/* dropped, and counted */
	e->ts_ns = bpf_ktime_get_ns();
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->ppid = ppid;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpfstream_submit(ctx, e);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

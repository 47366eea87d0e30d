// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* bpfstream exec: one record per successful execve/execveat, with the whole filename. */
#include "bpfstream_filter.h"
#include <bpf/bpf_core_read.h>
#include "exec.h"

BPFSTREAM_EXPORT_STRUCT(exec_event);

SEC("tracepoint/sched/sched_process_exec")
int handle_exec(struct trace_event_raw_sched_process_exec *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct task_struct *task;
	struct exec_event *e;
	unsigned int fname_off;
	long n;

	if (!bpfstream_task_wanted(id))
		return 0;

	e = bpfstream_scratch();
	if (!e)
		return 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	if (!bpfstream_comm_wanted(e->comm))
		return 0;

	task = (struct task_struct *)bpf_get_current_task();
	e->ts_ns = bpf_ktime_get_ns();
	e->pid = id >> 32;
	e->ppid = BPF_CORE_READ(task, real_parent, tgid);
	e->uid = (__u32)bpf_get_current_uid_gid();

	/* __data_loc: low 16 bits are the offset of the string from the start of the record. */
	fname_off = ctx->__data_loc_filename & 0xFFFF;
	n = bpf_probe_read_kernel_str((void *)(e + 1), EXEC_FILENAME_MAX, (void *)ctx + fname_off);
	if (n < 1)
		n = 1;	/* unreadable: send an empty filename rather than nothing */
	if (n > EXEC_FILENAME_MAX)
		n = EXEC_FILENAME_MAX;
	e->filename_len = n - 1;
	bpfstream_output(ctx, e, sizeof(*e) + (n - 1));
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* A tool built outside the bpfstream workspace: one record per call of tool_trigger(seq) in the
 * traced process, with the time, the caller's pid and comm. */
#define BPFSTREAM_PREEMPTIBLE /* a uprobe program is preemptible */
#include "vmlinux.h"
#include "bpfstream.h"
#include <bpf/bpf_tracing.h>

struct tool_event {
	__u64 ts_ns;
	__u64 seq;
	__u32 pid;
	char comm[16];
};
BPFSTREAM_EXPORT_STRUCT(tool_event);

/* A second stream in this object: every tenth call, with its own counters. */
BPFSTREAM_STREAM(tenths);

/* Only this process. */
const volatile __u32 targ_tgid = 0;

/* Fills `e` for call `seq` of process `tgid`. */
static __always_inline void fill(struct tool_event *e, __u64 seq, __u32 tgid)
{
	e->ts_ns = bpf_ktime_get_ns();
	e->seq = seq;
	e->pid = tgid;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
}

SEC("uprobe")
int handle_trigger(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u64 seq = PT_REGS_PARM1(ctx);
	struct tool_event *e;

	if (tgid != targ_tgid)
		return 0;
	e = bpfstream_reserve(struct tool_event);
	if (e) {	/* NULL: dropped, and counted */
		fill(e, seq, tgid);
		bpfstream_submit(ctx, e);
	}
	if (seq % 10 == 0) {
		e = bpfstream_reserve_to(tenths, struct tool_event);
		if (e) {
			fill(e, seq, tgid);
			bpfstream_submit_to(tenths, ctx, e);
		}
	}
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

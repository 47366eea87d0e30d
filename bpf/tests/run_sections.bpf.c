// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * For `bpfstream run`'s tests: programs in every section run attaches without a target of its
 * own (raw_tp/, tp_btf/, tp/), each sending one record per getppid() of `target_pid`, and
 * programs it refuses (xdp, and kprobe/ on a kernel without kprobes); two ring buffers, so
 * that --map must choose.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#define NR_GETPPID 110

struct section_event {
	__u32 kind;	/* 1 raw_tp, 2 tp_btf, 3 tp */
	__u32 pid;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} first SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} second SEC(".maps");

const volatile __u32 target_pid = 0;

struct section_event *section_event_type __attribute__((unused));

static __always_inline int send(__u32 kind, long nr)
{
	struct section_event e = { .kind = kind, .pid = target_pid };

	if (nr != NR_GETPPID || bpf_get_current_pid_tgid() >> 32 != target_pid)
		return 0;
	bpf_ringbuf_output(&first, &e, sizeof(e), 0);
	return 0;
}

/* sys_enter(struct pt_regs *regs, long id), read as __u64 ctx[] (aya cannot relocate
 * struct bpf_raw_tracepoint_args.args[1]: an index past 0 into a flexible array). */
SEC("raw_tp/sys_enter")
int raw_enter(__u64 *ctx)
{
	return send(1, ctx[1]);
}

SEC("tp_btf/sys_enter")
int BPF_PROG(btf_enter, struct pt_regs *regs, long id)
{
	return send(2, id);
}

SEC("tp/syscalls/sys_enter_getppid")
int tp_enter(void *ctx)
{
	return send(3, NR_GETPPID);
}

SEC("xdp")
int net(struct xdp_md *ctx)
{
	return XDP_PASS;
}

SEC("kprobe/do_nanosleep")
int nanosleep(struct pt_regs *ctx)
{
	return send(4, NR_GETPPID);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

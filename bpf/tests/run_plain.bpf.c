// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * For `bpfstream run`'s tests: a program written without bpfstream.h, as libbpf's examples are:
 * its own ring buffer, bpf_ringbuf_output(), no drop counters. One record per getppid() of the
 * process `target_pid`; the record type is found with --type.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#define NR_GETPPID 110

struct plain_event {
	__u32 pid;
	__u32 nr;
	char comm[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} rb SEC(".maps");

const volatile __u32 target_pid = 0;

/* Keeps struct plain_event in the object's BTF (clang keeps only the types of globals). */
struct plain_event *plain_event_type __attribute__((unused));

/* sys_enter(struct pt_regs *regs, long id) */
SEC("raw_tp/sys_enter")
int plain(__u64 *ctx)
{
	struct plain_event e = {};

	if (ctx[1] != NR_GETPPID || bpf_get_current_pid_tgid() >> 32 != target_pid)
		return 0;
	e.pid = target_pid;
	e.nr = NR_GETPPID;
	bpf_get_current_comm(e.comm, sizeof(e.comm));
	bpf_ringbuf_output(&rb, &e, sizeof(e), 0);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

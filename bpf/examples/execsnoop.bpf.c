// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * execsnoop: the chapter's exec tracer (the pid and comm of every exec) written with bpfstream.h,
 * plus the executed file's name as a variable-length field: a record is exactly as long as the
 * name. No userspace code of its own: run it with
 *
 *   sudo bpfstream run bpf/obj/execsnoop.ring.bpf.o            (a table; --json for JSON lines)
 *   sudo bpfstream run bpf/obj/execsnoop.ring.bpf.o --set min_uid=1000
 *
 * which decodes the records from the object's BTF, counts every drop (bpfstream.h) and prints
 * the summary. It attaches to sched_process_exec as a BTF tracepoint (the chapter's kprobe on
 * __x64_sys_execve needs a kernel with kprobes): CAP_BPF + CAP_PERFMON are enough.
 */
#include "bpfstream.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#define FILENAME_MAX_LEN 4096

struct exec_record {
	__u64 ts_ns;		/* bpf_ktime_get_ns() */
	__u32 pid;
	__u32 uid;
	char comm[16];		/* the new program's comm */
	__u16 filename_len;	/* bytes of filename, without a NUL */
	char filename[] __bpfstream_len(filename_len);
};

/* Keeps struct exec_record in the object's BTF, where bpfstream run finds it. */
BPFSTREAM_EXPORT_STRUCT(exec_record);

/* Only execs by users from this uid up (--set min_uid=1000: people, not services). */
const volatile __u32 min_uid = 0;

/* sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm) */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(handle_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 uid = (__u32)bpf_get_current_uid_gid();
	struct exec_record *e;
	long n;

	if (uid < min_uid)
		return 0;
	e = bpfstream_scratch();	/* per-CPU memory: the record is built, then copied out */
	if (!e)
		return 0;
	e->ts_ns = bpf_ktime_get_ns();
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->uid = uid;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	n = bpf_probe_read_kernel_str(e->filename, FILENAME_MAX_LEN, BPF_CORE_READ(bprm, filename));
	e->filename_len = n > 0 ? n - 1 : 0;
	/* The name starts at its offset, not at sizeof(*e) (which has padding after it). */
	bpfstream_output(ctx, e, offsetof(struct exec_record, filename) + e->filename_len);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * bpfstream_syscall.h: one syscall's entry and exit from the raw tracepoints raw_syscalls
 * sys_enter and sys_exit, which need no tracefs and read no trace record whose layout varies
 * between kernels (PREEMPT_RT's common header is larger). They fire for every syscall, so a
 * tracer of a few syscalls tests the number first and returns.
 *
 *   SEC("raw_tp/sys_enter") prog(__u64 *ctx): ctx[0] = struct pt_regs *, ctx[1] = syscall nr
 *   SEC("raw_tp/sys_exit")  prog(__u64 *ctx): ctx[0] = struct pt_regs *, ctx[1] = return value
 *
 * (ctx is an array of u64 rather than vmlinux.h's bpf_raw_tracepoint_args, whose zero-length
 * array trips CO-RE relocation.) The arguments are in the user registers the kernel saved
 * (x86-64: di, si, dx, r10, r8, r9); the number is in orig_ax, also at exit.
 */
#ifndef BPFSTREAM_SYSCALL_H
#define BPFSTREAM_SYSCALL_H

#include "bpfstream.h"
#include <bpf/bpf_core_read.h>

/* arch/x86/include/asm/processor.h: a 32-bit (ia32) syscall, whose numbers are another table. */
#define BPFSTREAM_TS_COMPAT 0x0002

/*
 * The current task's saved user registers, as a pointer the verifier trusts: fields are read
 * with plain loads, not a bpf_probe_read_kernel() call each (ctx[0] is the same address, but
 * an untyped one). bpf_task_pt_regs() needs Linux 5.15.
 */
static __always_inline struct pt_regs *bpfstream_syscall_regs(void)
{
	return (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
}

/* At sys_exit: the number of the syscall returning. */
static __always_inline long bpfstream_syscall_nr_at_exit(void)
{
	return bpfstream_syscall_regs()->orig_ax;
}

/* Whether the current syscall uses x86-64 numbers (not a 32-bit process's int 0x80 table). */
static __always_inline bool bpfstream_syscall_native(void)
{
	return !(bpf_get_current_task_btf()->thread_info.status & BPFSTREAM_TS_COMPAT);
}

#endif /* BPFSTREAM_SYSCALL_H */

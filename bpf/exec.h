/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* The exec tracer's record; mirrored in Rust by cli/src/tools/exec.rs (layout tested there). */
#ifndef BPFSTREAM_EXEC_H
#define BPFSTREAM_EXEC_H

#define EXEC_FILENAME_MAX 4096	/* PATH_MAX, including the terminating NUL */
#define EXEC_ARGS_MAX 128	/* most arguments sent (--max-args lowers it) */
#define EXEC_ARGS_BYTES 16384	/* most argument bytes sent, NULs included */

/*
 * One exec, successful (ret 0, sent at sched_process_exec: the file actually executed, argv
 * from the new program's stack) or failed (ret -errno, sent at the syscall's exit: the name
 * and argv the caller passed). The record is exactly as long as what follows the header:
 *
 *   struct exec_event | filename[filename_len] | args[args_len]
 *
 * filename has no NUL; args is argv[0], argv[1], ... each followed by its NUL, except a last
 * argument cut at EXEC_ARGS_BYTES.
 */
struct exec_event {
	__u64 ts_ns;		/* bpf_ktime_get_ns(), CLOCK_MONOTONIC */
	__u64 cgroup_id;	/* cgroup v2 id of the task */
	__s32 ret;		/* 0, or -errno of a failed execve/execveat */
	__u32 pid;
	__u32 ppid;
	__u32 uid;
	__u32 argc;		/* arguments the program was given (may be more than are sent) */
	__u16 filename_len;	/* bytes of filename after this header */
	__u16 args_len;		/* bytes of args after the filename */
	char comm[16];
	char filename[] __bpfstream_len(filename_len);	/* then args[args_len] */
};

#endif

/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* The exec tracer's record; mirrored in Rust by cli/src/tools/exec.rs (layout tested there). */
#ifndef BPFSTREAM_EXEC_H
#define BPFSTREAM_EXEC_H

#define EXEC_FILENAME_MAX 4096	/* PATH_MAX, including the terminating NUL */

struct exec_event {
	__u64 ts_ns;		/* bpf_ktime_get_ns(), CLOCK_MONOTONIC */
	__u32 pid;
	__u32 ppid;
	__u32 uid;
	__u32 filename_len;	/* bytes of filename after this header, without a NUL */
	char comm[16];
	/* char filename[filename_len] follows: the record is exactly as long as the path */
};

#endif

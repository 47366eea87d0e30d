/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* The open tracer's record; mirrored in Rust by cli/src/tools/open.rs (layout tested there). */
#ifndef BPFSTREAM_OPEN_H
#define BPFSTREAM_OPEN_H

#define OPEN_FILENAME_MAX 4096	/* longest name reported whole; the kernel refuses longer ones */
/* Read one byte more than that plus the NUL, to tell a name of exactly 4096 bytes from a longer one. */
#define OPEN_READ_MAX (OPEN_FILENAME_MAX + 2)

struct open_event {
	__u64 ts_ns;		/* bpf_ktime_get_ns() at syscall exit */
	__s64 ret;		/* fd, or -errno */
	__u64 flags;		/* open flags (openat2: open_how.flags) */
	__u64 cgroup_id;	/* cgroup v2 id of the task */
	__u32 pid;		/* tgid */
	__u32 tid;
	__u32 uid;		/* real uid */
	__u32 nr;		/* syscall number: open, openat or openat2 */
	__u16 filename_len;	/* bytes of filename after this header, without a NUL */
	__u16 truncated;	/* 1: the name was longer than OPEN_FILENAME_MAX and is cut there */
	char comm[16];
	__u32 pad;		/* to the struct's 8-byte alignment; 0 */
	/* the record is exactly as long as the name */
	char filename[] __bpfstream_len(filename_len);
};

#endif

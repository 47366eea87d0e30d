// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * bpfstream exec: one record per successful execve/execveat, with the whole filename: the path
 * as passed (bprm->filename), made absolute against the caller's working directory when it was
 * relative, so that "./x" from /srv comes out as /srv/./x.
 */
#include "bpfstream_filter.h"
#include <bpf/bpf_core_read.h>
#include "exec.h"

BPFSTREAM_EXPORT_STRUCT(exec_event);

/* Directories deep a working directory may be before a relative name is sent as passed. */
#define EXEC_CWD_DEPTH 64
#define EXEC_NAME_MAX 255	/* NAME_MAX: longest path component */

/*
 * Where an absolute name is assembled: the working directory written backwards so that it ends
 * at data[EXEC_FILENAME_MAX], then '/', then the relative name.
 */
struct exec_path_buf {
	char data[2 * EXEC_FILENAME_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct exec_path_buf);
} exec_path_scratch SEC(".maps");

/* One climb of cwd_backwards(), carried between bpf_loop() steps. */
struct cwd_walk {
	struct dentry *dentry;
	struct vfsmount *vfsmnt;
	struct mount *mnt;
	char *buf;
	int off;	/* where the path written so far starts in buf; -1: failed */
	bool done;
};

/*
 * One step up: to the parent directory, writing "/name" in front of what is written, or at the
 * root of a mount to its mount point in the parent mount, as d_path() does. Returns 1 to stop.
 */
static long cwd_step(__u32 index, struct cwd_walk *w)
{
	/* Locals, not w->...: BPF_CORE_READ on w->field would relocate our own struct's fields. */
	struct dentry *dentry = w->dentry;
	struct vfsmount *vfsmnt = w->vfsmnt;
	struct mount *mnt = w->mnt;
	struct dentry *parent = BPF_CORE_READ(dentry, d_parent);
	struct dentry *mnt_root = BPF_CORE_READ(vfsmnt, mnt_root);
	const unsigned char *name;
	__u32 len;
	int off;

	if (dentry == mnt_root || dentry == parent) {
		struct mount *up = BPF_CORE_READ(mnt, mnt_parent);

		if (dentry != mnt_root || mnt == up) {
			w->done = true;	/* the root */
			return 1;
		}
		w->dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
		w->mnt = up;
		w->vfsmnt = &up->mnt;
		return 0;
	}
	len = BPF_CORE_READ(dentry, d_name.len);
	name = BPF_CORE_READ(dentry, d_name.name);
	off = w->off;
	if (len > EXEC_NAME_MAX || off < 0 || off > EXEC_FILENAME_MAX || len + 1 > (__u32)off) {
		w->off = -1;
		return 1;
	}
	off -= len + 1;
	w->buf[off & (EXEC_FILENAME_MAX - 1)] = '/';
	bpf_probe_read_kernel(w->buf + ((off + 1) & (EXEC_FILENAME_MAX - 1)), len, name);
	w->off = off;
	w->dentry = parent;
	return 0;
}

/*
 * Writes the path of `task`'s working directory into buf so that it ends at
 * buf[EXEC_FILENAME_MAX] (nothing for "/"). Returns where it starts, or -1 when it is deeper
 * than EXEC_CWD_DEPTH, does not fit, or bpf_loop() (Linux 5.17) is missing; the reference to
 * the callback needs Linux 5.13 to load at all. The path is the one seen from the initial mount
 * namespace's root (for a chrooted or containerised caller too).
 */
static __always_inline int cwd_backwards(char *buf, struct task_struct *task)
{
	struct cwd_walk w = {
		.dentry = BPF_CORE_READ(task, fs, pwd.dentry),
		.vfsmnt = BPF_CORE_READ(task, fs, pwd.mnt),
		.buf = buf,
		.off = EXEC_FILENAME_MAX,
	};

	if (!bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_loop))
		return -1;
	w.mnt = container_of(w.vfsmnt, struct mount, mnt);
	bpf_loop(EXEC_CWD_DEPTH, cwd_step, &w, 0);
	return w.done ? w.off : -1;
}

/*
 * Replaces the relative filename at the end of `e` with cwd + "/" + filename; leaves it as
 * passed when the working directory cannot be read or the result would pass PATH_MAX.
 */
static __always_inline void make_absolute(struct exec_event *e, struct task_struct *task, const void *filename)
{
	__u32 zero = 0;
	char *buf = bpf_map_lookup_elem(&exec_path_scratch, &zero);
	__u64 total;
	long rel;
	int off;

	if (!buf)
		return;
	off = cwd_backwards(buf, task);
	if (off < 0 || off > EXEC_FILENAME_MAX)
		return;
	buf[EXEC_FILENAME_MAX] = '/';
	rel = bpf_probe_read_kernel_str(buf + EXEC_FILENAME_MAX + 1, EXEC_FILENAME_MAX - 1, filename);
	if (rel < 1)
		return;
	total = (EXEC_FILENAME_MAX - off) + 1 + (rel - 1);
	if (total > EXEC_FILENAME_MAX - 1)
		return;
	bpf_probe_read_kernel((void *)(e + 1), total, buf + off);
	e->filename_len = total;
}

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
	if (e->filename_len > 0 && *(char *)(e + 1) != '/')
		make_absolute(e, task, (void *)ctx + fname_off);
	bpfstream_output(ctx, e, sizeof(*e) + e->filename_len);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

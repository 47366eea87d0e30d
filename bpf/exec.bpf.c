// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * bpfstream exec: one record per exec, with the whole filename (the path as passed, made
 * absolute against the caller's working directory when it was relative, so that "./x" from
 * /srv comes out as /srv/./x) and argv (up to EXEC_ARGS_MAX arguments, EXEC_ARGS_BYTES bytes).
 *
 *   success: raw_tp/sched_process_exec, after the point of no return (the syscall returns 0):
 *            bprm->filename, bprm->argc, and argv as copied onto the new program's stack
 *            (mm->arg_start..arg_end, one read). Execs without a syscall (the kernel's own
 *            usermode helpers) are seen too.
 *   failure: raw_tp/sys_enter keeps the execve/execveat arguments per thread (task storage);
 *            raw_tp/sys_exit, on an error, sends them with ret = -errno, reading the name and
 *            argv from the caller's memory, which a failed exec leaves in place.
 */
/* header + filename + EXEC_ARGS_BYTES of arguments; per-CPU map values stop at 32 KiB */
#define BPFSTREAM_SCRATCH_SIZE 32768
#include "bpfstream_filter.h"
#include "bpfstream_syscall.h"
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

/* Kernel-side filters beyond bpfstream_filter.h's, set at load time. */
const volatile __u32 max_args = EXEC_ARGS_MAX;	/* 1..EXEC_ARGS_MAX: a failed exec's arguments read */

#define NR_EXECVE 59
#define NR_EXECVEAT 322
#define AT_FDCWD -100

/* A failed exec's arguments are gathered here, then copied after the filename. */
struct exec_args_buf {
	char data[2 * EXEC_ARGS_BYTES];	/* twice: each read may be bounded by the whole size */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct exec_args_buf);
} exec_args_scratch SEC(".maps");

/* An execve/execveat in flight, per thread, from sys_enter to sys_exit. */
struct exec_start {
	__u64 filename;	/* user pointers, as passed */
	__u64 argv;
	__s32 dirfd;	/* AT_FDCWD for execve */
	__u32 active;	/* 0: no exec in flight (it returned, or began before we attached) */
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct exec_start);
} exec_starts SEC(".maps");

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

/* The fields every exec record has; false when the comm filter rejects the task. */
static __always_inline bool fill_header(struct exec_event *e, struct task_struct *task, __u64 id)
{
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	if (!bpfstream_comm_wanted(e->comm))
		return false;
	e->ts_ns = bpf_ktime_get_ns();
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->pid = id >> 32;
	e->ppid = BPF_CORE_READ(task, real_parent, tgid);
	e->uid = (__u32)bpf_get_current_uid_gid();
	return true;
}

/* Reads the NUL-terminated `filename` (kernel or user memory) after the header; false if unreadable. */
static __always_inline bool read_filename(struct exec_event *e, const void *filename, bool user)
{
	long n = user ? bpf_probe_read_user_str((void *)(e + 1), EXEC_FILENAME_MAX, filename)
		      : bpf_probe_read_kernel_str((void *)(e + 1), EXEC_FILENAME_MAX, filename);

	if (n < 1) {
		e->filename_len = 0;
		return false;
	}
	e->filename_len = n > EXEC_FILENAME_MAX ? EXEC_FILENAME_MAX - 1 : n - 1;
	return true;
}

/* Sends `e` with its filename and args_len bytes of arguments. */
static __always_inline void send(void *ctx, struct exec_event *e)
{
	__u64 len = sizeof(*e) + e->filename_len + e->args_len;

	/* Keep clang from folding bpfstream_output()'s bounds check into ours: the verifier needs it. */
	barrier_var(len);
	bpfstream_output(ctx, e, len);
}

/* sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm) */
SEC("raw_tp/sched_process_exec")
int handle_exec(__u64 *ctx)
{
	struct linux_binprm *bprm = (struct linux_binprm *)ctx[2];
	__u64 id = bpf_get_current_pid_tgid();
	struct task_struct *task;
	const char *filename;
	struct exec_event *e;
	__u64 start, end;
	__u32 len;

	if (!bpfstream_task_wanted(id))
		return 0;
	e = bpfstream_scratch();
	if (!e)
		return 0;
	task = (struct task_struct *)bpf_get_current_task();
	if (!fill_header(e, task, id))
		return 0;
	e->ret = 0;
	e->argc = BPF_CORE_READ(bprm, argc);
	filename = BPF_CORE_READ(bprm, filename);
	if (read_filename(e, filename, false) && e->filename_len > 0 && *(char *)(e + 1) != '/')
		make_absolute(e, task, filename);

	/* argv[0]\0argv[1]\0...: what the kernel copied onto the new stack, resident. */
	start = BPF_CORE_READ(task, mm, arg_start);
	end = BPF_CORE_READ(task, mm, arg_end);
	len = end > start ? end - start : 0;
	if (len > EXEC_ARGS_BYTES)
		len = EXEC_ARGS_BYTES;
	if (e->argc == 0 ||
	    bpf_probe_read_user((char *)(e + 1) + (e->filename_len & (EXEC_FILENAME_MAX - 1)), len, (void *)start))
		len = 0;
	e->args_len = len;
	send(ctx, e);
	return 0;
}

SEC("raw_tp/sys_enter")
int exec_enter(__u64 *ctx)
{
	long nr = ctx[1];
	struct exec_start *s;
	struct pt_regs *regs;

	if (nr != NR_EXECVE && nr != NR_EXECVEAT)
		return 0;
	if (!bpfstream_task_wanted(bpf_get_current_pid_tgid()) || !bpfstream_syscall_native())
		return 0;
	s = bpf_task_storage_get(&exec_starts, bpf_get_current_task_btf(), 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!s)
		return 0;
	regs = bpfstream_syscall_regs();
	if (nr == NR_EXECVE) {
		s->dirfd = AT_FDCWD;
		s->filename = regs->di;
		s->argv = regs->si;
	} else {
		s->dirfd = regs->di;
		s->filename = regs->si;
		s->argv = regs->dx;
	}
	s->active = 1;
	return 0;
}

/* One argument of a failed exec, carried between bpf_loop() steps. */
struct args_walk {
	const char *const *argv;
	char *buf;
	__u32 off;	/* bytes written to buf */
	__u32 count;	/* arguments read */
};

static long args_step(__u32 index, struct args_walk *w)
{
	const char *arg = NULL;
	__u32 off = w->off;
	long n;

	bpf_probe_read_user(&arg, sizeof(arg), &w->argv[index]);
	if (!arg)
		return 1;
	w->count = index + 1;
	if (index >= max_args || off >= EXEC_ARGS_BYTES)
		return 1;	/* one more than sent: counted, so the record says it was cut */
	n = bpf_probe_read_user_str(w->buf + (off & (EXEC_ARGS_BYTES - 1)), EXEC_ARGS_BYTES - off, arg);
	if (n < 0)
		return 1;
	if (n == 0) {
		/* An empty argument: older kernels (6.1) return 0 for it, not 1 for its NUL. */
		w->buf[off & (EXEC_ARGS_BYTES - 1)] = 0;
		n = 1;
	}
	w->off = off + n;
	return 0;
}

/* Reads a failed exec's argv after its filename (argc: those read, plus one if there were more). */
static __always_inline void read_argv(struct exec_event *e, const char *const *argv)
{
	__u32 zero = 0;
	struct args_walk w = { .argv = argv, .buf = bpf_map_lookup_elem(&exec_args_scratch, &zero) };

	e->argc = 0;
	e->args_len = 0;
	/* bpf_loop() is Linux 5.17; before, the call is left out at load and no argument is read. */
	if (!w.buf || !argv || !bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_loop))
		return;
	bpf_loop(EXEC_ARGS_MAX + 1, args_step, &w, 0);
	e->argc = w.count;
	if (w.off > EXEC_ARGS_BYTES)
		w.off = EXEC_ARGS_BYTES;
	if (!bpf_probe_read_kernel((char *)(e + 1) + (e->filename_len & (EXEC_FILENAME_MAX - 1)), w.off, w.buf))
		e->args_len = w.off;
}

SEC("raw_tp/sys_exit")
int exec_exit(__u64 *ctx)
{
	long nr = bpfstream_syscall_nr_at_exit();
	__u64 id = bpf_get_current_pid_tgid();
	struct task_struct *task;
	struct exec_start *s;
	struct exec_event *e;
	long ret = ctx[1];

	if (nr != NR_EXECVE && nr != NR_EXECVEAT)
		return 0;
	task = bpf_get_current_task_btf();
	s = bpf_task_storage_get(&exec_starts, task, 0, 0);
	if (!s || !s->active)
		return 0;
	if (ret >= 0 || !(e = bpfstream_scratch()) || !fill_header(e, task, id))
		goto out;
	e->ret = ret;
	if (read_filename(e, (const char *)s->filename, true) && e->filename_len > 0 &&
	    *(char *)(e + 1) != '/' && s->dirfd == AT_FDCWD)
		make_absolute(e, task, (void *)(e + 1));
	read_argv(e, (const char *const *)s->argv);
	send(ctx, e);
out:
	s->active = 0;
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

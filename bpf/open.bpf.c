// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * bpfstream open: one record per open/openat/openat2, with the filename exactly as passed (up to
 * 4096 bytes) in a record exactly as long as the name.
 *
 * Attached to raw_syscalls sys_enter/sys_exit as raw tracepoints (bpfstream_syscall.h): no
 * tracefs, no trace-record layout to match, and cheaper per open than the classic syscall
 * tracepoints; every other syscall costs one compare at entry and one read at exit.
 *
 * The name is read from user memory at entry, when it is what the caller passed, and kept with
 * the rest of the record in a per-thread map until the exit reports `ret`. If the name's page is
 * not resident at entry (a BPF program cannot fault it in), it is read again at exit, after the
 * kernel's own copy has faulted it in.
 */
#include "bpfstream_filter.h"
#include "bpfstream_syscall.h"
#include "bpfstream_untracked.h"
#include "open.h"

BPFSTREAM_EXPORT_STRUCT(open_event);

/* Kernel-side filters beyond bpfstream_filter.h's, set at load time. */
const volatile bool only_failed = false;
const volatile __u32 targ_errno = 0;	/* only opens failing with this errno */

#define NR_OPEN 2
#define NR_OPENAT 257
#define NR_OPENAT2 437

/* An open in flight: the record as it will be sent, plus where the name is if entry missed it. */
struct open_start {
	__u64 user_filename;
	__u32 read_at_exit;
	__u32 pad;
	union {
		struct open_event event;	/* its filename[] is the rest of record[] */
		char record[sizeof(struct open_event) + OPEN_READ_MAX];
	};
};

/*
 * Opens in flight, keyed by task_struct address (one per thread at most). Values are 4 KiB, so
 * the map is not preallocated: it costs memory only for opens actually in flight, which is a
 * handful (opens rarely block; a FIFO or a slow network file system can make them). 4096
 * entries bound the worst case to about 17 MB; beyond that an open is counted in `untracked`.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct open_start);
} opens SEC(".maps");

/* Reads the name into `s->event.filename` and sets its length; false if the page was not resident. */
static __always_inline bool read_filename(struct open_start *s, const char *user)
{
	long n = bpf_probe_read_user_str(s->event.filename, OPEN_READ_MAX, user);

	if (n < 1)
		return false;
	n -= 1;	/* without the NUL */
	s->event.truncated = n > OPEN_FILENAME_MAX;
	s->event.filename_len = n > OPEN_FILENAME_MAX ? OPEN_FILENAME_MAX : n;
	return true;
}

static __always_inline int open_begin(__u32 nr, const char *filename, __u64 flags)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 pid = id >> 32, tid = (__u32)id;
	struct open_start *s;
	__u64 key;

	s = bpfstream_scratch();
	if (!s)
		return 0;
	bpf_get_current_comm(s->event.comm, sizeof(s->event.comm));
	if (!bpfstream_comm_wanted(s->event.comm))
		return 0;
	s->event.pid = pid;
	s->event.tid = tid;
	s->event.uid = (__u32)bpf_get_current_uid_gid();
	s->event.cgroup_id = bpf_get_current_cgroup_id();
	s->event.nr = nr;
	s->event.pad = 0;
	s->event.flags = flags;
	s->event.ret = 0;
	s->user_filename = (__u64)filename;
	s->read_at_exit = !read_filename(s, filename);
	if (s->read_at_exit) {
		s->event.filename_len = 0;
		s->event.truncated = 0;
	}
	key = bpf_get_current_task();
	/* Could not be followed: `opens` is full. */
	if (bpf_map_update_elem(&opens, &key, s, BPF_ANY))
		bpfstream_count_untracked();
	return 0;
}

SEC("raw_tp/sys_enter")
int open_enter(__u64 *ctx)
{
	long nr = ctx[1];
	struct open_how how = {};
	struct pt_regs *regs;

	/* openat first: nearly every open is one. */
	if (nr != NR_OPENAT && nr != NR_OPEN && nr != NR_OPENAT2)
		return 0;
	if (!bpfstream_task_wanted(bpf_get_current_pid_tgid()) || !bpfstream_syscall_native())
		return 0;
	regs = bpfstream_syscall_regs();
	if (nr == NR_OPEN)
		return open_begin(nr, (const char *)regs->di, regs->si);
	if (nr == NR_OPENAT)
		return open_begin(nr, (const char *)regs->si, regs->dx);
	/* A bad `how` makes the syscall fail with EFAULT; report the open with flags 0. */
	bpf_probe_read_user(&how, sizeof(how), (void *)regs->dx);
	return open_begin(nr, (const char *)regs->si, how.flags);
}

SEC("raw_tp/sys_exit")
int open_exit(__u64 *ctx)
{
	long nr = bpfstream_syscall_nr_at_exit();
	long ret = ctx[1];
	struct open_start *s;
	__u64 key;
	__u32 len;

	/* Cheap checks first: without them every syscall on the machine pays a hash lookup. */
	if (nr != NR_OPENAT && nr != NR_OPEN && nr != NR_OPENAT2)
		return 0;
	if (!bpfstream_task_wanted(bpf_get_current_pid_tgid()))
		return 0;
	key = bpf_get_current_task();
	s = bpf_map_lookup_elem(&opens, &key);
	if (!s)
		return 0;
	if ((only_failed && ret >= 0) || (targ_errno && ret != -(long)targ_errno))
		goto out;
	if (s->read_at_exit && !read_filename(s, (const char *)s->user_filename)) {
		s->event.filename_len = 0;	/* unreadable even now: send the open without its name */
		s->event.truncated = 0;
	}
	s->event.ts_ns = bpf_ktime_get_ns();
	s->event.ret = ret;
	len = s->event.filename_len;
	if (len > OPEN_FILENAME_MAX)
		len = OPEN_FILENAME_MAX;
	bpfstream_output(ctx, &s->event, sizeof(s->event) + len);
out:
	bpf_map_delete_elem(&opens, &key);
	return 0;
}

/* A thread killed while blocked in open never reaches the exit tracepoint. */
SEC("raw_tp/sched_process_exit")
int open_reap(void *ctx)
{
	__u64 key = bpf_get_current_task();

	bpf_map_delete_elem(&opens, &key);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

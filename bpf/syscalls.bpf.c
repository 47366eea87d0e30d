// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * bpfstream syscalls: one record per completed syscall, with its latency.
 *
 * raw_syscalls sys_enter/sys_exit as raw tracepoints: the program gets the tracepoint's
 * arguments directly, without the classic tracepoint's copy into a trace record, and needs no
 * tracefs. (ctx is an array of u64 rather than vmlinux.h's bpf_raw_tracepoint_args, whose
 * zero-length array trips CO-RE relocation.) Every filter runs at sys_enter, so a filtered-out
 * syscall costs a few compares and never touches the start storage; --failed and --min-duration
 * need the outcome and run at sys_exit, still before anything is produced.
 *
 * --summary (summary_mode) sends nothing: sys_exit folds the call into its row of `stats`, a
 * per-CPU hash of count, errors, total, max and a latency histogram, so every call is counted
 * whatever the rate (no buffer to overflow) and userspace reads the rows when it prints.
 */
#include "bpfstream_filter.h"
#include "bpfstream_untracked.h"
#include "syscalls.h"

BPFSTREAM_EXPORT_STRUCT(syscall_event);
BPFSTREAM_EXPORT_STRUCT(syscall_stats);

/* Kernel-side filters beyond bpfstream_filter.h's, set at load time (0 / false: no filter). */
const volatile bool filter_syscalls = false;
const volatile __u64 syscall_mask[SYSCALLS_MASK_WORDS] = {};
const volatile bool only_failed = false;
const volatile __u64 min_duration_ns = 0;
const volatile __u32 targ_errno = 0;	/* only calls that returned -targ_errno */
const volatile bool summary_mode = false;
const volatile bool by_process = false;	/* summary rows per tgid instead of per syscall */

struct syscall_start {
	__u64 ts_ns;
	__s64 nr;
};

/*
 * The syscall in flight, per thread: task-local storage, found from the task in a few loads
 * (no hash, no lock), created on a thread's first traced syscall and freed by the kernel when
 * the thread dies or the map goes, so syscalls that never return (exit, exit_group, a thread
 * killed while blocked) leave nothing behind. It follows the task_struct, so a thread that execs
 * from a non-leader thread (and takes the leader's pid) keeps its entry. ts_ns == 0: none.
 */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct syscall_start);
} starts SEC(".maps");

/* The summary rows, keyed by syscall number (as u32) or tgid. Allocated as rows appear. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, SYSCALL_STATS_ROWS);
	__type(key, __u32);
	__type(value, struct syscall_stats);
} stats SEC(".maps");

/*
 * The calls of a row that could not be made yet: new rows come from an allocator that refills
 * its per-CPU cache asynchronously, so the first calls of a new row may find it empty. Their
 * count, errors, total and max go here (preallocated: inserting never allocates), so those stay
 * exact; only their latencies miss the histogram. Userspace adds them to the row.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, SYSCALL_STATS_ROWS);
	__type(key, __u32);
	__type(value, struct syscall_counts);
} stats_early SEC(".maps");

/* A zeroed row (but for comm) to insert from: too large for the stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct syscall_stats);
} stats_init SEC(".maps");

static __always_inline bool wanted_syscall(__s64 nr)
{
	__u64 bit = (__u64)nr;

	if (!filter_syscalls)
		return true;
	if (bit >= SYSCALLS_MASK_BITS)
		return false;
	return (syscall_mask[bit / 64] >> (bit % 64)) & 1;
}

/* floor(log2(v)) for v > 0, by halving (BPF has no count-leading-zeros). */
static __always_inline __u32 log2_u64(__u64 v)
{
	__u32 r = 0;

	if (v >> 32) { v >>= 32; r += 32; }
	if (v >> 16) { v >>= 16; r += 16; }
	if (v >> 8) { v >>= 8; r += 8; }
	if (v >> 4) { v >>= 4; r += 4; }
	if (v >> 2) { v >>= 2; r += 2; }
	return r + (__u32)(v >> 1);
}

/* The histogram bucket of a duration (syscalls.h; cli/src/histogram.rs `bucket_of`). */
static __always_inline __u32 hist_bucket(__u64 ns)
{
	__u32 exp;

	if (ns < SYSCALL_HIST_SUB)
		return (__u32)ns;
	exp = log2_u64(ns);
	if (exp >= SYSCALL_HIST_MAX_EXP)
		return SYSCALL_HIST_BUCKETS - 1;
	return (exp - SYSCALL_HIST_SUB_BITS) * SYSCALL_HIST_SUB + (__u32)(ns >> (exp - SYSCALL_HIST_SUB_BITS));
}

/* The current CPU's summary row for `key`, created on first use (NULL: the table is full). */
static __always_inline struct syscall_stats *stats_row(__u32 key)
{
	struct syscall_stats *row = bpf_map_lookup_elem(&stats, &key), *init;
	__u32 zero = 0;

	if (row)
		return row;
	init = bpf_map_lookup_elem(&stats_init, &zero);
	if (!init)
		return NULL;
	if (by_process)
		bpf_get_current_comm(init->comm, sizeof(init->comm));
	/* The new row's other CPUs start zeroed; BPF_NOEXIST: another CPU may have just made it. */
	bpf_map_update_elem(&stats, &key, init, BPF_NOEXIST);
	return bpf_map_lookup_elem(&stats, &key);
}

static __always_inline void add_call(struct syscall_counts *c, __s64 ret, __u64 duration)
{
	c->count++;
	c->errors += ret < 0 && ret >= -4095;
	c->total_ns += duration;
	if (duration > c->max_ns)
		c->max_ns = duration;
}

/* A call whose row could not be made: into its preallocated counts-only row. */
static __always_inline void add_unbucketed(__u32 key, __s64 ret, __u64 duration)
{
	struct syscall_counts *c = bpf_map_lookup_elem(&stats_early, &key), zero = {};

	if (!c) {
		bpf_map_update_elem(&stats_early, &key, &zero, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&stats_early, &key);
	}
	if (!c) {
		bpfstream_count_untracked();	/* more than SYSCALL_STATS_ROWS rows */
		return;
	}
	add_call(c, ret, duration);
}

/* --summary: one completed call into its row. Per-CPU row, non-nesting programs: no atomics. */
static __always_inline void count_call(__u32 pid, __s64 nr, __s64 ret, __u64 duration)
{
	__u32 key = by_process ? pid : (__u32)nr;
	struct syscall_stats *row = stats_row(key);
	__u64 bucket;

	if (!row) {
		add_unbucketed(key, ret, duration);
		return;
	}
	add_call(&row->counts, ret, duration);
	bucket = hist_bucket(duration);
	/* A 64-bit index tested in the register that indexes: 6.1's verifier lost the bound of a
	 * 32-bit copy made before the test. */
	bpfstream_opaque(bucket);
	if (bucket < SYSCALL_HIST_BUCKETS)
		row->buckets[bucket]++;
}

SEC("raw_tp/sys_enter")
int syscall_enter(__u64 *ctx)
{
	struct syscall_start *start;
	__s64 nr;

	if (!bpfstream_task_wanted(bpf_get_current_pid_tgid()))
		return 0;
	nr = (__s64)ctx[1];	/* sys_enter(struct pt_regs *regs, long id) */
	if (!wanted_syscall(nr))
		return 0;
	if (filter_comm) {
		char comm[16];

		bpf_get_current_comm(comm, sizeof(comm));
		if (!bpfstream_comm_wanted(comm))
			return 0;
	}
	start = bpf_task_storage_get(&starts, bpf_get_current_task_btf(), 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!start) {
		bpfstream_count_untracked();	/* cannot be timed: no memory for the thread's storage */
		return 0;
	}
	start->nr = nr;
	start->ts_ns = bpf_ktime_get_ns();
	return 0;
}

SEC("raw_tp/sys_exit")
int syscall_exit(__u64 *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 pid = id >> 32;
	struct syscall_start *start;
	struct syscall_event *e;
	__u64 now, duration;
	__s64 nr, ret;

	/* Cheap checks first: without them every syscall on the machine pays a storage lookup. */
	if (!bpfstream_task_wanted(id))
		return 0;
	start = bpf_task_storage_get(&starts, bpf_get_current_task_btf(), 0, 0);
	if (!start || !start->ts_ns)
		return 0;	/* not traced, or began before we attached */
	now = bpf_ktime_get_ns();
	duration = now - start->ts_ns;
	nr = start->nr;
	start->ts_ns = 0;

	ret = (__s64)ctx[1];	/* sys_exit(struct pt_regs *regs, long ret) */
	if (only_failed && !(ret < 0 && ret >= -4095))
		return 0;
	if (targ_errno && ret != -(__s64)targ_errno)
		return 0;
	if (duration < min_duration_ns)
		return 0;
	if (summary_mode) {
		count_call(pid, nr, ret, duration);
		return 0;
	}

	e = bpfstream_reserve(struct syscall_event);
	if (!e)
		return 0;
	e->ts_ns = now;
	e->duration_ns = duration;
	e->ret = ret;
	e->nr = nr;
	e->pid = pid;
	e->tid = (__u32)id;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->cgroup_id = bpf_get_current_cgroup_id();
	bpfstream_submit(ctx, e);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

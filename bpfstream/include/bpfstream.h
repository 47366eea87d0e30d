/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * bpfstream.h: the one transport layer every bpfstream BPF program sends through.
 *
 * Every program is compiled twice from the same source:
 *   - ring variant (default):    the events map is a BPF_MAP_TYPE_RINGBUF (kernel >= 5.8);
 *   - perf variant (-DBPFSTREAM_PERF): it is a BPF_MAP_TYPE_PERF_EVENT_ARRAY (kernel >= 4.4),
 * so userspace picks the transport at start-up by loading one object or the other.
 *
 * Sending, identical in both variants:
 *   struct ev *e = bpfstream_reserve(struct ev);  (NULL: dropped and counted, just return)
 *   ... fill e ...
 *   bpfstream_submit(ctx, e);                      (or bpfstream_discard(e) to send nothing)
 * and, for records whose length is only known at run time (a path, a buffer):
 *   void *buf = bpfstream_scratch();               (per-CPU, BPFSTREAM_SCRATCH_SIZE bytes)
 *   ... fill len bytes ...
 *   bpfstream_output(ctx, buf, len);               (the record is exactly len bytes long)
 *
 * Accounting (userspace relies on it): every attempt counts `produced` and every failure counts
 * `dropped` in the per-CPU `bpfstream_stats` map. bpf_ringbuf_reserve() returning NULL is
 * otherwise invisible to userspace; with these counters it is reported like a perf LOST record,
 * and delivered + dropped == produced holds for every stream. `produced` is counted before a
 * record can reach the consumer (before the commit or the output), `dropped` after the failure,
 * in both transports: a reader never sees delivered + dropped > produced. The counters are
 * added atomically, so they stay exact when programs interleave on a CPU (uprobes and other
 * preemptible program types run with only migration disabled).
 *
 * Preemptible programs (uprobes, sleepable programs): define BPFSTREAM_PREEMPTIBLE before
 * including this header. bpfstream_scratch() (and, in the perf variant, bpfstream_reserve())
 * then takes a per-CPU guard: while one program builds a record in the CPU's scratch memory,
 * another that asks for it on the same CPU gets NULL, counted produced and dropped. The guard is
 * released by bpfstream_output() (which must then send the scratch memory), by
 * bpfstream_discard(), or by bpfstream_scratch_release() on a path that sends nothing. (The
 * guard's compare-and-swap needs Linux 5.12.)
 *
 * Wakeup policy (ring variant; the perf variant's policy lives in perf_event_attr and is set by
 * userspace): read-only globals set at load time.
 */
#ifndef BPFSTREAM_H
#define BPFSTREAM_H

/* Bring your own vmlinux.h (bpftool btf dump file /sys/kernel/btf/vmlinux format c): include
 * it before this header, or have one named vmlinux.h on the include path. */
#ifndef __VMLINUX_H__
#include "vmlinux.h"
#endif
#include <bpf/bpf_helpers.h>

/* Name of the events map (what userspace opens by name). Define it before including this
 * header to choose another name; the default is `events`. */
#ifndef BPFSTREAM_EVENTS
#define BPFSTREAM_EVENTS events
#endif

#ifndef BPFSTREAM_SCRATCH_SIZE
/* Largest record a program can build in scratch memory (power of two, bounds the verifier). */
#define BPFSTREAM_SCRATCH_SIZE 8192
#endif

/* Mirrored in Rust as bpfstream::accounting::WakeupPolicy (its numbers are checked against this
 * enum in the compiled objects' BTF). */
enum bpfstream_wakeup {
	BPFSTREAM_WAKE_ADAPTIVE = 0,	/* kernel default: wake when the consumer had caught up */
	BPFSTREAM_WAKE_EVERY = 1,	/* BPF_RB_FORCE_WAKEUP on every record */
	BPFSTREAM_WAKE_NEVER = 2,	/* BPF_RB_NO_WAKEUP: userspace polls on its own timer */
	BPFSTREAM_WAKE_COUNT = 3,	/* force a wakeup every `bpfstream_wakeup_arg` records per CPU */
	BPFSTREAM_WAKE_BYTES = 4,	/* force a wakeup once `bpfstream_wakeup_arg` bytes wait
					   (at most once per that many bytes a CPU writes) */
};

/* An enum-typed global keeps the enum in the object's BTF, where userspace checks its numbers. */
const volatile enum bpfstream_wakeup bpfstream_wakeup_policy = BPFSTREAM_WAKE_ADAPTIVE;
const volatile __u64 bpfstream_wakeup_arg = 0;

/* Mirrored in Rust as bpfstream::accounting::Counters (size and offsets are tested). */
struct bpfstream_counters {
	__u64 produced;		/* records this CPU tried to send */
	__u64 dropped;		/* of those, records that could not be written */
	__u64 since_wakeup;	/* records (WAKE_COUNT) or bytes (WAKE_BYTES) since the last forced wakeup */
	__u64 forced_wakeups;	/* submits that carried BPF_RB_FORCE_WAKEUP */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bpfstream_counters);
} bpfstream_stats SEC(".maps");

struct bpfstream_scratch_buf {
	__u8 data[BPFSTREAM_SCRATCH_SIZE];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bpfstream_scratch_buf);
} bpfstream_scratch_map SEC(".maps");

#ifdef BPFSTREAM_PERF
struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} BPFSTREAM_EVENTS SEC(".maps");
#else
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);	/* userspace sets the real size at load */
} BPFSTREAM_EVENTS SEC(".maps");
#endif

static __always_inline struct bpfstream_counters *bpfstream_counters(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&bpfstream_stats, &zero);
}

/* A record is about to be sent: counted before the consumer can see it. */
static __always_inline void bpfstream_count_produced(void)
{
	struct bpfstream_counters *c = bpfstream_counters();

	if (c)
		__sync_fetch_and_add(&c->produced, 1);
}

/* A record counted produced could not be written. */
static __always_inline void bpfstream_count_dropped(void)
{
	struct bpfstream_counters *c = bpfstream_counters();

	if (c)
		__sync_fetch_and_add(&c->dropped, 1);
}

#ifdef BPFSTREAM_PREEMPTIBLE
/* 1 while a program on this CPU builds a record in bpfstream_scratch_map. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} bpfstream_scratch_guard SEC(".maps");
#endif

/* Gives the CPU's scratch memory back (BPFSTREAM_PREEMPTIBLE; nothing otherwise). */
static __always_inline void bpfstream_scratch_release(void)
{
#ifdef BPFSTREAM_PREEMPTIBLE
	__u32 zero = 0;
	__u64 *busy = bpf_map_lookup_elem(&bpfstream_scratch_guard, &zero);

	if (busy)
		__sync_lock_test_and_set(busy, 0);
#endif
}

/*
 * Per-CPU scratch memory, ours until the record is sent. Tracing programs that run with
 * preemption disabled do not nest on a CPU; preemptible ones take the guard (see the top).
 */
static __always_inline void *bpfstream_scratch(void)
{
	__u32 zero = 0;
	void *scratch;

#ifdef BPFSTREAM_PREEMPTIBLE
	__u64 *busy = bpf_map_lookup_elem(&bpfstream_scratch_guard, &zero);

	if (!busy || __sync_val_compare_and_swap(busy, 0, 1) != 0) {
		/* Another program is building a record here: this attempt is dropped. */
		bpfstream_count_produced();
		bpfstream_count_dropped();
		return NULL;
	}
#endif
	scratch = bpf_map_lookup_elem(&bpfstream_scratch_map, &zero);
	if (!scratch)
		bpfstream_scratch_release();
	return scratch;
}

/*
 * Makes `v` opaque to clang at this point (no instruction is emitted). bpfstream_output tests a
 * length's two bounds on either side of it, so clang cannot fold `len > 0 && len <= MAX` into one
 * test of `len - 1`, whose bound verifiers before Linux 6.10 do not carry back to `len` (the
 * send was rejected on 6.1).
 */
#define bpfstream_opaque(v) asm volatile("" : "+r"(v))

#ifndef BPFSTREAM_PERF
/* Wakeup flags for the record of `size` payload bytes being committed, per the load-time policy. */
static __always_inline __u64 bpfstream_wakeup_flags(__u64 size)
{
	struct bpfstream_counters *c;
	__u64 flags = BPF_RB_NO_WAKEUP;

	switch (bpfstream_wakeup_policy) {
	case BPFSTREAM_WAKE_EVERY:
		flags = BPF_RB_FORCE_WAKEUP;
		break;
	case BPFSTREAM_WAKE_NEVER:
		break;
	case BPFSTREAM_WAKE_COUNT:
		c = bpfstream_counters();
		/* since_wakeup only paces wakeups: an interleaving that loses an increment moves
		 * one wakeup by a record. Plain adds keep this path free of fetching atomics. */
		if (c && ++c->since_wakeup >= bpfstream_wakeup_arg) {
			c->since_wakeup = 0;
			flags = BPF_RB_FORCE_WAKEUP;
		}
		break;
	case BPFSTREAM_WAKE_BYTES:
		/*
		 * Wake once the threshold waits (the query includes this record: its space is
		 * reserved), but not again for every record committed while the consumer is still
		 * waking up: each forced wakeup costs this producer an irq_work (a self-IPI) and the
		 * reader's CPU an IPI. So at most one per `arg` bytes this CPU writes; with several
		 * producing CPUs up to CPUs x `arg` bytes may wait, and the reader's poll timeout
		 * bounds the delay either way.
		 */
		c = bpfstream_counters();
		if (!c)
			break;
		c->since_wakeup += size + 8;	/* + BPF_RINGBUF_HDR_SZ */
		if (c->since_wakeup >= bpfstream_wakeup_arg &&
		    bpf_ringbuf_query(&BPFSTREAM_EVENTS, BPF_RB_AVAIL_DATA) >= bpfstream_wakeup_arg) {
			c->since_wakeup = 0;
			flags = BPF_RB_FORCE_WAKEUP;
		}
		break;
	default:
		flags = 0;
	}
	if (flags == BPF_RB_FORCE_WAKEUP) {
		c = bpfstream_counters();
		if (c)
			__sync_fetch_and_add(&c->forced_wakeups, 1);
	}
	return flags;
}

/*
 * Reserve a fixed-size record in the ring; NULL means dropped (already counted). A reserved
 * record is counted as produced when it is submitted; a discarded one was never produced.
 */
#define bpfstream_reserve(type) ((type *)bpfstream_reserved(bpf_ringbuf_reserve(&BPFSTREAM_EVENTS, sizeof(type), 0)))

static __always_inline void *bpfstream_reserved(void *rec)
{
	if (!rec) {
		bpfstream_count_produced();
		bpfstream_count_dropped();
	}
	return rec;
}

static __always_inline void bpfstream_submit_rec(void *rec, __u64 size)
{
	bpfstream_count_produced();
	bpf_ringbuf_submit(rec, bpfstream_wakeup_flags(size));
}

/*
 * Wakeup flags for a discard. A discarded record delivers nothing, but the consumer may be
 * waiting right at it, with records committed behind it that woke nobody (their commit wakes
 * only a consumer waiting at them). With the adaptive and every-record policies the discard
 * therefore passes flags 0: the kernel wakes the consumer exactly when it waits at this record.
 * The batching policies (count, bytes, never) leave what waits behind it to their next forced
 * wakeup or the reader's timeout, as for any record.
 */
static __always_inline __u64 bpfstream_discard_flags(void)
{
	switch (bpfstream_wakeup_policy) {
	case BPFSTREAM_WAKE_COUNT:
	case BPFSTREAM_WAKE_BYTES:
	case BPFSTREAM_WAKE_NEVER:
		return BPF_RB_NO_WAKEUP;
	default:
		return 0;
	}
}

#define bpfstream_submit(ctx, rec) bpfstream_submit_rec((rec), sizeof(*(rec)))
#define bpfstream_discard(rec) bpf_ringbuf_discard((rec), bpfstream_discard_flags())

/* Send `len` bytes (1..BPFSTREAM_SCRATCH_SIZE) of `data` as one record of exactly that length. */
static __always_inline long bpfstream_output(void *ctx, void *data, __u64 len)
{
	long err = -22; /* -EINVAL */

	bpfstream_count_produced();
	if (len != 0) {
		bpfstream_opaque(len);
		if (len <= BPFSTREAM_SCRATCH_SIZE)
			err = bpf_ringbuf_output(&BPFSTREAM_EVENTS, data, len, bpfstream_wakeup_flags(len));
	}
	bpfstream_scratch_release();
	if (err)
		bpfstream_count_dropped();
	return err;
}

#else /* BPFSTREAM_PERF */

/*
 * perf has no reservation: the record is built in per-CPU scratch memory and copied out by
 * bpf_perf_event_output() at submit time. A failed output is counted here and also shows up as
 * a PERF_RECORD_LOST in that CPU's buffer.
 */
#define bpfstream_reserve(type) ((type *)bpfstream_scratch())
#define bpfstream_submit(ctx, rec) bpfstream_output((ctx), (rec), sizeof(*(rec)))
#define bpfstream_discard(rec) bpfstream_scratch_release()

static __always_inline long bpfstream_output(void *ctx, void *data, __u64 len)
{
	long err = -22; /* -EINVAL */

	bpfstream_count_produced();
	if (len != 0) {
		bpfstream_opaque(len);
		if (len <= BPFSTREAM_SCRATCH_SIZE)
			err = bpf_perf_event_output(ctx, &BPFSTREAM_EVENTS, BPF_F_CURRENT_CPU, data, len);
	}
	bpfstream_scratch_release();
	if (err)
		bpfstream_count_dropped();
	return err;
}
#endif /* BPFSTREAM_PERF */

/*
 * Keeps `struct name` in the object's BTF (clang emits BTF only for the types of globals and
 * function signatures), so userspace can check its #[repr(C)] mirror against what clang laid
 * out (bpfstream::btf). A read-only global that is never read: it costs nothing at run time.
 */
#define BPFSTREAM_EXPORT_STRUCT(name) const volatile struct name bpfstream_btf_##name = {}

#endif /* BPFSTREAM_H */

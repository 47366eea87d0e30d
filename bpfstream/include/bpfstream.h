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
 * userspace): read-only globals set at load time, one policy for every stream of the object.
 *
 * Several streams in one object: the default stream is the `events` map (BPFSTREAM_EVENTS) with
 * its counters in `bpfstream_stats`. BPFSTREAM_STREAM(name) declares another: a map `name` of
 * the same transport and its own counters `name_stats`, so each stream keeps
 * delivered + dropped == produced by itself. Send to it with the `_to` forms:
 *   struct ev *e = bpfstream_reserve_to(name, struct ev);   bpfstream_submit_to(name, ctx, e);
 *   void *buf = bpfstream_scratch_to(name);   bpfstream_output_to(name, ctx, buf, len);
 * (bpfstream_discard is the same for every stream.) Userspace opens it by its map name.
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

/* A stream's per-CPU counters map. */
#define BPFSTREAM_COUNTERS_MAP(name)					\
	struct {							\
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);		\
		__uint(max_entries, 1);					\
		__type(key, __u32);					\
		__type(value, struct bpfstream_counters);		\
	} name SEC(".maps")

BPFSTREAM_COUNTERS_MAP(bpfstream_stats);

struct bpfstream_scratch_buf {
	__u8 data[BPFSTREAM_SCRATCH_SIZE];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bpfstream_scratch_buf);
} bpfstream_scratch_map SEC(".maps");

/* A stream's events map, of the transport this object is compiled for. */
#ifdef BPFSTREAM_PERF
#define BPFSTREAM_EVENTS_MAP(name)					\
	struct {							\
		__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);		\
		__uint(key_size, sizeof(__u32));			\
		__uint(value_size, sizeof(__u32));			\
	} name SEC(".maps")
#else
#define BPFSTREAM_EVENTS_MAP(name)					\
	struct {							\
		__uint(type, BPF_MAP_TYPE_RINGBUF);			\
		__uint(max_entries, 256 * 1024); /* userspace sets the real size at load */ \
	} name SEC(".maps")
#endif

BPFSTREAM_EVENTS_MAP(BPFSTREAM_EVENTS);

/* Another stream in this object: the map `name` and its counters `name_stats` (see the top). */
#define BPFSTREAM_STREAM(name)						\
	BPFSTREAM_EVENTS_MAP(name);					\
	BPFSTREAM_COUNTERS_MAP(name##_stats)

static __always_inline struct bpfstream_counters *bpfstream_counters_in(void *stats)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(stats, &zero);
}

/* The default stream's counters on this CPU. */
static __always_inline struct bpfstream_counters *bpfstream_counters(void)
{
	return bpfstream_counters_in(&bpfstream_stats);
}

/* A record is about to be sent: counted before the consumer can see it. */
static __always_inline void bpfstream_count_produced(void *stats)
{
	struct bpfstream_counters *c = bpfstream_counters_in(stats);

	if (c)
		__sync_fetch_and_add(&c->produced, 1);
}

/* A record counted produced could not be written. */
static __always_inline void bpfstream_count_dropped(void *stats)
{
	struct bpfstream_counters *c = bpfstream_counters_in(stats);

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
static __always_inline void *bpfstream_scratch_for(void *stats)
{
	__u32 zero = 0;
	void *scratch;

#ifdef BPFSTREAM_PREEMPTIBLE
	__u64 *busy = bpf_map_lookup_elem(&bpfstream_scratch_guard, &zero);

	if (!busy || __sync_val_compare_and_swap(busy, 0, 1) != 0) {
		/* Another program is building a record here: this attempt is dropped. */
		bpfstream_count_produced(stats);
		bpfstream_count_dropped(stats);
		return NULL;
	}
#endif
	scratch = bpf_map_lookup_elem(&bpfstream_scratch_map, &zero);
	if (!scratch)
		bpfstream_scratch_release();
	return scratch;
}

#define bpfstream_scratch() bpfstream_scratch_for(&bpfstream_stats)
#define bpfstream_scratch_to(name) bpfstream_scratch_for(&name##_stats)

/*
 * Makes `v` opaque to clang at this point (no instruction is emitted). bpfstream_output tests a
 * length's two bounds on either side of it, so clang cannot fold `len > 0 && len <= MAX` into one
 * test of `len - 1`, whose bound verifiers before Linux 6.10 do not carry back to `len` (the
 * send was rejected on 6.1).
 */
#define bpfstream_opaque(v) asm volatile("" : "+r"(v))

#ifndef BPFSTREAM_PERF
/* Wakeup flags for the record of `size` payload bytes being committed to `events`, per the
 * load-time policy. */
static __always_inline __u64 bpfstream_wakeup_flags_in(void *events, void *stats, __u64 size)
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
		c = bpfstream_counters_in(stats);
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
		c = bpfstream_counters_in(stats);
		if (!c)
			break;
		c->since_wakeup += size + 8;	/* + BPF_RINGBUF_HDR_SZ */
		if (c->since_wakeup >= bpfstream_wakeup_arg &&
		    bpf_ringbuf_query(events, BPF_RB_AVAIL_DATA) >= bpfstream_wakeup_arg) {
			c->since_wakeup = 0;
			flags = BPF_RB_FORCE_WAKEUP;
		}
		break;
	default:
		flags = 0;
	}
	if (flags == BPF_RB_FORCE_WAKEUP) {
		c = bpfstream_counters_in(stats);
		if (c)
			__sync_fetch_and_add(&c->forced_wakeups, 1);
	}
	return flags;
}

/* The default stream's wakeup flags. */
#define bpfstream_wakeup_flags(size) bpfstream_wakeup_flags_in(&BPFSTREAM_EVENTS, &bpfstream_stats, (size))

/*
 * Reserve a fixed-size record in the ring; NULL means dropped (already counted). A reserved
 * record is counted as produced when it is submitted; a discarded one was never produced.
 */
#define bpfstream_reserve_in(events, stats, type)					\
	((type *)bpfstream_reserved(bpf_ringbuf_reserve(&events, sizeof(type), 0), &stats))

static __always_inline void *bpfstream_reserved(void *rec, void *stats)
{
	if (!rec) {
		bpfstream_count_produced(stats);
		bpfstream_count_dropped(stats);
	}
	return rec;
}

static __always_inline void bpfstream_submit_rec(void *events, void *stats, void *rec, __u64 size)
{
	bpfstream_count_produced(stats);
	bpf_ringbuf_submit(rec, bpfstream_wakeup_flags_in(events, stats, size));
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

#define bpfstream_submit_in(events, stats, ctx, rec) bpfstream_submit_rec(&events, &stats, (rec), sizeof(*(rec)))
#define bpfstream_discard(rec) bpf_ringbuf_discard((rec), bpfstream_discard_flags())

/* Copies `len` bytes of `data` into the ring as one record, with the policy's wakeup flags. */
static __always_inline long bpfstream_send(void *events, void *stats, void *ctx, void *data, __u64 len)
{
	return bpf_ringbuf_output(events, data, len, bpfstream_wakeup_flags_in(events, stats, len));
}

#else /* BPFSTREAM_PERF */

/*
 * perf has no reservation: the record is built in per-CPU scratch memory and copied out by
 * bpf_perf_event_output() at submit time. A failed output is counted here and also shows up as
 * a PERF_RECORD_LOST in that CPU's buffer.
 */
#define bpfstream_reserve_in(events, stats, type) ((type *)bpfstream_scratch_for(&stats))
#define bpfstream_submit_in(events, stats, ctx, rec)					\
	bpfstream_output_in(&events, &stats, (ctx), (rec), sizeof(*(rec)))
#define bpfstream_discard(rec) bpfstream_scratch_release()

/* Copies `len` bytes of `data` into this CPU's perf buffer as one sample. */
static __always_inline long bpfstream_send(void *events, void *stats, void *ctx, void *data, __u64 len)
{
	return bpf_perf_event_output(ctx, events, BPF_F_CURRENT_CPU, data, len);
}
#endif /* BPFSTREAM_PERF */

/* Send `len` bytes (1..BPFSTREAM_SCRATCH_SIZE) of `data` as one record of exactly that length. */
static __always_inline long bpfstream_output_in(void *events, void *stats, void *ctx, void *data, __u64 len)
{
	long err = -22; /* -EINVAL */

	bpfstream_count_produced(stats);
	if (len != 0) {
		bpfstream_opaque(len);
		if (len <= BPFSTREAM_SCRATCH_SIZE)
			err = bpfstream_send(events, stats, ctx, data, len);
	}
	bpfstream_scratch_release();
	if (err)
		bpfstream_count_dropped(stats);
	return err;
}

/* The default stream (`events`, counters in `bpfstream_stats`). */
#define bpfstream_reserve(type) bpfstream_reserve_in(BPFSTREAM_EVENTS, bpfstream_stats, type)
#define bpfstream_submit(ctx, rec) bpfstream_submit_in(BPFSTREAM_EVENTS, bpfstream_stats, ctx, rec)
#define bpfstream_output(ctx, data, len)						\
	bpfstream_output_in(&BPFSTREAM_EVENTS, &bpfstream_stats, (ctx), (data), (len))

/* A stream declared with BPFSTREAM_STREAM(name). */
#define bpfstream_reserve_to(name, type) bpfstream_reserve_in(name, name##_stats, type)
#define bpfstream_submit_to(name, ctx, rec) bpfstream_submit_in(name, name##_stats, ctx, rec)
#define bpfstream_output_to(name, ctx, data, len) bpfstream_output_in(&name, &name##_stats, (ctx), (data), (len))

/*
 * Names the field that holds the length (in elements) of a struct's trailing flexible array
 * member, for decoders that read the record from BTF (`bpfstream run`):
 *
 *   struct ev { __u16 name_len; char name[] __bpfstream_len(name_len); };
 *
 * The array starts at its offset in the struct, as C lays it out (offsetof(struct ev, name),
 * which may be less than sizeof(struct ev)): send offsetof(struct ev, name) + name_len bytes.
 * A BTF declaration tag (clang 14+; nothing with older compilers, where the array is read to the
 * end of the record).
 */
#ifdef __has_attribute
#if __has_attribute(btf_decl_tag)
#define __bpfstream_len(field) __attribute__((btf_decl_tag("bpfstream_len:" #field)))
#endif
#endif
#ifndef __bpfstream_len
#define __bpfstream_len(field)
#endif

/*
 * Keeps `struct name` in the object's BTF (clang emits BTF only for the types of globals and
 * function signatures), so userspace can check its #[repr(C)] mirror against what clang laid
 * out (bpfstream::btf). A read-only global that is never read: it costs nothing at run time.
 */
#define BPFSTREAM_EXPORT_STRUCT(name) const volatile struct name bpfstream_btf_##name = {}

#endif /* BPFSTREAM_H */

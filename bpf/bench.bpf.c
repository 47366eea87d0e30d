// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * bpfstream bench: the producer of the kernel's selftests/bpf/benchs/bench_ringbufs.c
 * (progs/ringbuf_bench.c, perfbuf_bench.c) on a tracepoint, since fentry is not available here.
 * Each getpgid() of the benchmark's producer thread writes BENCH_BATCH 8-byte records.
 *
 * It sends through bpfstream.h's maps (`events`, `bpfstream_stats`) and wakeup policy, but counts
 * once per batch instead of once per record: the counters stay exact (produced = consumed +
 * dropped), and the producer stays as lean as the kernel bench's, so the consumers, not the
 * accounting, set the pace. (Per-record counting costs a map lookup per record; on perf buffers
 * here it halved the producer's rate.) The batch is a bpf_loop (Linux 5.17; the verifier of 6.0
 * and later inlines it): a plain loop is verified once per iteration, and with the ring's
 * byte-threshold wakeup policy Linux 6.1's verifier gave up on the 500 iterations (over its 1M
 * instructions).
 */
#include "bpfstream.h"
#include "bench.h"

/* The producer thread's id (not the process id: only that thread must trigger). */
const volatile __u32 targ_tid = 0;

struct bench_batch {
	void *ctx;
	struct bpfstream_counters *c;
};

/* One record; a drop is counted at once (the ring or perf buffer was full). */
static long send_one(__u64 i, void *data)
{
	struct bench_batch *b = data;
#ifdef BPFSTREAM_PERF
	__u64 value = i;

	if (bpf_perf_event_output(b->ctx, &events, BPF_F_CURRENT_CPU, &value, sizeof(value)))
		b->c->dropped++;
#else
	__u64 *rec = bpf_ringbuf_reserve(&events, sizeof(*rec), 0);

	if (!rec) {
		b->c->dropped++;
		return 0;
	}
	*rec = i;
	bpf_ringbuf_submit(rec, bpfstream_wakeup_flags(sizeof(*rec)));
#endif
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_getpgid")
int bench_produce(void *ctx)
{
	struct bench_batch b = { .ctx = ctx };

	if ((__u32)bpf_get_current_pid_tgid() != targ_tid)
		return 0;
	b.c = bpfstream_counters();
	if (!b.c)
		return 0;	/* nothing sent that is not counted */
	bpf_loop(BENCH_BATCH, send_one, &b, 0);
	/* Tracing programs do not nest on a CPU, so the per-CPU counters need no atomics. */
	b.c->produced += BENCH_BATCH;
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

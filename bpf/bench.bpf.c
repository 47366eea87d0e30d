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
 * here it halved the producer's rate.) A drop is counted in the map at once, not in a local sum:
 * the verifier tracks such a sum's exact value, one state for each count it can have reached,
 * and Linux 6.1's verifier gave up on the 500 iterations (over its 1M instructions) with the
 * ring's byte-threshold wakeup policy.
 */
#include "bpfstream.h"
#include "bench.h"

/* The producer thread's id (not the process id: only that thread must trigger). */
const volatile __u32 targ_tid = 0;

SEC("tracepoint/syscalls/sys_enter_getpgid")
int bench_produce(void *ctx)
{
	struct bpfstream_counters *c;
	__u32 i;

	if ((__u32)bpf_get_current_pid_tgid() != targ_tid)
		return 0;
	c = bpfstream_counters();
	if (!c)
		return 0;	/* nothing sent that is not counted */
	for (i = 0; i < BENCH_BATCH; i++) {
#ifdef BPFSTREAM_PERF
		__u64 value = i;

		if (bpf_perf_event_output(ctx, &events, BPF_F_CURRENT_CPU, &value, sizeof(value)))
			c->dropped++;
#else
		__u64 *rec = bpf_ringbuf_reserve(&events, sizeof(*rec), 0);

		if (!rec) {
			c->dropped++;
			continue;
		}
		*rec = i;
		bpf_ringbuf_submit(rec, bpfstream_wakeup_flags(sizeof(*rec)));
#endif
	}
	/* Tracing programs do not nest on a CPU, so the per-CPU counters need no atomics. */
	c->produced += BENCH_BATCH;
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * bpfstream_untracked.h: for tracers that follow an event from entry to exit. An event that
 * passed the filters but found no room for its in-flight state is counted here, so the summary
 * can say how many were never produced (userspace sums the map: `untracked` in the summary).
 */
#ifndef BPFSTREAM_UNTRACKED_H
#define BPFSTREAM_UNTRACKED_H

#include "bpfstream.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} untracked SEC(".maps");

/* Tracing programs do not nest on a CPU, so the per-CPU count needs no atomics. */
static __always_inline void bpfstream_count_untracked(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&untracked, &zero);

	if (n)
		(*n)++;
}

#endif

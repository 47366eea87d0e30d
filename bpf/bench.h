/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* `bpfstream bench`'s producer; mirrored in Rust by experiments/src/bench/producer.rs. */
#ifndef BPFSTREAM_BENCH_H
#define BPFSTREAM_BENCH_H

/* Records written per getpgid() call, as in the kernel's bench_ringbufs.c (--rb-batch-cnt). */
#define BENCH_BATCH 500

#endif

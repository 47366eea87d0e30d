/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The ping probe's record: the library's tests and examples call a #[no_mangle] function
 * bpfstream_ping(seq, len) in their own binary, and a uprobe on it sends one record per call, so
 * every record is triggered deterministically and carries what the caller chose. Mirrored in Rust
 * by bpfstream/tests/common (layout checked against this object's BTF).
 */
#ifndef BPFSTREAM_PING_H
#define BPFSTREAM_PING_H

#define PING_DATA_MAX 4096	/* largest variable-length payload */

struct ping_event {
	__u64 seq;		/* first argument of bpfstream_ping() */
	__u32 len;		/* bytes of data after this header (second argument, capped) */
	__u32 cpu;		/* CPU that sent it */
	/* __u8 data[len] follows: byte i is (seq + i) & 0xff. len == 0: a fixed-size record, sent
	 * with bpfstream_reserve/submit; otherwise built in scratch memory and sent with
	 * bpfstream_output, exactly sizeof(struct ping_event) + len bytes long. */
};

#endif

// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * For `bpfstream run`'s tests: one record of every kind of field BTF describes, per call of
 * bpfstream_run_kinds(seq, len) in the traced process (a uprobe the test attaches with
 * --uprobe), filled from the arguments and from read-only globals the test sets with --set.
 * Some calls send what the decoder must count as malformed: seq 1000, a record cut short; seq
 * 1001, a record whose data_len says more than it holds (by more than the padding of a perf
 * sample, which a reader cannot tell from data).
 */
#define BPFSTREAM_PREEMPTIBLE
#include "bpfstream.h"
#include <bpf/bpf_tracing.h>

#define DATA_MAX 64

enum color { RED = 1, GREEN = 2, BLUE = -3 };

struct point {
	__s16 x;
	__s16 y;
};

union word {
	__u32 u;
	__u8 b[4];
};

struct kinds_event {
	__u8 u8;
	__s8 s8;
	__u16 u16;
	__s16 s16;
	__u32 u32;
	__s32 s32;
	__u64 u64;
	__s64 s64;
	bool flag;
	enum color color;
	enum color unnamed_color;
	char text[8];
	char bytes[4];		/* not UTF-8 */
	__u32 numbers[3];
	struct point points[2];
	struct point origin;
	union word word;
	struct {		/* anonymous: its members are the record's */
		__u8 inner_a;
		__u8 inner_b;
	};
	void *ptr;
	__u32 low : 3, mid : 13, high : 16;
	__s32 neg : 5;
	__u32 type;		/* a name the JSON line uses for itself */
	__u16 data_len;
	char data[] __bpfstream_len(data_len);
};

BPFSTREAM_EXPORT_STRUCT(kinds_event);

const volatile __u32 base = 0;
const volatile __s64 offset = 0;
const volatile bool flag_value = false;
const volatile enum color color_value = RED;
const volatile char label[8] = "none";

SEC("uprobe")
int kinds(struct pt_regs *ctx)
{
	__u64 seq = PT_REGS_PARM1(ctx);
	__u32 len = PT_REGS_PARM2(ctx), i;
	struct kinds_event *e = bpfstream_scratch();
	__u32 size;

	if (!e)
		return 0;
	if (len > DATA_MAX)
		len = DATA_MAX;
	e->u8 = 255;
	e->s8 = -1;
	e->u16 = 65535;
	e->s16 = -32768;
	e->u32 = base + seq;
	e->s32 = -2147483647 - 1;
	e->u64 = ~0ULL;
	e->s64 = offset;
	e->flag = flag_value;
	e->color = color_value;
	e->unnamed_color = 7;
	for (i = 0; i < sizeof(e->text); i++)
		e->text[i] = label[i];	/* volatile reads: what --set loaded, not the initializer */
	e->bytes[0] = 0xff;
	e->bytes[1] = 'a';
	e->bytes[2] = 0xfe;
	e->bytes[3] = 0;
	e->numbers[0] = 1;
	e->numbers[1] = 2;
	e->numbers[2] = 3;
	e->points[0].x = 1;
	e->points[0].y = -1;
	e->points[1].x = 2;
	e->points[1].y = -2;
	e->origin.x = 0;
	e->origin.y = 0;
	e->word.u = 0x04030201;
	e->inner_a = 10;
	e->inner_b = 20;
	e->ptr = (void *)0xdeadbeef;
	e->low = 5;
	e->mid = 4097;
	e->high = 65535;
	e->neg = -16;
	e->type = 99;
	e->data_len = len;
	for (i = 0; i < DATA_MAX; i++) {
		if (i >= len)
			break;
		e->data[i] = 'a' + i % 26;
	}
	size = offsetof(struct kinds_event, data) + len;
	if (seq == 1000)
		size = 8;			/* shorter than the struct */
	if (seq == 1001)
		e->data_len = len + 8;		/* more than sent, and than perf's padding to 8 bytes */
	bpfstream_output(ctx, e, size);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

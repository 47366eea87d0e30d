// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* For `bpfstream run`'s tests: externs libbpf resolves and bpfstream's loader cannot. */
#include "bpfstream.h"

extern int LINUX_KERNEL_VERSION __kconfig;
extern const void bpf_prog_active __ksym;

struct extern_event {
	__u32 version;
	__u32 active;	/* low bits of bpf_prog_active's address */
};

BPFSTREAM_EXPORT_STRUCT(extern_event);

SEC("raw_tp/sys_enter")
int uses_externs(void *ctx)
{
	struct extern_event *e = bpfstream_reserve(struct extern_event);

	if (!e)
		return 0;
	e->version = LINUX_KERNEL_VERSION;
	e->active = (__u32)(__u64)&bpf_prog_active;	/* its address's low bits */
	bpfstream_submit(ctx, e);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

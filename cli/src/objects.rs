//! The compiled BPF objects (`bpf/obj/`, built by `bpf/build.sh` and committed), embedded so
//! that the binary needs neither clang nor libbpf on the machine it runs on.

use aya::include_bytes_aligned;

use crate::lifecycle::Objects;

pub const EXEC: Objects = Objects {
    ring: include_bytes_aligned!("../../bpf/obj/exec.ring.bpf.o"),
    perf: include_bytes_aligned!("../../bpf/obj/exec.perf.bpf.o"),
};

pub const SYSCALLS: Objects = Objects {
    ring: include_bytes_aligned!("../../bpf/obj/syscalls.ring.bpf.o"),
    perf: include_bytes_aligned!("../../bpf/obj/syscalls.perf.bpf.o"),
};

pub const OPEN: Objects = Objects {
    ring: include_bytes_aligned!("../../bpf/obj/open.ring.bpf.o"),
    perf: include_bytes_aligned!("../../bpf/obj/open.perf.bpf.o"),
};

//! The compiled BPF objects (`bpf/obj/`, built by `bpf/build.sh` and committed), embedded so
//! that the binary needs neither clang nor libbpf on the machine it runs on.

use aya::include_bytes_aligned;

use crate::load::Objects;

pub const EXEC: Objects = Objects {
    ring: include_bytes_aligned!("../../bpf/obj/exec.ring.bpf.o"),
    perf: include_bytes_aligned!("../../bpf/obj/exec.perf.bpf.o"),
};

pub const LAB_LOAD: Objects = Objects {
    ring: include_bytes_aligned!("../../bpf/obj/lab_load.ring.bpf.o"),
    perf: include_bytes_aligned!("../../bpf/obj/lab_load.perf.bpf.o"),
};

pub const LAB_DEGRADE: Objects = Objects {
    ring: include_bytes_aligned!("../../bpf/obj/lab_degrade.ring.bpf.o"),
    perf: include_bytes_aligned!("../../bpf/obj/lab_degrade.perf.bpf.o"),
};

pub const BENCH: Objects = Objects {
    ring: include_bytes_aligned!("../../bpf/obj/bench.ring.bpf.o"),
    perf: include_bytes_aligned!("../../bpf/obj/bench.perf.bpf.o"),
};

pub const SYSCALLS: Objects = Objects {
    ring: include_bytes_aligned!("../../bpf/obj/syscalls.ring.bpf.o"),
    perf: include_bytes_aligned!("../../bpf/obj/syscalls.perf.bpf.o"),
};

pub const OPEN: Objects = Objects {
    ring: include_bytes_aligned!("../../bpf/obj/open.ring.bpf.o"),
    perf: include_bytes_aligned!("../../bpf/obj/open.perf.bpf.o"),
};

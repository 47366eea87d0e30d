//! The tracers: each is its BPF program, its event decoder and its columns; the lifecycle is
//! `crate::lifecycle`.

pub mod exec;
pub mod open;
pub mod syscall_summary;
pub mod syscalls;

//! The tracers: each is its BPF program, its event decoder and its columns; the lifecycle is
//! `crate::lifecycle`.

pub mod exec;
pub mod open;
pub mod syscall_summary;
pub mod syscalls;

use anyhow::Result;
use aya::maps::{MapData, PerCpuArray};

/// Sum over CPUs of a one-slot per-CPU `u64` array (a tool's own counter in its BPF object).
pub fn per_cpu_total(map: &PerCpuArray<MapData, u64>) -> Result<u64> {
    Ok(map.get(&0, 0)?.iter().sum())
}

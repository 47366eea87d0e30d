//! Timeouts of the kernel tests, stretched on slow machines: `BPFSTREAM_TIME_SCALE=10` (which
//! `scripts/kernel-test` sets in its emulated guests) multiplies every timeout and deadline the
//! tests wait for. The tests assert what happened, never how fast: a scaled timeout only bounds
//! how long a test waits before it calls something lost.
#![allow(dead_code)] // each test binary uses a different subset

use std::time::{Duration, Instant};

/// `timeout` times `BPFSTREAM_TIME_SCALE` (1 when unset).
pub fn scaled(timeout: Duration) -> Duration {
    timeout.mul_f64(factor())
}

/// Whether the timeouts are stretched (a slow machine, where speed is not judged at all).
pub fn is_scaled() -> bool {
    factor() > 1.0
}

/// The instant `timeout` (scaled) from now.
pub fn deadline(timeout: Duration) -> Instant {
    Instant::now() + scaled(timeout)
}

fn factor() -> f64 {
    let Some(value) = std::env::var_os("BPFSTREAM_TIME_SCALE") else { return 1.0 };
    let value = value.to_string_lossy();
    match value.parse::<f64>() {
        Ok(factor) if factor >= 1.0 && factor.is_finite() => factor,
        _ => panic!("BPFSTREAM_TIME_SCALE={value}: expected a number of at least 1 (e.g. 10 on an emulated kernel)"),
    }
}

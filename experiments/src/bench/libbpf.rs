//! libbpf's own C consumers (`ring_buffer__*`, `perf_buffer__*`), loaded at run time from
//! `libbpf.so.1` so that building `bpfstream` needs no C library. Where libbpf is missing its
//! rows are skipped with a note.

use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use libloading::Library;

use super::consumers::Consumer;
use super::perf_event::PerfEventAttr;

/// The soname Debian's libbpf1 package installs.
pub const SONAME: &str = "libbpf.so.1";

type RingSampleFn = unsafe extern "C" fn(ctx: *mut c_void, data: *mut c_void, size: usize) -> c_int;
type PerfSampleFn = unsafe extern "C" fn(ctx: *mut c_void, cpu: c_int, data: *mut c_void, size: u32);
type PerfLostFn = unsafe extern "C" fn(ctx: *mut c_void, cpu: c_int, count: u64);
type PerfEventFn = unsafe extern "C" fn(ctx: *mut c_void, cpu: c_int, header: *mut PerfEventHeader) -> c_int;

/// `struct perf_event_header`.
#[repr(C)]
struct PerfEventHeader {
    kind: u32,
    _misc: u16,
    _size: u16,
}

const PERF_RECORD_SAMPLE: u32 = 9;
/// `LIBBPF_PERF_EVENT_CONT`.
const PERF_EVENT_CONT: c_int = -2;

/// The entry points used, resolved once.
struct Api {
    ring_buffer_new: unsafe extern "C" fn(c_int, RingSampleFn, *mut c_void, *const c_void) -> *mut c_void,
    ring_buffer_free: unsafe extern "C" fn(*mut c_void),
    ring_buffer_poll: unsafe extern "C" fn(*mut c_void, c_int) -> c_int,
    ring_buffer_consume: unsafe extern "C" fn(*mut c_void) -> c_int,
    perf_buffer_new:
        unsafe extern "C" fn(c_int, usize, PerfSampleFn, Option<PerfLostFn>, *mut c_void, *const c_void) -> *mut c_void,
    perf_buffer_new_raw:
        unsafe extern "C" fn(c_int, usize, *mut PerfEventAttr, PerfEventFn, *mut c_void, *const c_void) -> *mut c_void,
    perf_buffer_free: unsafe extern "C" fn(*mut c_void),
    perf_buffer_poll: unsafe extern "C" fn(*mut c_void, c_int) -> c_int,
    perf_buffer_consume: unsafe extern "C" fn(*mut c_void) -> c_int,
}

/// libbpf, loaded.
pub struct Libbpf {
    api: Api,
    // Keeps the code behind the function pointers in `api` mapped.
    _library: Library,
}

impl std::fmt::Debug for Libbpf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Libbpf")
    }
}

impl Libbpf {
    /// dlopen()s libbpf.so.1; the error says how to install it.
    pub fn load() -> Result<Arc<Self>> {
        // SAFETY: loading libbpf runs only its ELF constructors, which set up nothing but
        // libbpf's own state.
        let library = unsafe { Library::new(SONAME) }
            .map_err(|e| anyhow!("{SONAME} not found ({e}); install it (Debian: apt-get install libbpf1)"))?;
        macro_rules! symbol {
            ($name:literal) => {
                // SAFETY: the symbol is libbpf's exported function of this name, whose C
                // prototype (libbpf.h, libbpf 1.x) is the type of the field it is stored in.
                *unsafe { library.get(concat!($name, "\0").as_bytes()) }
                    .map_err(|e| anyhow!("{SONAME} lacks {} ({e}); it needs libbpf 1.0 or later", $name))?
            };
        }
        let api = Api {
            ring_buffer_new: symbol!("ring_buffer__new"),
            ring_buffer_free: symbol!("ring_buffer__free"),
            ring_buffer_poll: symbol!("ring_buffer__poll"),
            ring_buffer_consume: symbol!("ring_buffer__consume"),
            perf_buffer_new: symbol!("perf_buffer__new"),
            perf_buffer_new_raw: symbol!("perf_buffer__new_raw"),
            perf_buffer_free: symbol!("perf_buffer__free"),
            perf_buffer_poll: symbol!("perf_buffer__poll"),
            perf_buffer_consume: symbol!("perf_buffer__consume"),
        };
        Ok(Arc::new(Libbpf { api, _library: library }))
    }
}

/// What libbpf calls back into: a count per record, as the kernel bench's callbacks do. Boxed
/// so its address, handed to libbpf as `ctx`, stays put.
type Count = Box<Cell<u64>>;

fn ctx_of(count: &Count) -> *mut c_void {
    (&**count as *const Cell<u64>).cast_mut().cast()
}

unsafe extern "C" fn count_ring_sample(ctx: *mut c_void, _data: *mut c_void, _size: usize) -> c_int {
    // SAFETY: `ctx` is the `Cell<u64>` of the consumer that registered this callback; libbpf
    // calls back only from that consumer's poll/consume, on its thread, while it is alive.
    let count = unsafe { &*ctx.cast::<Cell<u64>>() };
    count.set(count.get() + 1);
    0
}

unsafe extern "C" fn count_perf_sample(ctx: *mut c_void, _cpu: c_int, _data: *mut c_void, _size: u32) {
    // SAFETY: as in count_ring_sample.
    let count = unsafe { &*ctx.cast::<Cell<u64>>() };
    count.set(count.get() + 1);
}

unsafe extern "C" fn count_perf_event(ctx: *mut c_void, _cpu: c_int, header: *mut PerfEventHeader) -> c_int {
    // SAFETY: libbpf passes a complete record header from the mapped buffer (or its copy);
    // `ctx` as in count_ring_sample.
    let (kind, count) = unsafe { ((*header).kind, &*ctx.cast::<Cell<u64>>()) };
    if kind == PERF_RECORD_SAMPLE {
        count.set(count.get() + 1);
    }
    PERF_EVENT_CONT
}

fn timeout_ms(timeout: Duration) -> c_int {
    timeout.as_millis().min(c_int::MAX as u128) as c_int
}

/// A libbpf return value: records handled, or a negative errno (EINTR is not an error).
fn checked(call: &str, rc: c_int) -> Result<()> {
    if rc < 0 && rc != -libc::EINTR {
        return Err(anyhow!("{call} failed: {}", io::Error::from_raw_os_error(-rc)));
    }
    Ok(())
}

/// `ring_buffer__new` + `ring_buffer__poll` / `ring_buffer__consume`.
pub struct RingConsumer {
    libbpf: Arc<Libbpf>,
    ring: *mut c_void,
    count: Count,
    _map: OwnedFd,
}

impl RingConsumer {
    pub fn new(libbpf: Arc<Libbpf>, map: OwnedFd) -> Result<Self> {
        let count: Count = Box::new(Cell::new(0));
        // SAFETY: a valid ring buffer map fd (kept open by `_map`), a callback of the
        // ring_buffer_sample_fn type and its ctx, which outlives the ring (freed in Drop first);
        // NULL opts are allowed.
        let ring = unsafe {
            (libbpf.api.ring_buffer_new)(map.as_raw_fd(), count_ring_sample, ctx_of(&count), std::ptr::null())
        };
        if ring.is_null() {
            return Err(anyhow!("ring_buffer__new failed: {}", io::Error::last_os_error()));
        }
        Ok(RingConsumer { libbpf, ring, count, _map: map })
    }
}

impl Consumer for RingConsumer {
    fn poll(&mut self, timeout: Duration, count: &mut u64) -> Result<()> {
        // SAFETY: `ring` is a live ring_buffer created by ring_buffer__new.
        let rc = unsafe { (self.libbpf.api.ring_buffer_poll)(self.ring, timeout_ms(timeout)) };
        *count += self.count.replace(0);
        checked("ring_buffer__poll", rc)
    }

    fn consume(&mut self, count: &mut u64) -> Result<()> {
        // SAFETY: as in poll.
        let rc = unsafe { (self.libbpf.api.ring_buffer_consume)(self.ring) };
        *count += self.count.replace(0);
        checked("ring_buffer__consume", rc)
    }
}

impl Drop for RingConsumer {
    fn drop(&mut self) {
        // SAFETY: `ring` came from ring_buffer__new and is freed once.
        unsafe { (self.libbpf.api.ring_buffer_free)(self.ring) };
    }
}

/// How a libbpf perf buffer wakes its reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PerfSetup {
    /// `perf_buffer__new`: libbpf's default, `wakeup_events = 1` (every sample).
    Default,
    /// `perf_buffer__new_raw` with `wakeup_events = n`, as the kernel bench's `--rb-sampled`.
    WakeupEvents(u32),
}

/// `perf_buffer__new` / `perf_buffer__new_raw` + `perf_buffer__poll` / `perf_buffer__consume`.
pub struct PerfConsumer {
    libbpf: Arc<Libbpf>,
    perf: *mut c_void,
    count: Count,
    _map: OwnedFd,
}

impl PerfConsumer {
    pub fn new(libbpf: Arc<Libbpf>, map: OwnedFd, pages_per_cpu: usize, setup: PerfSetup) -> Result<Self> {
        let count: Count = Box::new(Cell::new(0));
        let perf = match setup {
            // SAFETY: a valid perf event array fd (kept open by `_map`), a power-of-two page
            // count, a perf_buffer_sample_fn and its ctx (outlives the buffer), no lost
            // callback (libbpf allows NULL; the BPF side counts drops), NULL opts.
            PerfSetup::Default => unsafe {
                (libbpf.api.perf_buffer_new)(
                    map.as_raw_fd(),
                    pages_per_cpu,
                    count_perf_sample,
                    None,
                    ctx_of(&count),
                    std::ptr::null(),
                )
            },
            PerfSetup::WakeupEvents(n) => {
                let mut attr = PerfEventAttr::bpf_output(n);
                // SAFETY: as above, with a perf_event_attr that libbpf passes to
                // perf_event_open (the kernel reads `size` bytes of it) during this call, and a
                // perf_buffer_event_fn callback.
                unsafe {
                    (libbpf.api.perf_buffer_new_raw)(
                        map.as_raw_fd(),
                        pages_per_cpu,
                        &mut attr,
                        count_perf_event,
                        ctx_of(&count),
                        std::ptr::null(),
                    )
                }
            }
        };
        if perf.is_null() {
            return Err(anyhow!("perf_buffer__new failed: {}", io::Error::last_os_error()));
        }
        Ok(PerfConsumer { libbpf, perf, count, _map: map })
    }
}

impl Consumer for PerfConsumer {
    fn poll(&mut self, timeout: Duration, count: &mut u64) -> Result<()> {
        // SAFETY: `perf` is a live perf_buffer created by perf_buffer__new(_raw).
        let rc = unsafe { (self.libbpf.api.perf_buffer_poll)(self.perf, timeout_ms(timeout)) };
        *count += self.count.replace(0);
        checked("perf_buffer__poll", rc)
    }

    fn consume(&mut self, count: &mut u64) -> Result<()> {
        // SAFETY: as in poll.
        let rc = unsafe { (self.libbpf.api.perf_buffer_consume)(self.perf) };
        *count += self.count.replace(0);
        checked("perf_buffer__consume", rc)
    }
}

impl Drop for PerfConsumer {
    fn drop(&mut self) {
        // SAFETY: `perf` came from perf_buffer__new(_raw) and is freed once.
        unsafe { (self.libbpf.api.perf_buffer_free)(self.perf) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callbacks_count_samples_only() {
        let count: Count = Box::new(Cell::new(0));
        let mut sample = PerfEventHeader { kind: PERF_RECORD_SAMPLE, _misc: 0, _size: 24 };
        let mut lost = PerfEventHeader { kind: 2, _misc: 0, _size: 32 };
        // SAFETY: the callbacks get a live Cell<u64> as ctx and live headers.
        unsafe {
            assert_eq!(count_ring_sample(ctx_of(&count), std::ptr::null_mut(), 8), 0);
            count_perf_sample(ctx_of(&count), 0, std::ptr::null_mut(), 8);
            assert_eq!(count_perf_event(ctx_of(&count), 0, &mut sample), PERF_EVENT_CONT);
            assert_eq!(count_perf_event(ctx_of(&count), 0, &mut lost), PERF_EVENT_CONT);
        }
        assert_eq!(count.get(), 3);
    }

    #[test]
    fn errors_except_eintr_fail() {
        assert!(checked("x", 5).is_ok());
        assert!(checked("x", -libc::EINTR).is_ok());
        let err = checked("ring_buffer__poll", -libc::EBADF).unwrap_err().to_string();
        assert!(err.contains("ring_buffer__poll") && err.contains("Bad file descriptor"), "{err}");
    }
}

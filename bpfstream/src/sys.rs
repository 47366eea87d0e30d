//! The few system calls the consumers need, as safe wrappers: `bpf(2)` map commands,
//! `perf_event_open(2)`, `mmap(2)`, epoll, eventfd and `membarrier(2)`. Everything here owns its file
//! descriptors (`OwnedFd`) and mappings (`Mmap`), so nothing leaks on an error path.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::time::Duration;

use crate::Error;

// bpf(2) commands and map types (include/uapi/linux/bpf.h).
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// `enum bpf_map_type` values this crate cares about.
pub(crate) mod map_type {
    pub const PERF_EVENT_ARRAY: u32 = 4;
    pub const HASH: u32 = 1;
    pub const ARRAY: u32 = 2;
    pub const PERCPU_ARRAY: u32 = 6;
    pub const RINGBUF: u32 = 27;

    /// A readable name for error messages.
    pub fn name(ty: u32) -> String {
        match ty {
            HASH => "BPF_MAP_TYPE_HASH".into(),
            ARRAY => "BPF_MAP_TYPE_ARRAY".into(),
            PERF_EVENT_ARRAY => "BPF_MAP_TYPE_PERF_EVENT_ARRAY".into(),
            5 => "BPF_MAP_TYPE_PERCPU_HASH".into(),
            PERCPU_ARRAY => "BPF_MAP_TYPE_PERCPU_ARRAY".into(),
            RINGBUF => "BPF_MAP_TYPE_RINGBUF".into(),
            31 => "BPF_MAP_TYPE_USER_RINGBUF".into(),
            other => format!("map type {other}"),
        }
    }
}

/// `union bpf_attr` for the element commands.
#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr` for BPF_MAP_CREATE (the fields up to `map_flags`; the rest stays zero).
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    _rest: [u32; 11],
}

/// `union bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `struct bpf_map_info`, the fields this crate reads (the kernel fills what fits).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct MapInfo {
    pub map_type: u32,
    pub id: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
    pub name: [u8; 16],
}

impl MapInfo {
    pub fn name(&self) -> String {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(self.name.len());
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, exclusively borrowed `union bpf_attr` prefix for `cmd`, and the
    // size passed is its exact size; the kernel reads and writes only within it.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>() as u32) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Describes the map behind `fd` (BPF_OBJ_GET_INFO_BY_FD).
pub(crate) fn map_info(fd: BorrowedFd<'_>) -> Result<MapInfo, Error> {
    let mut info = MapInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<MapInfo>() as u32,
        info: &mut info as *mut MapInfo as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map_err(|e| Error::sys("BPF_OBJ_GET_INFO_BY_FD", e))?;
    Ok(info)
}

/// Describes the map behind `fd`, which should be a map of the `expected` type(s): a descriptor
/// that is no BPF map at all is a [`Error::WrongMapType`] too.
pub(crate) fn map_info_of(fd: BorrowedFd<'_>, expected: &str) -> Result<MapInfo, Error> {
    map_info(fd).map_err(|e| match e {
        Error::Sys { source, .. } if source.raw_os_error() == Some(libc::EINVAL) => {
            Error::WrongMapType { expected: expected.into(), actual: "not a BPF map".into() }
        }
        other => other,
    })
}

/// Checks that `fd` is a BPF map of type `expected`.
pub(crate) fn expect_map_type(fd: BorrowedFd<'_>, expected: u32) -> Result<MapInfo, Error> {
    let info = map_info_of(fd, &map_type::name(expected))?;
    if info.map_type != expected {
        return Err(Error::WrongMapType {
            expected: map_type::name(expected),
            actual: format!("{} ({:?})", map_type::name(info.map_type), info.name()),
        });
    }
    Ok(info)
}

/// BPF_MAP_UPDATE_ELEM with a `u32` key and value (the PERF_EVENT_ARRAY case).
pub(crate) fn map_update_u32(map: BorrowedFd<'_>, key: u32, value: u32) -> Result<(), Error> {
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: &key as *const u32 as u64,
        value: &value as *const u32 as u64,
        ..Default::default()
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map_err(|e| Error::sys("BPF_MAP_UPDATE_ELEM", e))?;
    Ok(())
}

/// BPF_MAP_DELETE_ELEM with a `u32` key; a missing key is not an error.
pub(crate) fn map_delete_u32(map: BorrowedFd<'_>, key: u32) {
    let mut attr = MapElemAttr { map_fd: map.as_raw_fd() as u32, key: &key as *const u32 as u64, ..Default::default() };
    let _ = bpf(BPF_MAP_DELETE_ELEM, &mut attr);
}

/// BPF_MAP_LOOKUP_ELEM with a `u32` key into `value` (which must be the map's whole value: for
/// per-CPU maps, `possible CPUs × round_up(value_size, 8)` bytes).
pub(crate) fn map_lookup_u32(map: BorrowedFd<'_>, key: u32, value: &mut [u8]) -> Result<(), Error> {
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: &key as *const u32 as u64,
        value: value.as_mut_ptr() as u64,
        ..Default::default()
    };
    bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).map_err(|e| Error::sys("BPF_MAP_LOOKUP_ELEM", e))?;
    Ok(())
}

/// Creates a map (used to probe kernel features); the map is freed when the fd is dropped.
pub(crate) fn map_create(map_type: u32, key_size: u32, value_size: u32, max_entries: u32) -> io::Result<OwnedFd> {
    let mut attr = MapCreateAttr { map_type, key_size, value_size, max_entries, ..Default::default() };
    let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: BPF_MAP_CREATE returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `struct perf_event_attr` up to `sig_data` (PERF_ATTR_SIZE_VER7, 128 bytes).
#[repr(C)]
#[derive(Default)]
pub(crate) struct PerfEventAttr {
    pub type_: u32,
    pub size: u32,
    pub config: u64,
    pub sample_period: u64,
    pub sample_type: u64,
    pub read_format: u64,
    pub flags: u64,
    pub wakeup: u32,
    pub bp_type: u32,
    pub config1: u64,
    pub config2: u64,
    pub branch_sample_type: u64,
    pub sample_regs_user: u64,
    pub sample_stack_user: u32,
    pub clockid: i32,
    pub sample_regs_intr: u64,
    pub aux_watermark: u32,
    pub sample_max_stack: u16,
    pub _reserved_2: u16,
    pub aux_sample_size: u32,
    pub _reserved_3: u32,
    pub sig_data: u64,
}

pub(crate) const PERF_TYPE_SOFTWARE: u32 = 1;
pub(crate) const PERF_COUNT_SW_BPF_OUTPUT: u64 = 10;
pub(crate) const PERF_SAMPLE_RAW: u64 = 1 << 10;
/// `perf_event_attr.watermark`: `wakeup` counts bytes, not events.
pub(crate) const PERF_ATTR_FLAG_WATERMARK: u64 = 1 << 14;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_EVENT_IOC_DISABLE: libc::c_ulong = 0x2401;

/// perf_event_open(2) for all processes on one CPU.
pub(crate) fn perf_event_open_cpu(attr: &mut PerfEventAttr, cpu: u32) -> Result<OwnedFd, Error> {
    attr.size = size_of::<PerfEventAttr>() as u32;
    // SAFETY: `attr` is a valid perf_event_attr of the size it declares; pid -1 with a CPU and no
    // group is a documented combination; the kernel only reads `attr`.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr as *mut PerfEventAttr,
            -1,
            cpu as libc::c_int,
            -1,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(Error::sys("perf_event_open", io::Error::last_os_error()));
    }
    // SAFETY: perf_event_open returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Starts (`true`) or stops a perf event.
pub(crate) fn perf_event_enable(fd: BorrowedFd<'_>, enable: bool) -> Result<(), Error> {
    let request = if enable { PERF_EVENT_IOC_ENABLE } else { PERF_EVENT_IOC_DISABLE };
    // SAFETY: a perf event ioctl that takes no argument on a valid perf event fd.
    if unsafe { libc::ioctl(fd.as_raw_fd(), request as _, 0) } < 0 {
        return Err(Error::sys("ioctl(PERF_EVENT_IOC_ENABLE)", io::Error::last_os_error()));
    }
    Ok(())
}

/// A shared memory mapping of a file descriptor, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory with no thread affinity; all access to it goes
// through raw pointers and atomics whose synchronization is argued at each use.
unsafe impl Send for Mmap {}
// SAFETY: as above; `&Mmap` only hands out raw pointers.
unsafe impl Sync for Mmap {}

impl Mmap {
    /// Maps `len` bytes of `fd` at `offset`, read-only or read-write, `MAP_SHARED`.
    pub fn map(fd: BorrowedFd<'_>, len: usize, offset: usize, writable: bool) -> Result<Self, Error> {
        let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        // SAFETY: a fresh mapping chosen by the kernel (addr NULL) cannot alias any Rust object;
        // the result is checked before use.
        let ptr = unsafe {
            libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd.as_raw_fd(), offset as libc::off_t)
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::sys("mmap", io::Error::last_os_error()));
        }
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| Error::sys("mmap", io::Error::other("returned NULL")))?;
        Ok(Mmap { ptr, len })
    }

    pub fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly a mapping this value created and nobody else unmaps;
        // borrows of the memory cannot outlive `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The system page size.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as usize
    } else {
        4096
    }
}

/// Parses a kernel CPU list such as `0-3,5,7-8`.
pub(crate) fn parse_cpu_list(text: &str) -> Result<Vec<u32>, Error> {
    let bad =
        || Error::sys("parse CPU list", io::Error::new(io::ErrorKind::InvalidData, format!("bad CPU list {text:?}")));
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo.parse::<u32>().map_err(|_| bad())?, hi.parse::<u32>().map_err(|_| bad())?),
            None => {
                let cpu = part.parse::<u32>().map_err(|_| bad())?;
                (cpu, cpu)
            }
        };
        if lo > hi {
            return Err(bad());
        }
        cpus.extend(lo..=hi);
    }
    Ok(cpus)
}

fn read_cpu_list(path: &str) -> Result<Vec<u32>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::sys("read /sys/devices/system/cpu", e))?;
    parse_cpu_list(&text)
}

/// CPUs that are online now (perf buffers are opened on these).
pub(crate) fn online_cpus() -> Result<Vec<u32>, Error> {
    read_cpu_list("/sys/devices/system/cpu/online")
}

/// Number of possible CPUs (the length of a per-CPU map value array).
pub(crate) fn possible_cpus() -> Result<usize, Error> {
    let cpus = read_cpu_list("/sys/devices/system/cpu/possible")?;
    Ok(cpus.iter().max().map_or(1, |&max| max as usize + 1))
}

/// An epoll instance; `data` of each registration is a caller-chosen token.
#[derive(Debug)]
pub(crate) struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub fn new() -> Result<Self, Error> {
        // SAFETY: epoll_create1 has no memory-safety preconditions.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(Error::sys("epoll_create1", io::Error::last_os_error()));
        }
        // SAFETY: a new descriptor that nothing else owns.
        Ok(Epoll { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    pub fn add(&self, fd: BorrowedFd<'_>, token: u64) -> Result<(), Error> {
        self.add_with(fd, token, libc::EPOLLIN as u32)
    }

    /// Like [`add`](Self::add), edge-triggered: `fd` is reported once per wakeup of its wait
    /// queue (and once if it is readable when added), not again for as long as it stays readable.
    pub fn add_edge_triggered(&self, fd: BorrowedFd<'_>, token: u64) -> Result<(), Error> {
        self.add_with(fd, token, (libc::EPOLLIN | libc::EPOLLET) as u32)
    }

    fn add_with(&self, fd: BorrowedFd<'_>, token: u64, events: u32) -> Result<(), Error> {
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: both fds are valid for the call and `event` is a valid epoll_event.
        if unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd.as_raw_fd(), &mut event) } < 0 {
            return Err(Error::sys("epoll_ctl", io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Waits for readiness; leaves the tokens that are ready in `ready`. `None` waits forever.
    /// Returns whether a signal interrupted the wait (EINTR: no tokens, not an error).
    pub fn wait(&self, timeout: Option<Duration>, ready: &mut Vec<u64>) -> Result<bool, Error> {
        const MAX_EVENTS: usize = 64;
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
        let timeout_ms = timeout.map_or(-1, |t| {
            // Round up so a 0.5 ms timeout sleeps rather than spins.
            let ms = t.as_nanos().div_ceil(1_000_000);
            ms.min(i32::MAX as u128) as i32
        });
        ready.clear();
        // SAFETY: `events` is a writable array of MAX_EVENTS epoll_event structs.
        let n = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), MAX_EVENTS as i32, timeout_ms) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                return Ok(true);
            }
            return Err(Error::sys("epoll_wait", err));
        }
        ready.extend(events[..n as usize].iter().map(|e| e.u64));
        Ok(false)
    }
}

impl AsFd for Epoll {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// An eventfd used to wake a blocked poller from another thread.
#[derive(Debug)]
pub(crate) struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    pub fn new() -> Result<Self, Error> {
        // SAFETY: eventfd has no memory-safety preconditions.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(Error::sys("eventfd", io::Error::last_os_error()));
        }
        // SAFETY: a new descriptor that nothing else owns.
        Ok(EventFd { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to a valid eventfd. A full counter (EAGAIN)
        // already means "signalled", so the result needs no handling.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Resets the counter; returns whether it had been signalled.
    #[cfg(test)]
    pub fn clear(&self) -> bool {
        let mut value: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from a valid non-blocking eventfd.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), (&mut value as *mut u64).cast(), 8) };
        n == 8 && value > 0
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Duplicates `fd` (close-on-exec), so a consumer keeps its map alive on its own.
/// `MEMBARRIER_CMD_GLOBAL` of membarrier(2).
const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;

/// Waits until no BPF program detached before the call can still be running (an RCU grace
/// period).
///
/// Detaching replaces the tracepoint's probe array (tracepoint_probe_unregister(), for raw
/// tracepoints) or the event's program array (perf_event_detach_bpf_prog(), for classic ones,
/// which also waits for a Tasks Trace grace period before it returns). A tracepoint call that
/// read the old array may still be running one of the programs: under preempt_disable() or
/// rcu_read_lock() (classic tracepoints, and every BPF run through __bpf_trace_run()), which
/// MEMBARRIER_CMD_GLOBAL waits for, as it is synchronize_rcu() (kernel/sched/membarrier.c).
/// A faultable tracepoint (sys_enter/sys_exit) or a uprobe reads the array under Tasks Trace
/// RCU, which synchronize_rcu() does not wait for: such a call can be between reading the array
/// and entering the program. That is why `finish` takes a second snapshot of the counters after
/// a second grace period and goes on until two agree: a late run shows as a counter that moved.
pub(crate) fn wait_for_running_programs() {
    // SAFETY: membarrier(2) takes no pointers.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc != 0 {
        // nohz_full kernels refuse it (EINVAL), pre-4.3 ones lack it: a plain pause; the
        // settle loop catches what still ran after it.
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn dup(fd: BorrowedFd<'_>) -> Result<OwnedFd, Error> {
    fd.try_clone_to_owned().map_err(|e| Error::sys("dup", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1\n").unwrap(), vec![0, 1]);
        assert_eq!(parse_cpu_list("0,2-3,7").unwrap(), vec![0, 2, 3, 7]);
        assert_eq!(parse_cpu_list("5").unwrap(), vec![5]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
    }

    #[test]
    fn attr_layouts_match_the_kernel() {
        assert_eq!(size_of::<PerfEventAttr>(), 128); // PERF_ATTR_SIZE_VER7
        assert_eq!(std::mem::offset_of!(PerfEventAttr, wakeup), 48);
        assert_eq!(std::mem::offset_of!(PerfEventAttr, sig_data), 120);
        assert_eq!(size_of::<MapElemAttr>(), 32);
        assert_eq!(std::mem::offset_of!(MapInfo, name), 24);
    }
}

//! The perf_event_open(2) pieces the bench needs besides the libraries: the attribute of a BPF
//! output event (for libbpf's `perf_buffer__new_raw`), and writing into aya's perf buffers
//! through a helper event, because aya 0.14 opens its events with `wakeup_events = 1`.
//!
//! Why the helper: with `wakeup_events = 1` every sample queues a wakeup (an irq_work, a
//! self-IPI: about 5 µs in this VM). `sampled` asks for a wakeup every 500 samples, and in
//! `drain` nobody waits during the fill (which would take 14 s for 64 MiB). The helper is a
//! second BPF output event on the same CPU, redirected into aya's buffer with
//! PERF_EVENT_IOC_SET_OUTPUT and waking every N samples; the BPF program writes through it (it
//! takes aya's slot in the map), the records land in aya's buffer, the kernel wakes aya's event
//! with the helper's, and aya reads them exactly as it reads its own.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `struct perf_event_attr` up to `config2` (PERF_ATTR_SIZE_VER1), zero-padded to 128 bytes
/// (VER7); the kernel reads `size` bytes and treats what it does not know as zero.
#[repr(C)]
#[derive(Default)]
pub struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
    config2: u64,
    _rest: [u64; 7],
}

const PERF_TYPE_SOFTWARE: u32 = 1;
const PERF_COUNT_SW_BPF_OUTPUT: u64 = 10;
const PERF_SAMPLE_RAW: u64 = 1 << 10;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
/// `_IO('$', 5)`.
const PERF_EVENT_IOC_SET_OUTPUT: libc::c_ulong = 0x2405;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;

impl PerfEventAttr {
    /// What `bpf_perf_event_output()` writes into: a software BPF output event with raw
    /// samples, waking its reader every `wakeup_events` samples.
    pub fn bpf_output(wakeup_events: u32) -> Self {
        PerfEventAttr {
            kind: PERF_TYPE_SOFTWARE,
            size: std::mem::size_of::<PerfEventAttr>() as u32,
            config: PERF_COUNT_SW_BPF_OUTPUT,
            sample_period: 1,
            sample_type: PERF_SAMPLE_RAW,
            wakeup_events,
            ..Default::default()
        }
    }
}

fn open_on_cpu(attr: &mut PerfEventAttr, cpu: u32) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a valid perf_event_attr of the size it declares, which the kernel only
    // reads; pid -1 with a CPU and no group is a documented combination.
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
        return Err(io::Error::last_os_error());
    }
    // SAFETY: perf_event_open returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// `union bpf_attr` for BPF_MAP_UPDATE_ELEM.
#[repr(C)]
struct MapUpdateAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn set_map_slot(map: BorrowedFd<'_>, cpu: u32, event: BorrowedFd<'_>) -> io::Result<()> {
    let value = event.as_raw_fd() as u32;
    let mut attr = MapUpdateAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: &cpu as *const u32 as u64,
        value: &value as *const u32 as u64,
        flags: 0,
    };
    // SAFETY: `attr` is the BPF_MAP_UPDATE_ELEM prefix of union bpf_attr, with pointers to a live
    // u32 key and value; the kernel only reads them during the call.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_MAP_UPDATE_ELEM, &mut attr as *mut MapUpdateAttr, std::mem::size_of_val(&attr))
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the BPF program's samples on `cpu` land in `buffer` (a perf event already mmap'd by its
/// consumer) through a helper event that wakes every `wakeup_events` samples: the kernel wakes
/// every event sharing the buffer, so `buffer`'s reader is woken at that pace. Keep the returned
/// descriptor open as long as the samples should go that way.
pub fn redirect_samples(
    map: BorrowedFd<'_>,
    cpu: u32,
    buffer: BorrowedFd<'_>,
    wakeup_events: u32,
) -> io::Result<OwnedFd> {
    let helper = open_on_cpu(&mut PerfEventAttr::bpf_output(wakeup_events), cpu)?;
    // SAFETY: an ioctl on a perf event fd whose argument is another perf event fd (by value).
    if unsafe { libc::ioctl(helper.as_raw_fd(), PERF_EVENT_IOC_SET_OUTPUT as _, buffer.as_raw_fd()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    set_map_slot(map, cpu, helper.as_fd())?;
    Ok(helper)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_layout() {
        assert_eq!(std::mem::size_of::<PerfEventAttr>(), 128);
        assert_eq!(std::mem::offset_of!(PerfEventAttr, wakeup_events), 48);
        assert_eq!(std::mem::offset_of!(PerfEventAttr, config2), 64);
        let attr = PerfEventAttr::bpf_output(500);
        assert_eq!((attr.size, attr.wakeup_events, attr.config), (128, 500, PERF_COUNT_SW_BPF_OUTPUT));
    }
}

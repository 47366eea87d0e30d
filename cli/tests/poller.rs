//! The library's Poller against the real kernel: a ring buffer and a perf buffer in one epoll
//! set, a handler each, stopped from another thread, EINTR-safe, with a final drain.

mod common;

use std::os::fd::AsFd;
use std::process::Command;
use std::time::{Duration, Instant};

use aya::maps::Map;
use aya::programs::RawTracePoint;
use aya::{include_bytes_aligned, Ebpf, EbpfLoader};
use bpfstream::{Event, EventSource, Options, Poller, Record};
use common::*;

static RING: &[u8] = include_bytes_aligned!("../../bpf/obj/exec.ring.bpf.o");
static PERF: &[u8] = include_bytes_aligned!("../../bpf/obj/exec.perf.bpf.o");

/// The exec tracer's object, filtered in the kernel to execs whose comm is `comm`, with its
/// successful-exec program attached (the failed-exec ones are not needed here).
fn exec_object(object: &[u8], comm: &str) -> Ebpf {
    let mut targ = [0u8; 16];
    targ[..comm.len()].copy_from_slice(comm.as_bytes());
    let mut bpf = EbpfLoader::new()
        // The in-flight execve map is task storage, which aya has no userspace type for.
        .allow_unsupported_maps()
        .override_global("filter_comm", &1u8, true)
        .override_global("targ_comm_len", &(comm.len() as u32), true)
        .override_global("targ_comm", &targ, true)
        .load(object)
        .expect("load exec object");
    let prog: &mut RawTracePoint = bpf.program_mut("handle_exec").unwrap().try_into().unwrap();
    prog.load().unwrap();
    prog.attach("sched_process_exec").unwrap();
    bpf
}

fn events_fd(bpf: &Ebpf) -> std::os::fd::BorrowedFd<'_> {
    match bpf.map("events").unwrap() {
        Map::RingBuf(m) | Map::PerfEventArray(m) => m.fd().as_fd(),
        _ => panic!("events is not a ring or perf map"),
    }
}

#[test]
fn one_poller_serves_ring_and_perf_and_stops_on_wake_after_a_final_drain() {
    let Some(_kernel) = kernel_test() else { return };
    let comm = "bpfs-poller";
    let probe = probe_binary(&temp_dir("poller"), comm);
    let ring_bpf = exec_object(RING, comm);
    let perf_bpf = exec_object(PERF, comm);
    let mut ring = EventSource::open(events_fd(&ring_bpf), None, &Options::default()).unwrap();
    let mut perf = EventSource::open(events_fd(&perf_bpf), None, &Options::default()).unwrap();

    let (mut from_ring, mut from_perf, mut lost_ring, mut lost_perf) = (0u32, 0u32, 0u64, 0u64);
    {
        let mut poller = Poller::new().unwrap();
        poller
            .add(&mut ring, 0, |item: Event<Record<'_>>| match item {
                Event::Record(r) => {
                    assert!(r.cpu.is_none());
                    from_ring += 1;
                }
                Event::Dropped(l) => lost_ring += l.count,
            })
            .unwrap();
        poller
            .add(&mut perf, 0, |item: Event<Record<'_>>| match item {
                Event::Record(r) => {
                    assert!(r.cpu.is_some());
                    from_perf += 1;
                }
                Event::Dropped(l) => lost_perf += l.count,
            })
            .unwrap();

        // Phase 1: live polling sees execs in both sources.
        for _ in 0..5 {
            assert!(Command::new(&probe).status().unwrap().success());
        }
        let deadline = deadline(Duration::from_secs(10));
        let mut seen = 0;
        while seen < 10 && Instant::now() < deadline {
            // The perf buffer wakes at a watermark, so records may only come out on the timeout:
            // the timeout is the delivery-delay bound.
            seen += poller.poll(Some(Duration::from_millis(50))).unwrap();
        }
        assert_eq!(seen, 10, "5 execs, each in both buffers");

        // Phase 2: records waiting in both buffers, a wake from another thread: run() returns
        // promptly and its final drain hands everything over.
        for _ in 0..7 {
            assert!(Command::new(&probe).status().unwrap().success());
        }
        let stop = poller.stop_handle();
        let waker = stop.clone();
        std::thread::spawn(move || waker.drain()).join().unwrap();
        let started = Instant::now();
        let n = poller.run(scaled(Duration::from_secs(30))).unwrap();
        assert!(started.elapsed() < scaled(Duration::from_secs(5)), "woken, not timed out");
        assert_eq!(n, 14);
        assert!(stop.is_stopped());
    }
    assert_eq!((from_ring, from_perf, lost_ring, lost_perf), (12, 12, 0, 0));
}

extern "C" fn ignore_signal(_: libc::c_int) {}

#[test]
fn a_signal_interrupting_the_wait_is_not_an_error() {
    let Some(_kernel) = kernel_test() else { return };
    // SAFETY: installing a handler that does nothing, without SA_RESTART, so epoll_wait
    // returns EINTR.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = ignore_signal as *const () as usize;
        libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut());
    }
    let ring_bpf = exec_object(RING, "bpfs-eintr");
    let mut ring = EventSource::open(events_fd(&ring_bpf), None, &Options::default()).unwrap();
    let mut poller = Poller::new().unwrap();
    poller.add(&mut ring, 0, |_: Event<Record<'_>>| ()).unwrap();
    let stop = poller.stop_handle();
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() } as usize;
    let kicker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: the target thread is alive: it is blocked in poll until this returns.
        unsafe { libc::pthread_kill(me as libc::pthread_t, libc::SIGUSR1) };
    });
    let started = Instant::now();
    assert_eq!(poller.poll(Some(scaled(Duration::from_secs(20)))).unwrap(), 0);
    assert!(started.elapsed() < scaled(Duration::from_secs(10)), "returned on the signal");
    kicker.join().unwrap();
    assert!(!stop.is_stopped(), "a signal is not a stop request");
}

#[test]
fn a_source_rejects_a_map_that_is_no_event_buffer_and_bad_options() {
    let Some(_kernel) = kernel_test() else { return };
    let perf_bpf = exec_object(PERF, "bpfs-wrongtype");
    let Map::PerCpuArray(counters) = perf_bpf.map("bpfstream_stats").unwrap() else { panic!("counters") };
    let options = Options::default();
    let err = EventSource::open(counters.fd().as_fd(), None, &options).unwrap_err().to_string();
    assert!(err.contains("expected BPF_MAP_TYPE_RINGBUF or BPF_MAP_TYPE_PERF_EVENT_ARRAY"), "{err}");
    let err = EventSource::open(events_fd(&perf_bpf), Some(events_fd(&perf_bpf)), &options).unwrap_err().to_string();
    assert!(err.contains("wrong map type"), "events are no drop counters: {err}");
    let too_large = Options { buffer_bytes: Some(4 << 30), ..Options::default() };
    let err = EventSource::open(events_fd(&perf_bpf), None, &too_large).unwrap_err();
    assert!(err.to_string().contains("at most") || err.to_string().contains("2 GiB"), "{err}");
    let stdin = std::io::stdin();
    let err = EventSource::open(stdin.as_fd(), None, &options).unwrap_err().to_string();
    assert!(err.contains("not a BPF map"), "{err}");
}

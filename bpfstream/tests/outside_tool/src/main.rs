//! outside-tool: a tool built on the bpfstream crate as a third party would, from its package
//! alone. It calls `tool_trigger` COUNT times and checks what its BPF program reported:
//! - for each transport, with a one-page buffer and no consumer reading while it triggers (so
//!   the buffer must drop): every record is this process's, and delivered + dropped ==
//!   produced == COUNT; a second stream of the same object, every tenth call, accounts for
//!   its COUNT / 10 by itself;
//! - on the perf buffer, triggered from two threads on two CPUs, through an async stream put
//!   in timestamp order: all COUNT records, in order.

use std::error::Error;
use std::time::Duration;

use aya::programs::uprobe::UProbeScope;
use aya::programs::UProbe;
use bpfstream::btf::Mirror;
use bpfstream::stream::EventStream;
use bpfstream::events;
use bpfstream::{Event, EventSource, FixedStr, PerfOptions, WakeupPolicy};
use futures_util::StreamExt;

bpfstream::record! {
    /// struct tool_event in src/tool.bpf.c.
    #[derive(Debug)]
    pub struct ToolEvent {
        pub ts_ns: u64,
        pub seq: u64,
        pub pid: u32,
        pub comm: FixedStr<16>,
    }
}

static RING: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tool.ring.bpf.o"));
static PERF: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tool.perf.bpf.o"));

const COUNT: u64 = 1000;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// The traced function: its first argument is the record's `seq`.
#[no_mangle]
#[inline(never)]
pub extern "C" fn tool_trigger(seq: u64) -> u64 {
    std::hint::black_box(seq)
}

/// Loads `object` for this process with `pages` pages of buffer (per CPU for perf) and opens
/// its two streams (`events`: every call; `tenths`: every tenth); the probe is attached.
fn load(object: &[u8], pages: usize) -> Result<(aya::Ebpf, EventSource, EventSource)> {
    ToolEvent::check_btf(object, "tool_event")?;
    let tgid = std::process::id();
    let mut loader = aya::EbpfLoader::new();
    loader.override_global("targ_tgid", &tgid, true);
    for map in ["events", "tenths"] {
        loader.map_max_entries(map, (pages * 4096) as u32);
    }
    let policy = WakeupPolicy::EveryRecord;
    let mut ebpf = bpfstream::aya::load(loader, object, policy)?;
    let perf = PerfOptions { pages_per_cpu: pages, wakeup: None };
    let events = bpfstream::aya::open(&ebpf, "events", policy, perf)?;
    let tenths = bpfstream::aya::open(&ebpf, "tenths", policy, perf)?;
    let program: &mut UProbe = ebpf.program_mut("handle_trigger").ok_or("no program handle_trigger")?.try_into()?;
    program.load()?;
    program.attach("tool_trigger", "/proc/self/exe", UProbeScope::AllProcesses)?;
    Ok((ebpf, events, tenths))
}

/// What a drain saw.
#[derive(Default)]
struct Seen {
    seqs: Vec<u64>,
    dropped: u64,
    foreign: u64,
    malformed: u64,
}

/// Drains `source` (its producer detached) and checks its accounting: `produced` records
/// tried, every `step`-th seq, all this process's.
fn drain(name: &str, source: &mut EventSource, produced: u64, step: u64) -> Result<u64> {
    let tgid = std::process::id();
    let comm = std::fs::read_to_string("/proc/self/comm")?.trim_end().to_owned();
    let mut seen = Seen::default();
    let totals = source.finish(std::time::Instant::now() + std::time::Duration::from_secs(5), events::<ToolEvent, _>(|event| match event {
        Event::Record(e) if e.pid == tgid && e.comm.to_string() == comm => seen.seqs.push(e.seq),
        Event::Record(_) => seen.foreign += 1,
        Event::Lost(lost) => seen.dropped += lost.count,
        Event::Malformed(_) => seen.malformed += 1,
    }))?;
    println!(
        "{name}: produced={} delivered={} dropped={} (records {}, reported lost {}, foreign {}, malformed {})",
        totals.produced.ok_or("no drop counters")?,
        totals.delivered,
        totals.dropped,
        seen.seqs.len(),
        seen.dropped,
        seen.foreign,
        seen.malformed
    );
    let mut unique = seen.seqs.clone();
    unique.sort_unstable();
    unique.dedup();
    let ok = totals.produced == Some(produced)
        && totals.delivered + totals.dropped == produced
        && seen.dropped == totals.dropped
        && seen.foreign == 0
        && seen.malformed == 0
        && unique.len() == seen.seqs.len()
        && unique.iter().all(|&s| s < COUNT && s % step == 0);
    if !ok {
        return Err(format!("{name}: the accounting does not add up: {totals:?}").into());
    }
    Ok(totals.dropped)
}

fn overflowing(name: &str, object: &[u8]) -> Result<()> {
    let (ebpf, mut events, mut tenths) = load(object, 1)?;
    for seq in 0..COUNT {
        tool_trigger(seq);
    }
    drop(ebpf); // detaches the program
    let dropped = drain(name, &mut events, COUNT, 1)?;
    drain(&format!("{name} tenths"), &mut tenths, COUNT / 10, 10)?;
    if dropped == 0 {
        return Err(format!("{name}: a one-page buffer took {COUNT} records without a drop").into());
    }
    Ok(())
}

/// Calls `tool_trigger` for `seqs` on `cpu`.
fn trigger_on(cpu: usize, seqs: std::ops::Range<u64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and sched_setaffinity get valid
        // pointers to it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        }
        for seq in seqs {
            tool_trigger(seq);
        }
    })
}

async fn ordered_perf() -> Result<()> {
    let (ebpf, source, _tenths) = load(PERF, 64)?;
    let threads = [trigger_on(0, 0..COUNT / 2), trigger_on(1, COUNT / 2..COUNT)];
    for thread in threads {
        thread.join().map_err(|_| "a trigger thread panicked")?;
    }
    drop(ebpf);
    let stream = EventStream::typed::<ToolEvent>(source)?;
    stream.stop_handle().drain(); // producers are detached: end once all is read
    let mut ordered = stream.ordered(Duration::from_millis(50), |e: &ToolEvent| e.ts_ns);
    let (mut times, mut cpus_seen) = (Vec::new(), 0);
    while let Some(event) = ordered.next().await {
        match event? {
            Event::Record(e) => times.push(e.ts_ns),
            other => return Err(format!("unexpected {other:?}").into()),
        }
        cpus_seen += 1;
    }
    let totals = ordered.totals();
    println!("perf ordered: produced={:?} delivered={} {:?}", totals.produced, totals.delivered, ordered.merge_stats());
    if totals.produced != Some(COUNT) || totals.delivered != COUNT || cpus_seen != COUNT as usize {
        return Err(format!("perf ordered: records missing: {totals:?}").into());
    }
    if !times.windows(2).all(|w| w[0] <= w[1]) || ordered.merge_stats().late != 0 {
        return Err("perf ordered: records out of timestamp order".into());
    }
    Ok(())
}

fn main() {
    let ordered = || tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(ordered_perf());
    let result = overflowing("ring", RING).and_then(|()| overflowing("perf", PERF)).and_then(|()| ordered());
    if let Err(e) = result {
        eprintln!("outside-tool: {e}");
        std::process::exit(1);
    }
}

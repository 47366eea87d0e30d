//! outside-tool: a tool built on the bpfstream crate as a third party would, from its package
//! alone. For each transport it loads its BPF object, calls `tool_trigger` COUNT times with no
//! consumer reading (so a one-page buffer must drop), detaches, drains, and checks that every
//! record is this process's and that delivered + dropped == produced == COUNT.

use std::error::Error;

use aya::programs::uprobe::UProbeScope;
use aya::programs::UProbe;
use bpfstream::btf::Mirror;
use bpfstream::typed::events;
use bpfstream::{Event, FixedStr, PerfOptions, WakeupPolicy};

bpfstream::record! {
    /// struct tool_event in src/tool.bpf.c.
    #[derive(Debug)]
    pub struct ToolEvent {
        pub seq: u64,
        pub pid: u32,
        pub comm: FixedStr<16>,
    }
}

static RING: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tool.ring.bpf.o"));
static PERF: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tool.perf.bpf.o"));

const COUNT: u64 = 1000;

/// The traced function: its first argument is the record's `seq`.
#[no_mangle]
#[inline(never)]
pub extern "C" fn tool_trigger(seq: u64) -> u64 {
    std::hint::black_box(seq)
}

/// What one run saw.
#[derive(Debug, Default)]
struct Seen {
    seqs: Vec<u64>,
    dropped: u64,
    foreign: u64,
    malformed: u64,
}

fn run(name: &str, object: &[u8]) -> Result<(), Box<dyn Error>> {
    ToolEvent::check_btf(object, "tool_event")?;
    let tgid = std::process::id();
    let comm = std::fs::read_to_string("/proc/self/comm")?.trim_end().to_owned();
    let mut loader = aya::EbpfLoader::new();
    loader.override_global("targ_tgid", &tgid, true);
    loader.map_max_entries("events", 4096);
    let policy = WakeupPolicy::EveryRecord;
    let mut ebpf = bpfstream::aya::load(loader, object, policy)?;
    let mut source = bpfstream::aya::open(&ebpf, "events", policy, PerfOptions { pages_per_cpu: 1, wakeup: None })?;
    let program: &mut UProbe = ebpf.program_mut("handle_trigger").ok_or("no program handle_trigger")?.try_into()?;
    program.load()?;
    program.attach("tool_trigger", "/proc/self/exe", UProbeScope::CallingProcess)?;
    for seq in 0..COUNT {
        tool_trigger(seq);
    }
    drop(ebpf); // detaches the program
    let mut seen = Seen::default();
    let totals = source.finish(events::<ToolEvent, _>(|event| match event {
        Event::Record(e) if e.pid == tgid && e.comm.to_string() == comm => seen.seqs.push(e.seq),
        Event::Record(_) => seen.foreign += 1,
        Event::Lost(lost) => seen.dropped += lost.count,
        Event::Malformed(_) => seen.malformed += 1,
    }))?;
    let produced = totals.produced.ok_or("no drop counters")?;
    println!(
        "{name}: produced={produced} delivered={} dropped={} foreign={} malformed={}",
        totals.delivered, totals.dropped, seen.foreign, seen.malformed
    );
    let mut unique = seen.seqs.clone();
    unique.sort_unstable();
    unique.dedup();
    let ok = produced == COUNT
        && totals.delivered + totals.dropped == produced
        && seen.dropped == totals.dropped
        && totals.dropped > 0
        && seen.foreign == 0
        && seen.malformed == 0
        && unique.len() == seen.seqs.len()
        && unique.iter().all(|&s| s < COUNT);
    if !ok {
        return Err(format!("{name}: the accounting does not add up: {totals:?}, {seen:?}").into());
    }
    Ok(())
}

fn main() {
    for (name, object) in [("ring", RING), ("perf", PERF)] {
        if let Err(e) = run(name, object) {
            eprintln!("outside-tool: {e}");
            std::process::exit(1);
        }
    }
}

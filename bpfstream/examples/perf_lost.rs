//! A perf-buffer consumer that loses events, and hears about every one of them. Run as root:
//!
//! ```text
//! cargo run -p bpfstream --example perf_lost
//! ```
//!
//! One page per CPU and a burst nobody reads: most samples do not fit. The kernel counts them
//! and writes a `PERF_RECORD_LOST` into the buffer before the next sample that fits, which the
//! consumer hands over as an `Item::Lost`. The BPF side counts the same failures
//! (`bpfstream_stats`): both counts agree. (Given the counters with `with_counters`, an
//! `EventSource` combines the two and reports each loss once, whichever says it first; here it
//! has none, so the LOST records are all it reports.)

mod common;

use bpfstream::{DropCounters, EventSource, Item, PerfOptions, Transport};
use common::{pin_to_cpu, ping, PingOptions, PingProbe};

fn main() -> anyhow::Result<()> {
    pin_to_cpu(0)?; // all samples into CPU 0's buffer
    let mut probe = PingProbe::load(PingOptions::new(Transport::Perf))?;
    let mut perf = EventSource::open(probe.map("events")?, PerfOptions { pages_per_cpu: 1, wakeup: None })?;
    let mut counters = DropCounters::new(probe.map(DropCounters::MAP)?)?;
    probe.attach()?;

    let (mut records, mut lost) = (0u64, 0u64);
    let mut handler = |item: Item<'_>| match item {
        Item::Record(_) => records += 1,
        Item::Lost(l) => {
            println!("PERF_RECORD_LOST: {} samples lost on CPU {:?}", l.count, l.cpu);
            lost += l.count;
        }
    };

    // 300 samples of 228 bytes into 4 KiB: only the first few fit.
    for seq in 0..300 {
        ping(seq, 200);
    }
    perf.consume(&mut handler)?; // frees the buffer
    ping(300, 200); // the kernel writes its LOST record ahead of this sample
    perf.consume(&mut handler)?;
    probe.detach();

    let bpf_side = counters.total()?;
    let produced = bpf_side.produced.unwrap_or(0);
    println!(
        "{records} records and {lost} reported lost by the kernel; the BPF side counted {produced} produced, {} dropped",
        bpf_side.dropped
    );
    assert!(lost > 0, "the burst should overflow the buffer");
    assert_eq!(lost, bpf_side.dropped);
    assert_eq!(records + lost, produced);
    Ok(())
}

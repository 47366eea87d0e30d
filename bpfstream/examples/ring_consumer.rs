//! A blocking ring-buffer consumer: load a BPF object with aya, hand its ring to bpfstream, poll
//! records as borrowed `&[u8]` (zero copy) and decode them safely. Run as root:
//!
//! ```text
//! cargo run -p bpfstream --example ring_consumer
//! ```
//!
//! The object is the ping probe (`bpf/ping.bpf.c`): a uprobe on a function of this program, so
//! the example produces its own events.

mod common;

use std::time::{Duration, Instant};

use bpfstream::{Event, Transport};
use common::{ping, PingEvent, PingOptions, PingProbe};

fn main() -> anyhow::Result<()> {
    let mut probe = PingProbe::load(PingOptions::new(Transport::Ring))?;
    let mut source = probe.source()?;
    probe.attach()?;

    for seq in 0..5 {
        ping(seq, 0);
    }

    // The handler borrows `seen` (no 'static, no Arc): consume and poll run it in place.
    let mut seen = Vec::new();
    let mut handler = bpfstream::events(|event: Event<PingEvent>| match event {
        Event::Record(ping) => seen.push(ping.seq),
        Event::Lost(lost) => eprintln!("{} records lost", lost.count),
        Event::Malformed(error) => eprintln!("bad record: {error}"),
    });
    while source.totals().delivered < 5 {
        source.poll(Some(Duration::from_millis(100)), &mut handler)?;
    }

    // Detach the producer, then drain: what is left, and the final drop count.
    probe.detach();
    let totals = source.finish(Instant::now() + Duration::from_secs(1), &mut handler)?;
    drop(handler);
    println!("records {seen:?}");
    println!(
        "delivered {} + dropped {} = produced {:?}; fill {:?}",
        totals.delivered,
        totals.dropped,
        totals.produced,
        source.stats().fill
    );
    assert_eq!(seen, [0, 1, 2, 3, 4]);
    Ok(())
}

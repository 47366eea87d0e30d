//! One thread serving several buffers with priorities: a `Poller` over a ring buffer and a perf
//! buffer, with handlers that borrow local state (no `'static`, no `Arc<Mutex>`), stopped from
//! another thread by its `StopHandle`. Run as root:
//!
//! ```text
//! cargo run -p bpfstream --example poller
//! ```
//!
//! Two copies of the ping probe, one per transport, both see every ping.

mod common;

use std::time::Duration;

use bpfstream::{Item, Poller, Transport};
use common::{ping, PingOptions, PingProbe};

fn main() -> anyhow::Result<()> {
    let mut ring_probe = PingProbe::load(PingOptions::new(Transport::Ring))?;
    let mut perf_probe = PingProbe::load(PingOptions::new(Transport::Perf))?;
    let mut ring = ring_probe.source()?;
    let mut perf = perf_probe.source()?;
    ring_probe.attach()?;
    perf_probe.attach()?;

    // Local state the handlers borrow mutably for the poller's lifetime.
    let mut from_ring = Vec::new();
    let mut from_perf = Vec::new();
    let mut lost = 0;
    {
        let mut poller = Poller::new()?;
        // Urgent: served first, 64 records per turn.
        poller.add_with(&mut ring, 10, 64, |item: Item<'_>| match item {
            Item::Record(r) => from_ring.push(common::decode(r.data).expect("intact").0.seq),
            Item::Lost(l) => lost += l.count,
        })?;
        poller.add(&mut perf, |item: Item<'_>| {
            if let Item::Record(r) = item {
                from_perf.push(common::decode(r.data).expect("intact").0.seq);
            }
        })?;

        let stop = poller.stop_handle();
        let producer = std::thread::spawn(move || {
            for seq in 0..1000 {
                ping(seq, (seq % 300) as u32);
            }
            stop.drain(); // stop: the poller drains what is left, then returns
        });
        let handled = poller.run(Duration::from_millis(100))?;
        producer.join().expect("producer");
        println!("poller handled {handled} records");
    }
    ring_probe.detach();
    perf_probe.detach();
    println!(
        "ring: {} records, perf: {} records, lost {lost}; ring fill {:?}",
        from_ring.len(),
        from_perf.len(),
        ring.fill()
    );
    assert_eq!(from_ring, (0..1000).collect::<Vec<_>>());
    assert_eq!(from_perf.len(), 1000);
    Ok(())
}

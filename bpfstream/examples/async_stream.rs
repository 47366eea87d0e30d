//! An async stream of typed events on tokio, with stats watched from another task and a clean
//! end: detach the producer, ask the stream to drain, and it yields everything left (and the
//! final loss report) before it ends. Run as root:
//!
//! ```text
//! cargo run -p bpfstream --example async_stream
//! ```

mod common;

use std::time::Duration;

use bpfstream::stream::EventStream;
use bpfstream::{Event, Transport, WakeupPolicy};
use common::{ping, PingEvent, PingOptions, PingProbe};
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // No wakeups at all from the producers: the stream's delay timer bounds the latency.
    let options = PingOptions { wakeup: WakeupPolicy::Never, ..PingOptions::new(Transport::Ring) };
    let mut probe = PingProbe::load(options)?;
    let source = probe.source()?;
    probe.attach()?;

    let mut events = EventStream::typed::<PingEvent>(source)?;
    events.set_max_delay(Some(Duration::from_millis(10)));
    let cancel = events.stop_handle();
    let stats = events.stats_handle();

    let watcher = tokio::spawn(async move {
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let s = stats.read();
            println!(
                "so far: {} events, {} lost, {} timer passes, peak fill {} B",
                s.events, s.lost, s.timeouts, s.peak_fill
            );
        }
    });
    let producer = tokio::task::spawn_blocking(move || {
        for seq in 0..20_000 {
            ping(seq, 0);
        }
        probe.detach(); // nothing more will be produced...
        cancel.drain(); // ...so the stream can yield the rest and end
    });

    let (mut count, mut next_seq, mut lost) = (0u64, 0u64, 0u64);
    while let Some(event) = events.next().await {
        match event? {
            Event::Record(ping) => {
                assert!(ping.seq >= next_seq, "records come in order");
                next_seq = ping.seq + 1;
                count += 1;
            }
            Event::Lost(l) => lost += l.count,
            Event::Malformed(e) => eprintln!("{e}"),
        }
    }
    producer.await?;
    watcher.await?;
    println!("{count} records, {lost} lost; stream stats {:?}", events.stats());
    assert_eq!(count + lost, 20_000);
    Ok(())
}

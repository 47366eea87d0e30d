//! An async stream of typed events on tokio, its totals watched from another task, and a clean
//! end: detach the producer, ask the stream to drain, and it yields everything left (and the
//! final drop report) before it ends. Run as root:
//!
//! ```text
//! cargo run -p bpfstream --example async_stream
//! ```
//!
//! The runtime is tokio's current-thread one with IO and time enabled (tokio features `rt`,
//! `time`; `#[tokio::main]` would also need `macros`, and its default flavor
//! `rt-multi-thread`).

use std::time::Duration;

use aya::programs::uprobe::UProbeScope;
use aya::programs::UProbe;
use bpfstream::stream::EventStream;
use bpfstream::{Event, FromRecord, Options, WakeupPolicy};
use futures_util::StreamExt;

static PING: &[u8] = aya::include_bytes_aligned!("obj/ping.ring.bpf.o");

bpfstream::record! {
    /// `struct ping_event` of `bpf/ping.h`.
    pub struct Ping { pub seq: u64, pub len: u32, pub cpu: u32 }
}

/// The traced function: each call sends one record.
#[no_mangle]
#[inline(never)]
pub extern "C" fn bpfstream_ping(seq: u64, len: u32) {
    std::hint::black_box((seq, len));
}

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    // No wakeups at all from the producers: the stream's delay timer bounds the latency.
    let options = Options { wakeup: WakeupPolicy::Never, ..Options::default() };
    let tgid = std::process::id();
    let mut loader = aya::EbpfLoader::new();
    loader.override_global("targ_tgid", &tgid, true);
    let mut ebpf = bpfstream::aya::load(loader, PING, &options)?;
    let source = bpfstream::aya::open(&ebpf, "events", &options)?;
    let program: &mut UProbe = ebpf.program_mut("handle_ping").expect("the ping program").try_into()?;
    program.load()?;
    program.attach("bpfstream_ping", "/proc/self/exe", UProbeScope::CallingProcess)?;

    let totals = source.totals_handle();
    let mut events = EventStream::new(source, |r| Ping::from_record(r.data))?;
    events.set_max_delay(Some(Duration::from_millis(10)));
    let stop = events.stop_handle();

    let watcher = tokio::spawn(async move {
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let (t, fill) = (totals.read(), totals.fill());
            println!(
                "so far: {} delivered, {} dropped, {} timer passes, {} bytes waiting",
                t.delivered, t.dropped, t.timeouts, fill.used
            );
        }
    });
    let producer = tokio::task::spawn_blocking(move || {
        for seq in 0..20_000 {
            bpfstream_ping(seq, 0);
        }
        drop(ebpf); // detached: nothing more will be produced...
        stop.drain(); // ...so the stream can yield the rest and end
    });

    let (mut count, mut next_seq, mut dropped) = (0u64, 0u64, 0u64);
    while let Some(event) = events.next().await {
        match event? {
            Event::Record(ping) => {
                assert!(ping.seq >= next_seq, "records come in order");
                next_seq = ping.seq + 1;
                count += 1;
            }
            Event::Dropped(d) => dropped += d.count,
        }
    }
    producer.await?;
    watcher.await?;
    println!("{count} records, {dropped} dropped; totals {:?}", events.totals());
    assert_eq!(count + dropped, 20_000);
    Ok(())
}

//! One thread serving a ring buffer and a perf buffer by priority with a `Poller`: each source
//! has its own handler (which may borrow local state), the poller runs until a `StopHandle`
//! asks, and `finish` ends both exactly. Run as root:
//!
//! ```text
//! cargo run -p bpfstream --example poller
//! ```

use std::cell::Cell;
use std::time::{Duration, Instant};

use aya::programs::uprobe::UProbeScope;
use aya::programs::UProbe;
use bpfstream::{Dropped, Event, FromRecord, Options, Poller};

static RING: &[u8] = aya::include_bytes_aligned!("obj/ping.ring.bpf.o");
static PERF: &[u8] = aya::include_bytes_aligned!("obj/ping.perf.bpf.o");

bpfstream::record! {
    /// `struct ping_event` of `bpf/ping.h`.
    pub struct Ping { pub seq: u64, pub len: u32, pub cpu: u32 }
}

/// The traced function: each call sends one record to each object's stream.
#[no_mangle]
#[inline(never)]
pub extern "C" fn bpfstream_ping(seq: u64, len: u32) {
    std::hint::black_box((seq, len));
}

/// Loads `object` for this process and attaches its probe; returns it with its stream.
fn load(object: &[u8], options: &Options) -> anyhow::Result<(aya::Ebpf, bpfstream::EventSource)> {
    let tgid = std::process::id();
    let mut loader = aya::EbpfLoader::new();
    loader.override_global("targ_tgid", &tgid, true);
    let mut ebpf = bpfstream::aya::load(loader, object, options)?;
    let source = bpfstream::aya::open(&ebpf, "events", options)?;
    let program: &mut UProbe = ebpf.program_mut("handle_ping").expect("the ping program").try_into()?;
    program.load()?;
    program.attach("bpfstream_ping", "/proc/self/exe", UProbeScope::CallingProcess)?;
    Ok((ebpf, source))
}

fn main() -> anyhow::Result<()> {
    let options = Options::default();
    let (ring_ebpf, mut ring) = load(RING, &options)?;
    let (perf_ebpf, mut perf) = load(PERF, &options)?;
    let seq = |data: &[u8]| Ping::from_record(data).map(|p| p.seq);

    // Both handlers count drops: a Cell, which they share.
    let (mut from_ring, mut from_perf, dropped) = (Vec::new(), Vec::new(), Cell::new(0));
    let count = |d: Dropped| -> Result<(), bpfstream::Error> {
        dropped.set(dropped.get() + d.count);
        Ok(())
    };
    let mut poller = Poller::new()?;
    // The ring first: it is served before every batch of the perf buffer.
    poller.add(&mut ring, 10, |event| match event {
        Event::Record(r) => seq(r.data).map(|s| from_ring.push(s)),
        Event::Dropped(d) => count(d),
    })?;
    poller.add(&mut perf, 0, |event| match event {
        Event::Record(r) => seq(r.data).map(|s| from_perf.push(s)),
        Event::Dropped(d) => count(d),
    })?;
    let stop = poller.stop_handle();
    let producer = std::thread::spawn(move || {
        for seq in 0..1000 {
            bpfstream_ping(seq, (seq % 300) as u32);
        }
        stop.cancel(); // the producer is done: the poller returns
    });
    let handled = poller.run(Duration::from_millis(100))?;
    producer.join().expect("the producer");
    // Detach, then the rest of both, exactly.
    drop((ring_ebpf, perf_ebpf));
    let totals = poller.finish(Instant::now() + Duration::from_secs(1))?;
    drop(poller);
    let dropped = dropped.get();
    println!("run handled {handled}; ring {} records, perf {}, {dropped} dropped", from_ring.len(), from_perf.len());
    for (id, totals) in totals {
        println!("{id:?}: {} delivered + {} dropped of {:?}", totals.delivered, totals.dropped, totals.produced);
    }
    assert_eq!(from_ring, (0..1000).collect::<Vec<_>>());
    assert_eq!(from_perf.len() as u64 + dropped, 1000);
    Ok(())
}

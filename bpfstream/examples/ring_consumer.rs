//! A blocking ring-buffer consumer: load a BPF object with `bpfstream::aya::load`, open its
//! stream with `bpfstream::aya::open`, take records lent straight from the kernel's memory
//! (zero copy) with a handler and with the pull, decode them safely, and end exactly. Run as
//! root:
//!
//! ```text
//! cargo run -p bpfstream --example ring_consumer
//! ```
//!
//! The object is the ping probe (`bpf/ping.bpf.c`): a uprobe on `bpfstream_ping` below, so the
//! example produces its own records and nothing else on the machine adds to them.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use aya::programs::uprobe::UProbeScope;
use aya::programs::UProbe;
use bpfstream::{Event, FromRecord, Options};

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
    let options = Options::default(); // a 256 KiB ring, the kernel's own wakeups
    let tgid = std::process::id();
    let mut loader = aya::EbpfLoader::new();
    loader.override_global("targ_tgid", &tgid, true); // this process's pings only
    let mut ebpf = bpfstream::aya::load(loader, PING, &options)?;
    let mut source = bpfstream::aya::open(&ebpf, "events", &options)?;
    let program: &mut UProbe = ebpf.program_mut("handle_ping").expect("the ping program").try_into()?;
    program.load()?;
    program.attach("bpfstream_ping", "/proc/self/exe", UProbeScope::CallingProcess)?;

    for seq in 0..10 {
        bpfstream_ping(seq, 0);
    }
    // A handler may borrow local state (no 'static, no Arc): poll runs it in place. This one
    // stops after five records: the rest stays in the ring, for the pull below.
    let mut seqs = Vec::new();
    while seqs.len() < 5 {
        source.poll(Some(Duration::from_millis(100)), |event| {
            match event {
                Event::Record(record) => seqs.extend(Ping::from_record(record.data).map(|p| p.seq)),
                Event::Dropped(dropped) => eprintln!("{} records dropped", dropped.count),
            }
            if seqs.len() < 5 {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        })?;
    }
    // The pull: the batch's records are lent until the next call on the source.
    for event in source.read(Some(Duration::from_millis(100)))? {
        if let Event::Record(record) = event {
            seqs.push(Ping::from_record(record.data)?.seq);
        }
    }

    // Detach the producer, then the exact end: what is left, and totals that add up.
    drop(ebpf);
    let totals = source.finish(Instant::now() + Duration::from_secs(1), |_| ())?;
    println!("records {seqs:?}");
    println!("{} delivered + {} dropped of {:?} produced", totals.delivered, totals.dropped, totals.produced);
    assert_eq!(seqs, (0..10).collect::<Vec<_>>());
    assert_eq!(totals.produced, Some(totals.delivered + totals.dropped));
    Ok(())
}

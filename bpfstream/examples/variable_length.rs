//! Records of variable length, in both transports: a fixed header (`struct ping_event`) and
//! `len` bytes of data, sent with `bpfstream_output` from a per-CPU scratch buffer. A decoder
//! reads the header with `FromRecord::from_record_prefix` and the data from the tail, while the
//! record is still in the kernel's memory (only what the value keeps is copied). Run as root:
//!
//! ```text
//! cargo run -p bpfstream --example variable_length
//! ```

use std::time::{Duration, Instant};

use aya::programs::uprobe::UProbeScope;
use aya::programs::UProbe;
use bpfstream::stream::EventStream;
use bpfstream::{Error, Event, FromRecord, Options, Record};

static RING: &[u8] = aya::include_bytes_aligned!("obj/ping.ring.bpf.o");
static PERF: &[u8] = aya::include_bytes_aligned!("obj/ping.perf.bpf.o");

bpfstream::record! {
    /// `struct ping_event` of `bpf/ping.h`; `len` bytes of data follow it.
    #[derive(Debug)]
    pub struct PingHeader { pub seq: u64, pub len: u32, pub cpu: u32 }
}

/// A ping with its data.
#[derive(Debug)]
struct Ping {
    header: PingHeader,
    data: Vec<u8>,
}

/// The header, then `len` bytes of the tail (a perf record's tail carries padding too).
fn decode(record: Record<'_>) -> Result<Ping, Error> {
    let (header, tail) = PingHeader::from_record_prefix(record.data)?;
    let data = tail.get(..header.len as usize).ok_or(Error::Malformed {
        type_name: "PingHeader and its data",
        needed: std::mem::size_of::<PingHeader>() + header.len as usize,
        actual: record.data.len(),
    })?;
    Ok(Ping { header, data: data.to_vec() })
}

/// The traced function: each call sends one record of `len` bytes of data.
#[no_mangle]
#[inline(never)]
pub extern "C" fn bpfstream_ping(seq: u64, len: u32) {
    std::hint::black_box((seq, len));
}

fn main() -> anyhow::Result<()> {
    let lens = [1u32, 7, 8, 100, 1000, 4096];
    for (name, object) in [("ring", RING), ("perf", PERF)] {
        let options = Options::default();
        let tgid = std::process::id();
        let mut loader = aya::EbpfLoader::new();
        loader.override_global("targ_tgid", &tgid, true);
        let mut ebpf = bpfstream::aya::load(loader, object, &options)?;
        let source = bpfstream::aya::open(&ebpf, "events", &options)?;
        let program: &mut UProbe = ebpf.program_mut("handle_ping").expect("the ping program").try_into()?;
        program.load()?;
        program.attach("bpfstream_ping", "/proc/self/exe", UProbeScope::CallingProcess)?;
        for (seq, &len) in lens.iter().enumerate() {
            bpfstream_ping(seq as u64, len);
        }
        drop(ebpf);

        // A blocking pull of a stream whose decoder makes each record a `Ping`.
        let mut pings = EventStream::new(source, decode)?;
        let mut seen = Vec::new();
        while seen.len() < lens.len() {
            match pings.next_blocking(Some(Duration::from_secs(1)))? {
                Some(Event::Record(ping)) => seen.push(ping),
                Some(Event::Dropped(d)) => eprintln!("{} dropped", d.count),
                None => anyhow::bail!("{name}: records missing"),
            }
        }
        for p in &seen {
            let intact = p.data.iter().enumerate().all(|(i, &b)| b == (p.header.seq as u8).wrapping_add(i as u8));
            println!("{name}: seq {} data {:>4} B, intact: {intact}", p.header.seq, p.header.len);
            assert!(intact);
        }
        let (mut sources, _) = pings.into_sources();
        let totals = sources[0].finish(Instant::now() + Duration::from_secs(1), |_| ())?;
        assert_eq!((totals.delivered, totals.produced), (lens.len() as u64, Some(lens.len() as u64)));
    }
    Ok(())
}

//! Variable-length records: a fixed header followed by as many bytes as the event needs (the
//! BPF side sends them with `bpfstream_output`, exactly header + len bytes on a ring; perf pads
//! to 8 bytes). Decode the header with `FromRecord::from_record_prefix`, and copy out only the
//! tail the header announces. Run as root:
//!
//! ```text
//! cargo run -p bpfstream --example variable_length
//! ```

mod common;

use std::time::{Duration, Instant};

use bpfstream::{decoding, Event, TypedError};
use bpfstream::{FromRecord, Record, Transport};
use common::{ping, PingEvent, PingOptions, PingProbe};

/// A decoded ping: the header and its data, owned.
#[derive(Debug)]
struct Ping {
    header: PingEvent,
    data: Vec<u8>,
    record_len: usize,
}

/// Header + tail, with the tail's length checked against the header.
fn decode(record: Record<'_>) -> Result<Ping, TypedError> {
    let (header, tail) = PingEvent::from_record_prefix(record.data)?;
    let data = tail.get(..header.len as usize).ok_or(TypedError {
        type_name: "PingEvent + data",
        needed: std::mem::size_of::<PingEvent>() + header.len as usize,
        actual: record.data.len(),
    })?;
    Ok(Ping { header, data: data.to_vec(), record_len: record.data.len() })
}

fn main() -> anyhow::Result<()> {
    for transport in [Transport::Ring, Transport::Perf] {
        let mut probe = PingProbe::load(PingOptions::new(transport))?;
        let mut source = probe.source()?;
        probe.attach()?;
        let lens = [1u32, 7, 8, 100, 1000, 4096];
        for (seq, &len) in lens.iter().enumerate() {
            ping(seq as u64, len);
        }

        let mut pings = Vec::new();
        let mut handler = decoding(decode, |event: Event<Ping>| match event {
            Event::Record(p) => pings.push(p),
            Event::Lost(l) => eprintln!("lost {}", l.count),
            Event::Malformed(e) => eprintln!("malformed: {e}"),
        });
        while source.totals().delivered < lens.len() as u64 {
            source.poll(Some(Duration::from_millis(100)), &mut handler)?;
        }
        probe.detach();
        source.finish(Instant::now() + Duration::from_secs(1), &mut handler)?;
        drop(handler);

        for p in &pings {
            let intact = p.data.iter().enumerate().all(|(i, &b)| b == (p.header.seq as u8).wrapping_add(i as u8));
            println!(
                "{transport}: seq {} data {:>4} B, record {:>4} B, data intact: {intact}",
                p.header.seq, p.header.len, p.record_len
            );
            assert!(intact);
        }
        assert_eq!(pings.iter().map(|p| p.header.len).collect::<Vec<_>>(), lens);
    }
    Ok(())
}

//! A perf buffer that overflows: the drops arrive as `Event::Dropped`, each once, whether the
//! BPF side's drop counters or the kernel's `PERF_RECORD_LOST` record tells first, and
//! delivered + dropped == produced. Run as root:
//!
//! ```text
//! cargo run -p bpfstream --example perf_lost
//! ```

use std::time::{Duration, Instant};

use aya::programs::uprobe::UProbeScope;
use aya::programs::UProbe;
use bpfstream::{DropOrigin, Event, Options, Record};

static PING: &[u8] = aya::include_bytes_aligned!("obj/ping.perf.bpf.o");

/// The traced function: each call sends one record of `len` bytes of data.
#[no_mangle]
#[inline(never)]
pub extern "C" fn bpfstream_ping(seq: u64, len: u32) {
    std::hint::black_box((seq, len));
}

fn main() -> anyhow::Result<()> {
    let options = Options { buffer_bytes: Some(4096), ..Options::default() }; // one page per CPU
    let tgid = std::process::id();
    let mut loader = aya::EbpfLoader::new();
    loader.override_global("targ_tgid", &tgid, true);
    let mut ebpf = bpfstream::aya::load(loader, PING, &options)?;
    let mut perf = bpfstream::aya::open(&ebpf, "events", &options)?;
    let program: &mut UProbe = ebpf.program_mut("handle_ping").expect("the ping program").try_into()?;
    program.load()?;
    program.attach("bpfstream_ping", "/proc/self/exe", UProbeScope::CallingProcess)?;

    let (mut records, mut lost) = (0u64, 0u64);
    let mut handler = |event: Event<Record<'_>>| match event {
        Event::Record(_) => records += 1,
        Event::Dropped(dropped) => {
            let by = match dropped.origin {
                DropOrigin::PerfLostRecord => "PERF_RECORD_LOST",
                DropOrigin::DropCounter => "the drop counters",
            };
            println!("{} dropped on CPU {:?}, told by {by}", dropped.count, dropped.cpu);
            lost += dropped.count;
        }
    };
    pin_to_cpu_0()?; // every sample into one CPU's buffer
    for seq in 0..300 {
        bpfstream_ping(seq, 200); // far more than a page holds
    }
    perf.consume(&mut handler)?; // the counters tell of the drops; this frees the buffer...
    bpfstream_ping(300, 200); // ...and the kernel writes its LOST record ahead of this sample
    perf.consume(&mut handler)?; // the same drops: not reported again
    drop(ebpf);
    let totals = perf.finish(Instant::now() + Duration::from_secs(1), &mut handler)?;
    println!("{records} records, {lost} dropped; totals {totals:?}");
    assert!(lost > 0, "the burst should overflow the buffer");
    assert_eq!((records, lost), (totals.delivered, totals.dropped));
    assert_eq!(totals.produced, Some(301));
    Ok(())
}

/// Pins the calling thread to CPU 0.
fn pin_to_cpu_0() -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it, and
    // sched_setaffinity reads it for the calling thread (0).
    let status = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if status == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

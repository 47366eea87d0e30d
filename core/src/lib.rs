//! What every command of the `bpfstream` binary stands on: the tracers, `run` and the agent
//! (`bpfstream-cli`) as well as the experiments, `bench` and `lab` (`bpfstream-experiments`).
//!
//! - `objects`: the compiled BPF objects, embedded; `load`: loading and attaching one, and its
//!   buffer; `counters`: its per-CPU drop counters, read at any instant;
//! - `signals`, `privileges`, `limits`: the process's signals, the privileges it needs, and the
//!   limits an error comes from; `host`: page size and online CPUs; `tracefs`: mounted on demand;
//! - `values`, `size`: the command line's typed values; `output`: lines, cells and JSON lines.

/// `eprintln!` that never panics: when stderr has no reader any more (`2>&1 | head` after head
/// exits), the message is dropped instead of aborting a tracer in the middle of its drain.
#[macro_export]
macro_rules! eprintln_lossy {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `eprint!` that never panics (see [`eprintln_lossy`]).
#[macro_export]
macro_rules! eprint_lossy {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}

pub mod counters;
pub mod host;
pub mod limits;
pub mod load;
pub mod objects;
pub mod output;
pub mod privileges;
pub mod signals;
pub mod size;
pub mod tracefs;
pub mod values;

//! The life of every tracer, written once. A tool brings only its BPF objects, attach points,
//! globals and a sink for its events; the rest is here, one file per job:
//!
//! - `args`: the options every tracer takes, and the buffer and wakeup policy they make;
//! - `load`: transport, globals, loading, attaching, the event stream of the object;
//! - `run`: `Tracing...`, the loop that feeds the sink until a signal, `--duration` or a failed
//!   output;
//! - `stop`: detach, wait until no program can still run, drain to the last event;
//! - `summary`: the accounting, printed where it can still be read.

mod args;
mod load;
mod run;
mod stop;
mod summary;

pub use args::{BufferKind, BufferOptions, BurstBudget, CommonArgs, EventRate};
pub use load::{
    attach, load, load_error, map_fd, open_stream, task_filter_globals, Attach, Global, Objects, TracerSpec,
    COUNTERS_MAP, EVENTS_MAP,
};
pub use run::{Sink, Tracer};
pub use summary::is_broken_pipe;

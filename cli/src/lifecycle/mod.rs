//! The life of every tracer, written once, for one stream or several in one process. A tracer
//! brings only its BPF objects, attach points, globals and a [`Format`] (decoder and columns);
//! the rest is here, one file per job:
//!
//! - `args`: the options every tracer takes, and the buffer, wakeup policy and task filter they
//!   make;
//! - `start`: every stream loaded (`bpfstream_core::load`) and its buffer opened before any is
//!   attached;
//! - `plan`: a stream before it starts (tracer, buffer, outlet, how its format is made);
//! - `format`: what a tracer's events look like (its decoder and columns);
//! - `feed`: a stream's way from its buffer to stdout and the exporter, and its losses;
//! - `run`: one poller over every stream until a signal, the duration or a failed output (the
//!   agent's in rounds: between two, streams stop and start while the others run on);
//! - `stop`: detach, wait until no program can still run, drain every stream to its last event;
//! - `summary`: each stream's accounting, printed where it can still be read.
//!
//! ```text
//!  StreamSpec ──start()──▶ Loaded ──.stream(format, outlet, console)──▶ Stream ──run()──▶ Summary
//!   (tracer, maps,          (one per map:                              (source +        (one per
//!    name, priority)         attached, buffer open)                     Feed<F>)          map)
//! ```

mod args;
mod feed;
mod format;
mod plan;
mod run;
mod start;
mod stop;
mod summary;

pub use args::{task_filter_globals, tracer_buffer, BufferKind, BurstBudget, CommonArgs, EventRate};
pub use bpfstream_core::load::{load_error, Attach, BufferOptions, Global, TracerSpec, COUNTERS_MAP, EVENTS_MAP};
pub use feed::{Console, Outlet};
pub use format::Format;
pub use plan::{start_plans, trace, StreamPlan};
pub use run::RunningStreams;
pub use start::{Loaded, MapStream, Tracer};
pub use summary::Summary;

#[cfg(test)]
mod tests;

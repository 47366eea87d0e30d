//! A stream before it starts: its tracer and the maps it reads (one for a built-in tracer), and
//! for each map its buffer, where its events go, and how its [`Format`] is made once the object
//! is loaded (a tool's format may read the object's maps).
//! A one-tracer command runs one plan ([`trace`]); the agent runs one per `[[stream]]`: the same
//! start (every stream loaded before any is attached) and the same run.

use std::time::Duration;

use anyhow::Result;

use bpfstream_core::load::{BufferOptions, TracerSpec};

use super::feed::{Console, Outlet};
use super::format::Format;
use super::run::{run, Stream};
use super::start::{start, Loaded, MapStream, StreamSpec, Tracer};
use crate::metrics::StreamMetrics;

/// Makes a loaded stream's way out: its format, on its outlet.
type MakeStream<'t> = Box<dyn FnOnce(Loaded, Outlet, &Console) -> Result<Stream> + 't>;

/// A map's way out once loaded: its outlet, and how its format is made.
struct Way<'t> {
    outlet: Outlet,
    make: MakeStream<'t>,
}

/// One stream to start: a tracer and its maps, each with its way out (a built-in tracer has one,
/// `bpfstream run` one per `--map`).
pub struct StreamPlan<'t> {
    spec: StreamSpec<'t>,
    ways: Vec<Way<'t>>,
    metrics: Option<StreamMetrics>,
}

impl<'t> StreamPlan<'t> {
    /// `tracer` on `buffer`, its events out through `outlet` in the format `format` makes of
    /// the loaded stream.
    pub fn new<F: Format>(
        tracer: TracerSpec,
        buffer: BufferOptions,
        outlet: Outlet,
        format: impl FnOnce(&mut Loaded) -> Result<F> + 't,
    ) -> Self {
        let map = MapStream::events(&tracer, buffer);
        StreamPlan::of(tracer).with_map(map, outlet, format)
    }

    /// `tracer`'s object, yet without a map to stream ([`with_map`](Self::with_map)).
    pub fn of(tracer: impl Tracer + 't) -> Self {
        let spec = StreamSpec { tracer: Box::new(tracer), maps: Vec::new(), name: None, priority: 0 };
        StreamPlan { spec, ways: Vec::new(), metrics: None }
    }

    /// Streams `map` too, its events out through `outlet` in the format `format` makes of the
    /// loaded stream (only the first map's holds the object, to take maps from). The first map's
    /// buffer loads the object (its wakeup policy).
    pub fn with_map<F: Format>(
        mut self,
        map: MapStream,
        outlet: Outlet,
        format: impl FnOnce(&mut Loaded) -> Result<F> + 't,
    ) -> Self {
        let make = move |mut loaded: Loaded, outlet: Outlet, console: &Console| {
            let format = format(&mut loaded)?;
            Ok(loaded.stream(format, outlet, console))
        };
        self.spec.maps.push(map);
        self.ways.push(Way { outlet, make: Box::new(make) });
        self
    }

    /// A stream of several: its events, loss reports and summary carry `"stream":name`, and a
    /// higher `priority` is served first.
    pub fn named(mut self, name: &str, priority: i32) -> Self {
        self.spec.name = Some(name.to_owned());
        self.spec.priority = priority;
        self
    }

    /// Its events to the exporter only (see [`Outlet::export_only`]).
    pub fn export_only(mut self) -> Self {
        self.ways = self.ways.into_iter().map(|way| Way { outlet: way.outlet.export_only(), ..way }).collect();
        self
    }

    /// Publishes the stream's counters to `metrics` while it runs (at most every 200 ms), and
    /// its summary's at the stop; it is attached from its start to its stop. With several
    /// maps, the first map's.
    pub fn measured(mut self, metrics: StreamMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

/// A one-tracer command: its one stream run until stopped (or for `duration`), then its
/// summary; fails when stdout failed (but for a reader that left).
pub fn trace(plan: StreamPlan<'_>, duration: Option<Duration>) -> Result<()> {
    let console = Console::process();
    run(start_plans(vec![plan], &console)?, duration, &console)?;
    console.check()
}

/// Connects the plans' `--output`s (one connection per engine, shared by every stream and map
/// that ships to it), then starts every plan (nothing attached unless every one loaded): the
/// streams, each on its way out to `console` or its exporter.
pub fn start_plans(mut plans: Vec<StreamPlan<'_>>, console: &Console) -> Result<Vec<Stream>> {
    crate::export::connect(plans.iter_mut().flat_map(|p| p.ways.iter_mut().map(|way| way.outlet.tee_mut())))?;
    let (specs, ways): (Vec<_>, Vec<_>) = plans.into_iter().map(|p| (p.spec, (p.ways, p.metrics))).unzip();
    let loaded = start(specs)?;
    // Each map's way; the plan's metrics go to its first map's stream.
    let ways = ways.into_iter().flat_map(|(ways, mut metrics)| ways.into_iter().map(move |way| (way, metrics.take())));
    let make = |(loaded, (way, metrics)): (Loaded, (Way<'_>, Option<StreamMetrics>))| {
        (way.make)(loaded, way.outlet, console).map(|mut stream| {
            stream.metrics = metrics;
            stream
        })
    };
    loaded.into_iter().zip(ways).map(make).collect()
}

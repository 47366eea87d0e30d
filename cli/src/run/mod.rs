//! `bpfstream run OBJECT.bpf.o`: any BPF program's events, decoded from its BTF, with the
//! lifecycle every built-in tracer has (exact accounting where the object counts, loss lines,
//! the bounded stop, `--json`, `--output`).
//!
//! - `object`: what the object holds (ELF + BTF, no kernel needed), on `btf`, our BTF reader;
//! - `decode`: the record struct compiled once into a plan, applied to every record;
//! - `attach`: where each program attaches, from its section name;
//! - `globals`: `--set NAME=VALUE`, typed from BTF;
//! - `describe`: `--describe`;
//! - `sink`: the records' format (JSON fields, table columns) for the lifecycle.
//!
//! Everything about the object is checked before anything is loaded: a bad object or option is
//! one line and exit 2.

mod attach;
mod btf;
mod decode;
mod describe;
mod globals;
pub(crate) mod object;
mod sink;

use std::path::PathBuf;

use self::attach::{Attachment, UprobeTarget};
use self::btf::{Kind, TypeId};
use self::decode::Plan;
use self::globals::Setting;
use self::object::{MapInfo, ObjectInfo, MAP_RINGBUF};
use self::sink::{MapLabel, Records};
use crate::container::ContainerArgs;
use crate::lifecycle::{
    load_error, tracer_buffer, BufferKind, BufferOptions, CommonArgs, EventRate, MapStream, Outlet, StreamPlan, Tracer,
    COUNTERS_MAP,
};
use anyhow::{anyhow, Result};
use aya::EbpfLoader;
use bpfstream::Transport;

const EXAMPLE: &str = r#"Example: bpf/examples/execsnoop.bpf.c, the exec tracer with a variable-length field

  #include "bpfstream.h"
  struct exec_record {
          __u64 ts_ns;
          __u32 pid;
          __u32 uid;
          char comm[16];
          __u16 filename_len;
          char filename[] __bpfstream_len(filename_len);  /* its length: filename_len */
  };
  BPFSTREAM_EXPORT_STRUCT(exec_record);        /* the record type, kept in the BTF */
  const volatile __u32 min_uid = 0;            /* --set min_uid=1000 */

  SEC("tp_btf/sched_process_exec")
  int BPF_PROG(handle_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
  {
          struct exec_record *e = bpfstream_scratch();
          ... /* fill it, read the name into e->filename */
          bpfstream_output(ctx, e, offsetof(struct exec_record, filename) + e->filename_len);
          return 0;
  }

  $ clang -g -O2 -target bpf -D__TARGET_ARCH_x86 -Ibpf/include -c execsnoop.bpf.c -o execsnoop.bpf.o
  $ bpfstream run execsnoop.bpf.o --describe       # maps, programs, globals, the record's layout
  $ sudo bpfstream run execsnoop.bpf.o
  Tracing struct exec_record records from execsnoop.bpf.o (map events) via ring buffer (256 KiB)... Hit Ctrl-C to end.
                 TS_NS        PID        UID COMM             FILENAME_LEN FILENAME
         2539688635120       8371          0 hello                      14 /tmp/ex2/hello
  ^C
  1 events, 0 dropped in 2.0 s via ring buffer (264 KiB mapped); produced 1
  $ sudo bpfstream run execsnoop.bpf.o --set min_uid=1000 --json --fields pid,comm,filename
  {"type":"exec_record","pid":8488,"comm":"hello","filename":"/tmp/ex2/hello"}

Several maps: --map events --map second ... streams each (one load, one poller, one stop); every
event carries "map":"NAME" and each map prints its own summary; one record type for all.

Attaches tracepoint/ tp/ raw_tp/ raw_tracepoint/ tp_btf/ uprobe uretprobe sections (kprobe/
kretprobe/ where the kernel has kprobes); maps of any type; CO-RE. Refused by name, exit 2:
kconfig and ksym externs, sections it cannot attach. README: "Your own program"."#;

/// `bpfstream run` options.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLE)]
pub struct RunArgs {
    /// The BPF object: an ELF file clang -target bpf -g wrote (BTF is required)
    #[arg(value_name = "OBJECT")]
    pub object: PathBuf,
    /// A map to stream, a ring buffer or perf event array (needed when the object has several;
    /// repeatable: each map is a stream, its events carry "map")
    #[arg(long, value_name = "NAME")]
    pub map: Vec<String>,
    /// The record struct (default: the one BPFSTREAM_EXPORT_STRUCT names)
    #[arg(long = "type", value_name = "STRUCT")]
    pub record_type: Option<String>,
    /// Set a read-only global (const volatile) before loading, typed from its BTF: an integer,
    /// true/false, an enum's name, a string (\xNN for any byte)
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = globals::parse_assignment)]
    pub set: Vec<(String, String)>,
    /// Where uprobe programs without a function in their section (SEC("uprobe")) attach
    #[arg(long, value_name = "PATH:SYMBOL[+OFFSET]")]
    pub uprobe: Vec<UprobeTarget>,
    /// Attach only these programs (repeatable; default: every program of the object)
    #[arg(long, value_name = "NAME")]
    pub program: Vec<String>,
    /// The fields to show, in this order (default: every field of the record)
    #[arg(long, value_name = "a,b,c", value_delimiter = ',')]
    pub fields: Option<Vec<String>>,
    /// Print the object's maps, programs, read-only globals and record layout, and exit
    #[arg(long)]
    pub describe: bool,
    #[command(flatten)]
    pub common: CommonArgs,
    /// `--cgroup-path`, for records with a `cgroup_id` (`__u64`).
    #[command(flatten)]
    pub container: ContainerArgs,
}

/// Everything checked before loading.
struct Prepared {
    label: String,
    bytes: Vec<u8>,
    object: ObjectInfo,
    /// The maps streamed, each a stream of the run (`"map"` on its lines when several).
    maps: Vec<MapInfo>,
    plan: Plan,
    ts_at: Option<usize>,
    cgroup_at: Option<usize>,
    attachments: Vec<Attachment>,
    settings: Vec<Setting>,
}

pub fn run(args: RunArgs) -> Result<()> {
    if args.describe {
        return describe(&args);
    }
    let prepared = prepare(&args).unwrap_or_else(|text| refuse(&text));
    let duration = args.common.duration;
    crate::lifecycle::trace(plan(&args, prepared)?, duration)
}

/// The stream of `args`, whose object and options `check` found valid.
pub fn plan_checked(args: &RunArgs) -> Result<StreamPlan<'static>> {
    let prepared = prepare(args).map_err(|text| anyhow::anyhow!(text))?;
    plan(args, prepared)
}

/// Checks the object and options of `args` as `bpfstream run` does before loading: the reason
/// in one line when they are refused.
pub fn check(args: &RunArgs) -> Result<(), String> {
    if args.describe {
        return Err("--describe prints and exits: a stream runs".into());
    }
    match prepare(args)?.maps.len() {
        1 => Ok(()),
        _ => Err("an agent's run stream streams one map: one [[stream]] per --map".into()),
    }
}

/// A bad object or option: one line, exit 2 (nothing is loaded yet).
fn refuse(text: &str) -> ! {
    eprintln_lossy!("bpfstream: {text}");
    std::process::exit(2)
}

fn read(args: &RunArgs) -> Result<(String, Vec<u8>, ObjectInfo), String> {
    let label = args.object.display().to_string();
    let bytes = std::fs::read(&args.object).map_err(|e| format!("{label}: {e}"))?;
    let object = ObjectInfo::read(&bytes).map_err(|e| format!("{label}: {e}"))?;
    Ok((label, bytes, object))
}

fn describe(args: &RunArgs) -> Result<()> {
    let (label, _, object) = read(args).unwrap_or_else(|text| refuse(&text));
    let choices = describe::Choices {
        events_maps: events_maps(&object, &args.map).map(|maps| maps.iter().map(|m| m.name.as_str()).collect()),
        record: record_type(&object, args.record_type.as_deref()),
        programs: &args.program,
        uprobes: &args.uprobe,
    };
    let mut text = describe::describe(&label, &object, &choices);
    let attachments = attach::plan(&object, &args.program, &args.uprobe, attach::kernel_has_kprobes());
    let extra = attachments.as_deref().ok().and_then(attach::extra_privileges);
    text.push_str(&format!("privileges: CAP_BPF + CAP_PERFMON{}\n", extra.map_or(String::new(), |e| format!("; {e}"))));
    print!("{text}");
    Ok(())
}

fn prepare(args: &RunArgs) -> Result<Prepared, String> {
    let (label, bytes, object) = read(args)?;
    if !object.externs.is_empty() {
        let names: Vec<String> = object.externs.iter().map(|e| format!("{} ({})", e.name, e.describe())).collect();
        return Err(format!("{label}: bpfstream's loader (aya) cannot resolve externs: {}", names.join(", ")));
    }
    let maps: Vec<MapInfo> =
        events_maps(&object, &args.map).map_err(|e| format!("{label}: {e}"))?.into_iter().cloned().collect();
    for map in &maps {
        check_transport(&args.common, map, &object)?;
    }
    let (record, _) = record_type(&object, args.record_type.as_deref()).map_err(|e| format!("{label}: {e}"))?;
    let mut plan = Plan::compile(&object.btf, record).map_err(|e| format!("{label}: record type: {e}"))?;
    if let Some(fields) = &args.fields {
        plan.select(fields)?;
    }
    let ts_at = plan.u64_field("ts_ns");
    if (args.common.timestamp || args.common.elapsed) && ts_at.is_none() {
        return Err(format!("-T and --elapsed read the record's ts_ns (__u64), which struct {} has not", plan.name));
    }
    let cgroup_at = plan.u64_field("cgroup_id");
    if args.container.cgroup_path && cgroup_at.is_none() {
        return Err(format!("--cgroup-path reads the record's cgroup_id (__u64), which struct {} has not", plan.name));
    }
    let attachments = attach::plan(&object, &args.program, &args.uprobe, attach::kernel_has_kprobes())
        .map_err(|e| format!("{label}: {e}"))?;
    let settings = globals::settings(&object, &args.common, &args.set)?;
    Ok(Prepared { label, bytes, object, maps, plan, ts_at, cgroup_at, attachments, settings })
}

/// The maps to stream: each `--map` (in the order given), or the one ring buffer or perf event
/// array.
fn events_maps<'a>(object: &'a ObjectInfo, wanted: &[String]) -> Result<Vec<&'a MapInfo>, String> {
    if wanted.is_empty() {
        let events: Vec<&MapInfo> = object.maps.iter().filter(|m| m.is_events()).collect();
        return match events[..] {
            [_] => Ok(events),
            [] => Err("the object has no ring buffer or perf event array map to stream".into()),
            _ => {
                let names: Vec<&str> = events.iter().map(|m| m.name.as_str()).collect();
                Err(format!(
                    "the object has several events maps ({}): choose with --map NAME (repeatable: each is a stream)",
                    names.join(", ")
                ))
            }
        };
    }
    let mut maps = Vec::with_capacity(wanted.len());
    for (i, name) in wanted.iter().enumerate() {
        match object.map(name) {
            _ if wanted[..i].contains(name) => return Err(format!("--map {name} is given twice")),
            Some(m) if m.is_events() => maps.push(m),
            Some(_) => return Err(format!("--map {name}: not a ring buffer or perf event array")),
            None => return Err(format!("--map {name}: the object has no map {name}{}", events_names(object))),
        }
    }
    Ok(maps)
}

/// ` (its events maps: a, b)`, or nothing when it has none.
fn events_names(object: &ObjectInfo) -> String {
    let names: Vec<&str> = object.maps.iter().filter(|m| m.is_events()).map(|m| m.name.as_str()).collect();
    if names.is_empty() {
        String::new()
    } else {
        format!(" (its events maps: {})", names.join(", "))
    }
}

/// The record struct: `--type`, or the one `BPFSTREAM_EXPORT_STRUCT` names; with how it was found.
fn record_type(object: &ObjectInfo, wanted: Option<&str>) -> Result<(TypeId, &'static str), String> {
    let btf = &object.btf;
    let find = |name: &str| {
        let defined = |k: &Kind| matches!(k, Kind::Struct { .. } | Kind::Union { .. });
        btf.find(name, defined).or_else(|| {
            let id = btf.find(name, |k| matches!(k, Kind::Typedef(_)))?;
            btf.resolve(id).ok().filter(|&r| defined(&btf.get(r).kind))
        })
    };
    let missing = |name: &str| {
        format!(
            "no struct {name} in the object's BTF (a struct used only through pointer casts is not kept: \
             add BPFSTREAM_EXPORT_STRUCT({name}) from bpfstream.h)"
        )
    };
    match (wanted, &object.exported[..]) {
        (Some(name), _) => find(name).map(|id| (id, "--type")).ok_or_else(|| missing(name)),
        (None, [one]) => find(one).map(|id| (id, "BPFSTREAM_EXPORT_STRUCT")).ok_or_else(|| missing(one)),
        (None, []) => Err("the object names no record type: give --type STRUCT, or keep the struct in its BTF \
                           with BPFSTREAM_EXPORT_STRUCT(name) (bpfstream.h)"
            .into()),
        (None, several) => {
            Err(format!("the object exports several record types ({}): choose one with --type", several.join(", ")))
        }
    }
}

/// `--buffer` must be the object's transport; `--wakeup` on a ring needs bpfstream.h's policy.
fn check_transport(common: &CommonArgs, map: &MapInfo, object: &ObjectInfo) -> Result<(), String> {
    let ring = map.map_type == MAP_RINGBUF;
    match common.buffer {
        Some(BufferKind::Perf) if ring => {
            return Err(format!(
                "--buffer perf: the object's map {} is a ring buffer (a perf build of it has a perf event array; \
                 bpfstream.h makes one with -DBPFSTREAM_PERF)",
                map.name
            ))
        }
        Some(BufferKind::Ring) if !ring => {
            return Err(format!("--buffer ring: the object's map {} is a perf event array", map.name))
        }
        _ => {}
    }
    if ring && common.wakeup.is_some() && object.global("bpfstream_wakeup_policy").is_none() {
        return Err(
            "--wakeup: the object's programs choose their own ring wakeups (it does not use bpfstream.h)".into()
        );
    }
    Ok(())
}

/// The drop counters of `map`: `<map>_stats` (a `BPFSTREAM_STREAM`), or bpfstream.h's default
/// stream's `bpfstream_stats` when `map` is that stream: named `events`, or the only events map
/// without counters of its own. `None`: the object sends without bpfstream.h's counters.
fn counters_map(object: &ObjectInfo, map: &str) -> Option<String> {
    let own = format!("{map}_stats");
    if object.map(&own).is_some() {
        return Some(own);
    }
    object.map(COUNTERS_MAP)?;
    let uncounted: Vec<&MapInfo> =
        object.maps.iter().filter(|m| m.is_events() && object.map(&format!("{}_stats", m.name)).is_none()).collect();
    let default_stream = map == crate::lifecycle::EVENTS_MAP || matches!(uncounted[..], [only] if only.name == map);
    default_stream.then(|| COUNTERS_MAP.to_owned())
}

/// The stream of the object's maps (each a stream of its own, its lines and summary with
/// `"map"` when there are several): a plan, run alone by `bpfstream run` or as one of the
/// agent's.
fn plan(args: &RunArgs, p: Prepared) -> Result<StreamPlan<'static>> {
    let width = p.maps.iter().map(|m| m.name.chars().count()).max().unwrap_or(0);
    let several = p.maps.len() > 1;
    let mut maps = Vec::with_capacity(p.maps.len());
    for (i, map) in p.maps.iter().enumerate() {
        let label = several.then(|| MapLabel { name: map.name.clone(), width, first: i == 0 });
        maps.push(map_stream(args, &p, map, label)?);
    }
    let rings = maps.iter().filter(|(m, ..)| m.buffer.transport == Some(Transport::Ring));
    let rings = rings.map(|(m, ..)| (m.map.clone(), m.buffer.size)).collect();
    let mut plan = StreamPlan::of(ObjectTracer { p, rings });
    for (map, outlet, records) in maps {
        plan = plan.with_map(map, outlet, |_| Ok(records));
    }
    Ok(plan)
}

/// `map`'s stream: its buffer and counters, its outlet (`--output` connects now), its records.
fn map_stream(
    args: &RunArgs,
    p: &Prepared,
    map: &MapInfo,
    label: Option<MapLabel>,
) -> Result<(MapStream, Outlet, Records)> {
    let counters = counters_map(&p.object, &map.name);
    let (common, buffer) = buffer_options(&args.common, map, counters.is_some());
    let outlet = Outlet::start(&common, &args.container)?;
    let records = Records::new(p.plan.clone(), p.ts_at, p.cgroup_at, counters.is_some(), label);
    let what = format!("struct {} records from {} (map {})", p.plan.name, file_name(args, p), map.name);
    Ok((MapStream { what, map: map.name.clone(), counters, buffer }, outlet, records))
}

fn file_name(args: &RunArgs, p: &Prepared) -> String {
    args.object.file_name().map_or(p.label.clone(), |f| f.to_string_lossy().into_owned())
}

/// The object as the tracer of its maps' streams: loaded with its settings and its streamed
/// rings' sizes, its programs attached from their sections.
struct ObjectTracer {
    p: Prepared,
    /// The ring buffers streamed, with their sizes.
    rings: Vec<(String, u64)>,
}

impl Tracer for ObjectTracer {
    fn load(&self, buffer: &BufferOptions) -> Result<aya::Ebpf> {
        load(&self.p, buffer, &self.rings)
    }
    fn attach(&self, bpf: &mut aya::Ebpf) -> Result<()> {
        attach::attach(bpf, &self.p.attachments)
    }
}

/// The common options with `map`'s transport, and its buffer: `--buffer-size`, else a ring sent
/// to without bpfstream.h's counters as its author sized it, else the tracers' default.
fn buffer_options(args: &CommonArgs, map: &MapInfo, counted: bool) -> (CommonArgs, BufferOptions) {
    let ring = map.map_type == MAP_RINGBUF;
    let mut common = args.clone();
    common.buffer = Some(if ring { BufferKind::Ring } else { BufferKind::Perf });
    let mut options = tracer_buffer(&common, EventRate::Moderate);
    if let (true, false, None, Some(declared)) = (ring, counted, common.buffer_size, map.max_entries) {
        options.size = u64::from(declared);
    }
    (common, options)
}

/// Loads the object with its settings, the wakeup policy of `options` and the sizes of the
/// `rings` streamed (nothing attached yet).
fn load(p: &Prepared, options: &BufferOptions, rings: &[(String, u64)]) -> Result<aya::Ebpf> {
    let mut loader = EbpfLoader::new();
    // Maps aya has no userspace type for (task storage, ...) are still created for the programs.
    loader.allow_unsupported_maps();
    for s in &p.settings {
        loader.override_global(s.name.as_str(), s.bytes.as_slice(), true);
    }
    for (map, size) in rings {
        let size = u32::try_from(*size).map_err(|_| anyhow!("buffer size {size} is too large"))?;
        loader.map_max_entries(map, size);
    }
    // bpfstream.h's wakeup globals, where the object has them; the streamed rings alone are
    // sized (above: an object of any origin may have other rings, which keep their sizes).
    let library = bpfstream::Options { buffer_bytes: None, ..options.library() };
    let loaded = match bpfstream::aya::load(loader, &p.bytes, &library) {
        Err(bpfstream::Error::Load(e)) => Err(e),
        loaded => return Ok(loaded?),
    };
    loaded.map_err(|e| {
        let error = load_error(&p.label, e);
        if format!("{error:#}").contains("array index out of bounds") {
            // e.g. struct bpf_raw_tracepoint_args's args[1]: libbpf relocates it, aya does not
            return anyhow!(
                "{error:#} (bpfstream's loader cannot relocate an index past 0 into a flexible array member: \
                 read raw tracepoint arguments as __u64 *ctx)"
            );
        }
        error
    })
}

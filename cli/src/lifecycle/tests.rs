//! Several streams in one run, on the real kernel: `syscalls` and `open` streams of one thread of
//! this process, named and prioritized, served by one poller, stopped and drained together; each
//! stream's lines and summary carry its name, and its accounting is exact on its own, including
//! what stdout did not take.

#[path = "../../../bpfstream/tests/support/time_scale.rs"]
mod time_scale;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::Duration;

use bpfstream_core::load::{BufferOptions, TracerSpec};
use clap::Parser;
use serde_json::Value;

use super::feed::{Console, Outlet};
use super::run::run;
use super::start::{start, MapStream, StreamSpec};
use super::summary::Summary;
use crate::tools::{open, syscalls};
use crate::writer::Queue;

/// A tracer's command line, parsed as the CLI parses it.
#[derive(Parser)]
struct Command<A: clap::Args> {
    #[command(flatten)]
    args: A,
}

fn parse<A: clap::Args>(args: &[String]) -> A {
    let words = std::iter::once("bpfstream").chain(args.iter().map(String::as_str));
    Command::<A>::try_parse_from(words).unwrap().args
}

/// Traces this process too: the tracers leave their own process out.
fn including_this_process(mut tracer: TracerSpec) -> TracerSpec {
    tracer.globals.retain(|g| g.name != "self_tgid");
    tracer
}

/// A thread of this process that, once told, makes `calls` getppid() and `opens` opens of a
/// missing file, and nothing else.
struct Worker {
    tid: u32,
    go: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Worker {
    fn start(calls: usize, opens: usize) -> Worker {
        let (tid_tx, tid_rx) = mpsc::channel();
        let (go, go_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            // SAFETY: gettid(2) takes nothing.
            tid_tx.send(unsafe { libc::gettid() } as u32).unwrap();
            go_rx.recv().unwrap();
            for _ in 0..calls {
                // SAFETY: getppid(2) takes nothing.
                unsafe { libc::getppid() };
            }
            for _ in 0..opens {
                // SAFETY: open(2) of a NUL-terminated path; it fails (no such file).
                unsafe { libc::open(c"/nonexistent/bpfstream-lifecycle".as_ptr(), libc::O_RDONLY) };
            }
        });
        Worker { tid: tid_rx.recv().unwrap(), go, thread }
    }

    fn run(self) {
        self.go.send(()).unwrap();
        self.thread.join().unwrap();
    }
}

/// Outputs of a run in files: stdout to `stdout` (or /dev/full), stderr to a temporary file.
fn console(stdout: &File) -> (Console, File) {
    let stderr = tempfile();
    let queue = |file: &File| Queue::start(file.as_raw_fd()).unwrap();
    let console = Console { stdout: queue(stdout), stderr: queue(&stderr) };
    (console, stderr)
}

/// A file no one else opens, gone with its descriptor (created, then unlinked: O_TMPFILE is not
/// on every file system, e.g. an emulated guest's shared /tmp).
fn tempfile() -> File {
    static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("bpfstream-lifecycle-test-{}-{n}", std::process::id()));
    let file = File::options().read(true).write(true).create_new(true).open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    file
}

fn text(mut file: &File) -> String {
    use std::io::{Read, Seek};
    let mut text = String::new();
    file.rewind().unwrap();
    file.read_to_string(&mut text).unwrap();
    text
}

/// The stream of `tracer`'s `events` map, named `name`.
fn named(tracer: TracerSpec, buffer: BufferOptions, name: &str, priority: i32) -> StreamSpec<'static> {
    let maps = vec![MapStream::events(&tracer, buffer)];
    StreamSpec { tracer: Box::new(tracer), maps, name: Some(name.into()), priority }
}

/// Runs a `syscalls` stream named "calls" (priority 1) and an `open` stream named "opens" of a
/// worker making `calls` getppid() and `opens` opens, both with `--json`, for `duration` after
/// the worker is done; returns their summaries.
fn two_streams(calls: usize, opens: usize, duration: Duration, console: &Console) -> Vec<Summary> {
    let worker = Worker::start(calls, opens);
    let tid = worker.tid.to_string();
    let syscalls_args: syscalls::SyscallsArgs =
        parse(&["--json", "--tid", &tid, "--syscall", "getppid", "--buffer-size", "1M"].map(String::from));
    let open_args: open::OpenArgs = parse(&["--json", "--tid", &tid, "--buffer-size", "1M"].map(String::from));
    let specs = vec![
        named(including_this_process(open::spec(&open_args)), open::buffer(&open_args), "opens", 0),
        named(including_this_process(syscalls::spec(&syscalls_args)), syscalls::buffer(&syscalls_args), "calls", 1),
    ];
    let [mut opens, mut calls]: [_; 2] = start(specs).unwrap().try_into().unwrap();
    let open_format = open::format(&open_args, &mut opens).unwrap();
    let syscalls_format = syscalls::format(&syscalls_args, &mut calls).unwrap();
    let streams = vec![
        opens.stream(open_format, Outlet::start(&open_args.common, &open_args.container).unwrap(), console),
        calls.stream(syscalls_format, Outlet::start(&syscalls_args.common, &syscalls_args.container).unwrap(), console),
    ];
    worker.run();
    run(streams, Some(duration), console).unwrap()
}

fn lines(file: &File) -> Vec<Value> {
    text(file).lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))).collect()
}

fn of<'a>(lines: &'a [Value], kind: &str, stream: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["type"] == kind && l["stream"] == stream).collect()
}

#[test]
fn streams_of_one_run_are_each_named_and_exact() {
    let (calls, opens) = (3000, 700);
    let stdout = tempfile();
    let (console, _stderr) = console(&stdout);
    // The poller serves them.
    // Time for the writer to write them all before the stop (whose output deadline is not
    // what this test is about), stretched on an emulated machine.
    let summaries = two_streams(calls, opens, time_scale::scaled(Duration::from_millis(300)), &console);
    let names: Vec<_> = summaries.iter().map(|s| s.stream.as_deref().unwrap_or("")).collect();
    assert_eq!(names, ["calls", "opens"], "by priority, highest first");
    for (summary, n) in summaries.iter().zip([calls, opens]) {
        let n = n as u64;
        assert_eq!((summary.events, summary.dropped, summary.unwritten, summary.produced), (n, 0, 0, Some(n)));
    }
    let lines = lines(&stdout);
    assert_eq!(of(&lines, "syscall", "calls").len(), calls);
    assert!(of(&lines, "syscall", "calls").iter().all(|l| l["syscall"] == "getppid"));
    assert_eq!(of(&lines, "open", "opens").len(), opens);
    assert!(of(&lines, "open", "opens").iter().all(|l| l["ret"] == -libc::ENOENT));
    for (stream, n) in [("calls", calls), ("opens", opens)] {
        let summary = of(&lines, "summary", stream);
        assert_eq!(summary.len(), 1, "{stream}");
        assert_eq!((&summary[0]["events"], &summary[0]["produced"]), (&n.into(), &n.into()), "{stream}");
    }
    assert_eq!(lines.len(), calls + opens + 2, "nothing else, nothing without its stream");
}

#[test]
fn what_stdout_does_not_take_is_counted_to_its_stream() {
    let (calls, opens) = (2000, 500);
    let full = File::options().write(true).open("/dev/full").unwrap();
    let (console, stderr) = console(&full);
    // Stdout fails before the run: the failure is known whether or not its writer thread gets
    // to write before the stop gives up on the events (an emulated machine may not run it).
    assert!(!console.stdout.write_by(b"\n".to_vec(), std::time::Instant::now() + Duration::from_secs(60)));
    // No time to serve them: every event comes in the final drain.
    let summaries = two_streams(calls, opens, Duration::ZERO, &console);
    for (summary, n) in summaries.iter().zip([calls, opens]) {
        let n = n as u64;
        assert_eq!((summary.events, summary.unwritten, summary.produced), (n, n, Some(n)), "{:?}", summary.stream);
    }
    assert!(console.check().is_err(), "a full disk is an error");
    // The summary objects, on stderr since stdout failed.
    let said = lines(&stderr);
    for (stream, n) in [("calls", calls), ("opens", opens)] {
        let summary = of(&said, "summary", stream);
        assert_eq!(summary.len(), 1, "{said:?}");
        assert_eq!((&summary[0]["events"], &summary[0]["unwritten"]), (&0.into(), &n.into()), "{stream}");
    }
}

/// A format of no events whose last output is a table.
struct TableAtTheEnd;

impl super::Format for TableAtTheEnd {
    type Event<'a> = ();
    fn kind(&self) -> &str {
        "none"
    }
    fn decode(&mut self, _: &[u8]) -> Option<()> {
        Some(())
    }
    fn ts_ns(&self, _: &()) -> Option<u64> {
        None
    }
    fn cgroup_id(&self, _: &()) -> Option<u64> {
        None
    }
    fn titles(&self) -> Option<String> {
        None
    }
    fn row(&mut self, _: &(), _: &mut crate::writer::Output) -> std::io::Result<()> {
        Ok(())
    }
    fn json(&self, _: &(), line: crate::output::JsonLine) -> crate::output::JsonLine {
        line
    }
    fn finish(&mut self, out: &mut Vec<u8>) -> anyhow::Result<()> {
        out.extend_from_slice(b"TABLE\nrow\n");
        Ok(())
    }
}

#[test]
fn a_final_table_is_written_even_when_the_events_deadline_passed() {
    use super::feed::{Fed, Feed};
    use super::stop::Ending;
    let stdout = tempfile();
    let (console, _stderr) = console(&stdout);
    let args: open::OpenArgs = parse(&[]);
    let outlet = Outlet::start(&args.common, &args.container).unwrap();
    let feed = std::cell::RefCell::new(Feed::new(TableAtTheEnd, outlet, &console, None, bpfstream::Transport::Ring));
    // A stop whose drain took all its time: the events' deadline and the summary's have passed.
    let ending = Ending::passed();
    let mut summary =
        Summary::new(None, bpfstream::Totals::default(), bpfstream::Transport::Ring, 4096, Duration::ZERO, ending);
    feed.close(&mut summary, 4096).unwrap();
    console.stdout.settle(ending.events_by);
    feed.print(&mut summary, &console, ending.summary_deadline());
    assert!(text(&stdout).starts_with("TABLE\nrow\n"), "{:?}", text(&stdout));
}

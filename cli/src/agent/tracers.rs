//! A stream's `tracer` and `args`, parsed by the tracer's own command-line parser: one table of
//! the tracers a stream can run, each with the clap parser of its command, so that what
//! `bpfstream exec -x` takes is exactly what `tracer = "exec"`, `args = ["-x"]` takes.

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches};

use anyhow::Result;

use crate::lifecycle::{CommonArgs, StreamPlan};
use crate::run::RunArgs;
use crate::tools::exec::ExecArgs;
use crate::tools::open::OpenArgs;
use crate::tools::syscalls::SyscallsArgs;

/// A stream's tracer with its parsed options.
#[derive(Debug)]
pub enum TracerArgs {
    Exec(ExecArgs),
    Open(OpenArgs),
    Syscalls(SyscallsArgs),
    Run(Box<RunArgs>),
}

impl TracerArgs {
    /// The tracer's name, as in `tracer = "..."`.
    pub fn kind(&self) -> &'static str {
        match self {
            TracerArgs::Exec(_) => "exec",
            TracerArgs::Open(_) => "open",
            TracerArgs::Syscalls(_) => "syscalls",
            TracerArgs::Run(_) => "run",
        }
    }

    /// The options every tracer takes, which the agent sets where it owns them.
    pub fn common_mut(&mut self) -> &mut CommonArgs {
        match self {
            TracerArgs::Exec(args) => &mut args.common,
            TracerArgs::Open(args) => &mut args.common,
            TracerArgs::Syscalls(args) => &mut args.common,
            TracerArgs::Run(args) => &mut args.common,
        }
    }

    /// The stream, made as the tracer's own command makes it (its output connected now).
    pub fn plan(self) -> Result<StreamPlan<'static>> {
        match self {
            TracerArgs::Exec(args) => crate::tools::exec::plan(&args),
            TracerArgs::Open(args) => crate::tools::open::plan(args),
            TracerArgs::Syscalls(args) => crate::tools::syscalls::plan(args),
            TracerArgs::Run(args) => crate::run::plan_checked(&args),
        }
    }
}

/// A tracer a stream can run: its name in `tracer = "..."` and its parser.
struct TracerKind {
    name: &'static str,
    parse: fn(&[String]) -> Result<TracerArgs, String>,
}

/// Every tracer a stream can run.
const TRACERS: [TracerKind; 4] = [
    TracerKind { name: "exec", parse: |args| parse_as::<ExecArgs>("exec", args).map(TracerArgs::Exec) },
    TracerKind { name: "open", parse: |args| parse_as::<OpenArgs>("open", args).map(TracerArgs::Open) },
    TracerKind { name: "syscalls", parse: parse_syscalls },
    TracerKind { name: "run", parse: parse_run },
];

/// `bpfstream syscalls`' flags, but for its summary mode, which prints tables rather than events.
fn parse_syscalls(args: &[String]) -> Result<TracerArgs, String> {
    let syscalls = parse_as::<SyscallsArgs>("syscalls", args)?;
    if syscalls.summary_mode() {
        return Err("the summary options (-L -i -P --top --sort) print tables, not events: a stream \
                    streams events"
            .into());
    }
    Ok(TracerArgs::Syscalls(syscalls))
}

/// `bpfstream run`'s flags and object, checked as that command checks them before loading.
fn parse_run(args: &[String]) -> Result<TracerArgs, String> {
    let run = parse_as::<RunArgs>("run", args)?;
    crate::run::check(&run)?;
    Ok(TracerArgs::Run(Box::new(run)))
}

/// Options the agent sets for every stream itself: events are JSON lines to its one output,
/// and it runs until stopped.
const AGENT_OWNS: [(&str, &str); 4] =
    [("json", "--json"), ("output", "--output"), ("output_options", "--output-option"), ("duration", "-d/--duration")];

/// Parses `args` as `bpfstream TRACER args...` would, minus what the agent owns.
pub fn parse(tracer: &str, args: &[String]) -> Result<TracerArgs, String> {
    match TRACERS.iter().find(|t| t.name == tracer) {
        Some(kind) => (kind.parse)(args),
        None => {
            let names: Vec<&str> = TRACERS.iter().map(|t| t.name).collect();
            Err(format!("unknown tracer {tracer:?}: use {}", names.join(", ")))
        }
    }
}

fn parse_as<A: Args + FromArgMatches>(name: &'static str, args: &[String]) -> Result<A, String> {
    let command = A::augment_args(clap::Command::new(name))
        .no_binary_name(true)
        .color(clap::ColorChoice::Never)
        .disable_help_flag(true)
        .disable_version_flag(true);
    let matches = command.try_get_matches_from(args).map_err(|e| clap_reason(&e))?;
    refuse_agent_options(&matches)?;
    A::from_arg_matches(&matches).map_err(|e| clap_reason(&e))
}

fn refuse_agent_options(matches: &ArgMatches) -> Result<(), String> {
    for (id, flag) in AGENT_OWNS {
        if matches.value_source(id) == Some(ValueSource::CommandLine) {
            return Err(format!(
                "{flag} is the agent's: events are JSON lines to [output] (or stdout) until the agent stops"
            ));
        }
    }
    Ok(())
}

/// clap's error in one line, without its usage and help hints.
fn clap_reason(error: &clap::Error) -> String {
    let text = error.render().to_string();
    let first = text.lines().next().unwrap_or("");
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn each_tracer_parses_its_own_flags() {
        let Ok(TracerArgs::Exec(exec)) = parse("exec", &args("-x --max-args 5 --cgroup-path")) else { panic!() };
        assert!(exec.failed && exec.max_args == 5 && exec.container.cgroup_path);
        let Ok(TracerArgs::Syscalls(s)) = parse("syscalls", &args("--min-duration 10ms")) else { panic!() };
        assert_eq!(s.min_duration, Some(std::time::Duration::from_millis(10)));
        assert!(matches!(parse("open", &[]), Ok(TracerArgs::Open(_))));
        assert_eq!(parse("fork", &[]).unwrap_err(), "unknown tracer \"fork\": use exec, open, syscalls, run");
        assert!(parse("run", &args("/no/such.bpf.o")).unwrap_err().starts_with("/no/such.bpf.o: "));
    }

    #[test]
    fn refusals_say_why_in_one_line() {
        let refused = [
            ("exec", "--max-args 0", "invalid value '0' for '--max-args <N>'"),
            ("open", "--min-duration 1ms", "unexpected argument '--min-duration' found"),
            ("exec", "--json", "--json is the agent's"),
            ("syscalls", "-d 5", "-d/--duration is the agent's"),
            ("syscalls", "--duration=5", "-d/--duration is the agent's"),
            ("exec", "--output nats://127.0.0.1:4222/x", "--output is the agent's"),
            ("exec", "--help", "unexpected argument '--help' found"),
            ("exec", "positional", "unexpected argument 'positional' found"),
            ("syscalls", "--summary", "the summary options"),
            ("syscalls", "--top 5", "the summary options"),
        ];
        for (tracer, text, reason) in refused {
            let error = parse(tracer, &args(text)).unwrap_err();
            assert!(error.starts_with(reason), "{tracer} {text}: {error}");
            assert!(!error.contains('\n'), "{error}");
        }
    }
}

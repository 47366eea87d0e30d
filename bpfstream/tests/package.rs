//! The crate as a third party gets it: `cargo package` output, unpacked in a scratch directory,
//! is all a tool outside this workspace builds from (and the package's own unit tests pass
//! there). The tool is the package's own template (`template/`: build.rs, a BPF program on a
//! tracepoint, main.rs), copied as its README says: it compiles its BPF program against the
//! packaged `bpfstream.h` (`bpfstream::INCLUDE_DIR`), loads it with the `aya` feature, and is run
//! in both transports (as root) while this test execs children of its own, which the tool
//! filters on: every exec is printed, and delivered + dropped == produced at its stop (SIGINT).
//! Skipped, saying so, when clang is missing.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // The nested builds choose their own target directories.
    command.env_remove("CARGO_TARGET_DIR").env_remove("CARGO_BUILD_TARGET_DIR");
    command
}

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// `cargo package` of this crate, unpacked into `unpacked` (outside the workspace, so that it
/// builds as the root of its own); returns the crate's root.
fn package_and_unpack(scratch: &Path, unpacked: &Path) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace");
    let target = scratch.join("package-target");
    run(cargo()
        .current_dir(workspace)
        .args(["package", "-p", "bpfstream", "--no-verify", "--allow-dirty", "--offline", "--locked"])
        .arg("--target-dir")
        .arg(&target));
    let name = format!("bpfstream-{}", env!("CARGO_PKG_VERSION"));
    let _ = std::fs::remove_dir_all(unpacked);
    std::fs::create_dir_all(unpacked).unwrap();
    run(Command::new("tar")
        .arg("xzf")
        .arg(target.join("package").join(format!("{name}.crate")))
        .arg("-C")
        .arg(unpacked));
    unpacked.join(name)
}

/// Nothing in the package reaches outside it (the workspace's `bpf/obj` is not in the package).
/// Every file is touched: `cargo package` gives them all one fixed old mtime, by which the
/// tool's build would take a changed package for the one it built before.
fn assert_self_contained_and_touch(root: &Path) {
    let header = root.join("include/bpfstream.h");
    assert!(header.symlink_metadata().is_ok_and(|m| m.is_file()), "{} is not in the package", header.display());
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                std::fs::File::options().write(true).open(&path).unwrap().set_modified(SystemTime::now()).unwrap();
                if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    assert!(!text.contains("../bpf/"), "{} reads from the workspace's bpf/", path.display());
                }
            }
        }
    }
}

/// The template of the unpacked package, copied into `scratch/tool` as its README says, with
/// the packaged crate as its `bpfstream` (by path).
fn write_tool(scratch: &Path, package: &Path) -> PathBuf {
    let template = package.join("template");
    let tool = scratch.join("tool");
    let _ = std::fs::remove_dir_all(&tool);
    std::fs::create_dir_all(tool.join("src")).unwrap();
    let manifest = std::fs::read_to_string(template.join("Cargo.toml.template")).unwrap();
    let by_path = |features: &str| format!("bpfstream = {{ path = {:?}{features} }}", package.display().to_string());
    let manifest = manifest
        .replace(r#"bpfstream = { version = "0.1", features = ["aya"] }"#, &by_path(r#", features = ["aya"]"#))
        .replace(r#"bpfstream = "0.1""#, &by_path(""));
    assert_eq!(manifest.matches("path =").count(), 2, "the template's bpfstream dependencies:\n{manifest}");
    std::fs::write(tool.join("Cargo.toml"), format!("{manifest}\n[workspace]\n")).unwrap();
    for file in ["build.rs", "src/main.rs", "src/tool.bpf.c"] {
        std::fs::copy(template.join(file), tool.join(file)).unwrap();
    }
    // The tool brings its own vmlinux.h (here, the one the workspace generated for its objects).
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::copy(workspace.join("bpf/include/vmlinux.h"), tool.join("vmlinux.h")).unwrap();
    // The workspace's lock pins versions already in the local registry, so the build is offline.
    std::fs::copy(workspace.join("Cargo.lock"), tool.join("Cargo.lock")).unwrap();
    tool
}

/// Runs the tool (`extra` arguments) while this process execs `/bin/true` `count` times, then
/// stops it with SIGINT; returns its standard output.
fn trace_own_execs(tool: &Path, extra: &[&str], count: usize) -> String {
    let mut child = Command::new(tool)
        .args(["--ppid", &std::process::id().to_string()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the tool runs");
    // It says when it traces; execs before that are not its to see.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("tracing execs"), "the tool did not start: {line}");
    for _ in 0..count {
        assert!(Command::new("/bin/true").status().unwrap().success());
    }
    // SAFETY: kill sends a signal to the child we spawned (and have not waited for yet).
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let output = child.wait_with_output().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "the tool failed ({}):\n{stdout}\n{rest}", output.status);
    stdout
}

/// A scratch directory, removed when the test ends (passed or failed).
struct Removed(PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_packaged_template_builds_and_accounts_exactly_from_the_package_alone() {
    if Command::new("clang").arg("--version").output().is_err() {
        eprintln!("skipping: clang is missing (apt-get install clang libbpf-dev), and the tool's BPF program needs it");
        return;
    }
    // Build outputs persist between runs (the builds are incremental); sources are fresh.
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("outside-tool");
    let unpacked = Removed(std::env::temp_dir().join(format!("bpfstream-package-{}", std::process::id())));
    let package = package_and_unpack(&scratch, &unpacked.0);
    assert_self_contained_and_touch(&package);
    let target = scratch.join("tool-target");
    // The package's own unit tests build and pass from the package alone (its BTF checks read
    // objects that ship in it).
    run(cargo().current_dir(&package).args(["test", "--lib", "--offline", "--target-dir"]).arg(&target));
    let tool = write_tool(&scratch, &package);
    run(cargo().current_dir(&tool).args(["build", "--offline", "--target-dir"]).arg(&target));
    if std::env::var_os("BPFSTREAM_SKIP_KERNEL_TESTS").is_some() {
        eprintln!("built the tool; not running it: BPFSTREAM_SKIP_KERNEL_TESTS is set");
        return;
    }
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the tool loads BPF programs: run the tests as root (sudo cargo test)");
    mount_tracefs();
    let execsnoop = target.join("debug/execsnoop");
    for extra in [&[][..], &["--perf"][..]] {
        let count = 20;
        let out = trace_own_execs(&execsnoop, extra, count);
        let execs: Vec<&str> = out.lines().filter(|l| l.ends_with(" true")).collect();
        let parent = format!(" {} true", std::process::id());
        assert_eq!(execs.len(), count, "{extra:?}: every exec, once:\n{out}");
        assert!(execs.iter().all(|l| l.ends_with(&parent)), "{extra:?}: only this process's children:\n{out}");
        assert!(out.contains(&format!("delivered={count} dropped=0 produced={count}")), "{extra:?}:\n{out}");
    }
}

/// Mounts tracefs where the kernel has not (the tool attaches a tracepoint by its id there).
fn mount_tracefs() {
    if Path::new("/sys/kernel/tracing/events").exists() {
        return;
    }
    run(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]));
}

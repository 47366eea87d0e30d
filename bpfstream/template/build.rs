//! Compiles src/tool.bpf.c twice (a ring buffer and a perf buffer) against the bpfstream.h that
//! ships in the bpfstream crate (`bpfstream::INCLUDE_DIR`), with the vmlinux.h of this crate's
//! directory. Needs clang and libbpf's headers (Debian: clang libbpf-dev).
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    for (variant, defines) in [("ring", &[][..]), ("perf", &["-DBPFSTREAM_PERF"][..])] {
        let status = Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86"])
            .arg(format!("-I{}", bpfstream::INCLUDE_DIR))
            .arg(format!("-I{manifest}")) // vmlinux.h
            .args(defines)
            .args(["-c", "src/tool.bpf.c", "-o"])
            .arg(out.join(format!("tool.{variant}.bpf.o")))
            .status()
            .unwrap_or_else(|e| panic!("running {clang} (apt-get install clang libbpf-dev): {e}"));
        assert!(status.success(), "{clang} failed to build the {variant} variant of src/tool.bpf.c");
    }
    println!("cargo::rerun-if-changed=src/tool.bpf.c");
    println!("cargo::rerun-if-changed=vmlinux.h");
}

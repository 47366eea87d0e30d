//! A syscall storm from processes of a known name, for the tracers to be stopped in the middle
//! of: two copies of dd named [`STORM_COMM`], copying /dev/zero to /dev/null a byte at a time
//! (a read and a write syscall per byte, at full speed, one per CPU).

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The storm's comm, for `--name`.
pub const STORM_COMM: &str = "bpfs-storm";

/// Asks the kernel to kill this child when the thread that made it ends: a test process killed
/// before its `Storm` drops (a timeout, a Ctrl-C) leaves no storm behind to skew what runs next.
fn die_with_parent() -> std::io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG with a valid signal number; no pointer is passed.
    match unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// The storm's processes, killed on drop.
pub struct Storm(Vec<Child>);

impl Storm {
    pub fn start() -> Storm {
        let dd = super::temp_dir("storm").join(STORM_COMM);
        super::copy_executable(Path::new("/bin/dd"), &dd);
        let children = (0..2)
            .map(|_| {
                let mut command = Command::new(&dd);
                command.args(["if=/dev/zero", "of=/dev/null", "bs=1"]).stderr(Stdio::null());
                // SAFETY: prctl(2) is async-signal-safe; the closure touches nothing else.
                unsafe { command.pre_exec(die_with_parent) };
                command.spawn().unwrap()
            })
            .collect();
        Storm(children)
    }
}

impl Drop for Storm {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

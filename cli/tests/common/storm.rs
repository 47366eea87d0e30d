//! A syscall storm from processes of a known name, for the tracers to be stopped in the middle
//! of: two copies of dd named [`STORM_COMM`], copying /dev/zero to /dev/null a byte at a time
//! (a read and a write syscall per byte, at full speed, one per CPU).

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The storm's comm, for `--name`.
pub const STORM_COMM: &str = "bpfs-storm";

/// The storm's processes, killed on drop.
pub struct Storm(Vec<Child>);

impl Storm {
    pub fn start() -> Storm {
        let dd = super::temp_dir("storm").join(STORM_COMM);
        super::copy_executable(Path::new("/bin/dd"), &dd);
        let children = (0..2)
            .map(|_| {
                Command::new(&dd).args(["if=/dev/zero", "of=/dev/null", "bs=1"]).stderr(Stdio::null()).spawn().unwrap()
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

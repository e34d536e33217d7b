//! The executable writing into a pipe whose reader has gone (`dfc inspect … | head -1`): it
//! ends quietly, as other command-line tools do, instead of reporting a crash.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use common::root;

#[cfg(unix)]
#[test]
fn a_closed_stdout_is_no_crash() -> Result<()> {
    use std::os::unix::process::ExitStatusExt;
    let mut child = Command::new(env!("CARGO_BIN_EXE_dfc"))
        .args(["inspect", "models/sd15_tiny.onnx", "--json"])
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the dfc binary")?;
    // Close the reading end before dfc has loaded the model and printed anything.
    drop(child.stdout.take());
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut stderr)?;
    }
    let status = child.wait()?;
    assert!(
        status.success() || status.signal() == Some(libc::SIGPIPE),
        "{status}: {stderr}"
    );
    assert!(!stderr.contains("internal error"), "{stderr}");
    Ok(())
}

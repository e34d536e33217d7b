//! `dfc run --backend tensorrt` through the binary. On a machine without a GPU (or a build
//! without the `gpu` feature) it must exit 1 with the reason, never panic; with a GPU and
//! engines it samples (that part needs a GPU machine and prints `skipped` here).

mod common;

use std::process::Command;

use anyhow::{Context, Result, ensure};
use common::{dfc_compile, root};

#[test]
fn tensorrt_backend_without_a_gpu_exits_1_with_the_reason() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let plan = tmp.path().join("plan");
    let o = dfc_compile("models/sd15_tiny.onnx", 1, &plan, &[]).context("dfc compile")?;
    let dfc = env!("CARGO_BIN_EXE_dfc");
    ensure!(
        o.status.success(),
        "compile: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let has_gpu = std::path::Path::new("/dev/nvidia0").exists();
    let o = Command::new(dfc)
        .current_dir(root())
        .arg("run")
        .arg(&plan)
        .args(["--steps", "2", "--backend", "tensorrt", "--inputs"])
        .arg(root().join("models/sd15_tiny.io.npz"))
        .arg("--output")
        .arg(tmp.path().join("out.npz"))
        .output()
        .context("dfc run")?;
    let err = String::from_utf8_lossy(&o.stderr);
    if has_gpu && cfg!(feature = "gpu") {
        println!(
            "skipped: this machine has a GPU; the no-GPU refusal is not what runs here ({err})"
        );
        return Ok(());
    }
    ensure!(o.status.code() == Some(1), "exit {:?}: {err}", o.status);
    ensure!(!err.contains("panicked"), "it panicked: {err}");
    let reason = if cfg!(feature = "gpu") {
        // No engine was built, so that is the first thing missing; with engines it would be
        // the CUDA driver or TensorRT.
        err.contains("dfc build") || err.contains("CUDA") || err.contains("TensorRT")
    } else {
        err.contains("without the `gpu` feature")
    };
    ensure!(reason, "no reason given: {err}");
    ensure!(
        !tmp.path().join("out.npz").exists(),
        "an output was written"
    );
    Ok(())
}

#[test]
fn tensorrt_backend_with_an_engine_but_no_gpu_names_what_is_missing() -> Result<()> {
    if !cfg!(feature = "gpu") {
        println!("skipped: built without the `gpu` feature");
        return Ok(());
    }
    if std::path::Path::new("/dev/nvidia0").exists() {
        println!("skipped: this machine has a GPU");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let plan = tmp.path().join("plan");
    let o = dfc_compile("models/sd15_tiny.onnx", 1, &plan, &[])?;
    let dfc = env!("CARGO_BIN_EXE_dfc");
    ensure!(
        o.status.success(),
        "compile: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A stand-in engine, recorded as `dfc build` would: the executor must stop at the missing
    // driver before reading it.
    std::fs::write(plan.join("rank0.engine"), b"not an engine")?;
    let json = plan.join("plan.json");
    let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json)?)?;
    doc["engines"] = serde_json::json!([{
        "rank": 0,
        "file": "rank0.engine",
        "builder": "TensorRT",
        "builder_version": "10.13.0",
        "sha256": "0".repeat(64),
    }]);
    std::fs::write(&json, serde_json::to_vec_pretty(&doc)?)?;
    let o = Command::new(dfc)
        .current_dir(root())
        .arg("run")
        .arg(&plan)
        .args(["--steps", "2", "--backend", "tensorrt", "--inputs"])
        .arg(root().join("models/sd15_tiny.io.npz"))
        .arg("--output")
        .arg(tmp.path().join("out.npz"))
        .output()?;
    let err = String::from_utf8_lossy(&o.stderr);
    ensure!(o.status.code() == Some(1), "exit {:?}: {err}", o.status);
    ensure!(!err.contains("panicked"), "it panicked: {err}");
    ensure!(err.contains("no CUDA driver"), "reason: {err}");
    Ok(())
}

/// `ncclGetUniqueId` starts a bootstrap listener thread that keeps running NCCL's code in the
/// launcher; the library must stay loaded. A peer connecting to the listener the id names (its
/// socket address follows the 8-byte magic) must find it alive and the process must survive.
#[test]
fn the_nccl_bootstrap_listener_outlives_the_id() -> Result<()> {
    #[cfg(not(feature = "gpu"))]
    {
        println!("skipped: built without the `gpu` feature");
        Ok(())
    }
    #[cfg(feature = "gpu")]
    {
        use std::io::Write;
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
        use std::time::Duration;

        use dfc::runtime::gpu::NcclIds;
        use dfc::runtime::launch::IdSource;

        let ids = match NcclIds::find() {
            Ok(ids) => ids,
            Err(e) => {
                println!("skipped: {e}");
                return Ok(());
            }
        };
        let id = ids.unique_id()?;
        let family = u16::from_ne_bytes([id[8], id[9]]);
        let port = u16::from_be_bytes([id[10], id[11]]);
        let ip = match i32::from(family) {
            libc::AF_INET => IpAddr::V4(Ipv4Addr::new(id[12], id[13], id[14], id[15])),
            libc::AF_INET6 => {
                let b: [u8; 16] = id[16..32].try_into()?;
                IpAddr::V6(Ipv6Addr::from(b))
            }
            other => anyhow::bail!("the NCCL id holds no socket address (family {other})"),
        };
        let addr = SocketAddr::new(ip, port);
        for _ in 0..3 {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .with_context(|| format!("connecting to NCCL's bootstrap listener at {addr}"))?;
            // Not NCCL's handshake: the listener reads, rejects and goes on listening.
            let _ = s.write_all(&[0u8; 64]);
            std::thread::sleep(Duration::from_millis(300));
        }
        // A second id from the same loaded library still works.
        ensure!(ids.unique_id()? != id, "two ids are equal");
        println!("NCCL's bootstrap listener at {addr} took 3 connections; the process lives");
        Ok(())
    }
}

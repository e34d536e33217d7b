//! `dfc verify` end to end: the README's first command (compile + run + compare), a naive plan
//! that must fail the comparison, and the refusals.

mod common;

use anyhow::Result;
use common::{dfc, require_ort, root};

#[test]
fn verify_specializes_and_matches_the_original() -> Result<()> {
    require_ort()?;
    let model = root().join("models/sdxl_tiny_dynamic.onnx");
    let out = dfc(&[
        "verify".as_ref(),
        model.as_os_str(),
        "--gpus".as_ref(),
        "4".as_ref(),
        "--batch".as_ref(),
        "2".as_ref(),
        "--height".as_ref(),
        "48".as_ref(),
        "--width".as_ref(),
        "40".as_ref(),
        "--dim".as_ref(),
        "sequence=8".as_ref(),
    ])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("input  sample: f32[2, 4, 48, 40]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("output out_sample: f32[2, 4, 48, 40]"),
        "{stdout}"
    );
    assert!(
        stdout.contains(" ok\n") && !stdout.contains("FAILED"),
        "{stdout}"
    );
    assert!(
        stdout.contains("verified: the 4-rank plan matches the original"),
        "{stdout}"
    );
    Ok(())
}

#[test]
fn verify_fails_a_naive_plan() -> Result<()> {
    require_ort()?;
    let model = root().join("models/sd15_tiny.onnx");
    let out = dfc(&[
        "verify".as_ref(),
        model.as_os_str(),
        "--gpus".as_ref(),
        "4".as_ref(),
        "--mode".as_ref(),
        "naive".as_ref(),
    ])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("FAILED"), "{stdout}");
    assert!(
        stderr.contains("outputs beyond tolerance: out_sample"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn verify_names_unbound_dimensions() -> Result<()> {
    let model = root().join("models/sdxl_tiny_dynamic.onnx");
    let out = dfc(&[
        "verify".as_ref(),
        model.as_os_str(),
        "--height".as_ref(),
        "48".as_ref(),
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--dim sequence=VALUE"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    Ok(())
}

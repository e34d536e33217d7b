//! `dfc compare` on the trained model, and `dfc run --vae`: fidelity numbers that must order
//! as the method says (sync equal to the original, displaced far closer than naive), the grid
//! image's layout, and decoding through a VAE.

mod common;

use std::ffi::OsStr;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use common::*;

#[test]
fn compare_orders_sync_displaced_and_naive_on_the_trained_model() -> Result<()> {
    require_ort()?;
    let tmp = tempfile::tempdir()?;
    let json = tmp.path().join("report.json");
    let png = tmp.path().join("grid.png");
    let model = root().join("models/shapes/unet.onnx");
    let cond = root().join("models/shapes/cond8.npz");
    let args: Vec<&OsStr> = vec![
        "compare".as_ref(),
        model.as_os_str(),
        "--gpus".as_ref(),
        "2".as_ref(),
        "--batch".as_ref(),
        "16".as_ref(),
        "--height".as_ref(),
        "32".as_ref(),
        "--width".as_ref(),
        "32".as_ref(),
        "--dim".as_ref(),
        "sequence=4".as_ref(),
        "--steps".as_ref(),
        "10".as_ref(),
        "--warmup".as_ref(),
        "2".as_ref(),
        "--guidance".as_ref(),
        "3".as_ref(),
        "--seed".as_ref(),
        "3".as_ref(),
        "--threads".as_ref(),
        "2".as_ref(),
        "--inputs".as_ref(),
        cond.as_os_str(),
        "--modes".as_ref(),
        "displaced,naive,sync".as_ref(),
        "--json".as_ref(),
        json.as_os_str(),
        "--png".as_ref(),
        png.as_os_str(),
    ];
    let o = dfc(&args)?;
    let stderr = String::from_utf8_lossy(&o.stderr);
    ensure!(o.status.code() == Some(0), "exit {:?}: {stderr}", o.status);
    let report: Value = serde_json::from_slice(&std::fs::read(&json)?)?;
    let plans = report["plans"].as_array().context("plans")?;
    let find = |name: &str| {
        plans
            .iter()
            .find(|p| p["name"] == name)
            .with_context(|| format!("no plan {name} in {report}"))
    };
    let (displaced, naive, sync) = (
        find("displaced-w2-corrected")?,
        find("naive")?,
        find("sync")?,
    );
    let psnr = |p: &Value| p["psnr_db"].as_f64().unwrap_or(f64::INFINITY);
    let ssim = |p: &Value| p["ssim"].as_f64().unwrap_or(f64::NAN);
    eprintln!(
        "PSNR displaced {:.2} naive {:.2} sync {:.2}; SSIM {:.4} {:.4} {:.4}",
        psnr(displaced),
        psnr(naive),
        psnr(sync),
        ssim(displaced),
        ssim(naive),
        ssim(sync)
    );
    ensure!(psnr(sync) >= 60.0, "sync PSNR {} < 60 dB", psnr(sync));
    ensure!(
        psnr(displaced) > psnr(naive) + 5.0,
        "displaced {} dB is not well above naive {} dB",
        psnr(displaced),
        psnr(naive)
    );
    ensure!(psnr(displaced).is_finite(), "displaced equals the original");
    ensure!(
        ssim(displaced) > ssim(naive) && ssim(sync) > 0.9999,
        "SSIM order: {report}"
    );
    ensure!(
        displaced["psnr_db_per_image"].as_array().map(Vec::len) == Some(8),
        "{report}"
    );
    // 8 rows × (original, 3 plans, difference), 32-pixel panels zoomed 4×, 2-pixel gaps.
    let grid = image::open(&png)?;
    ensure!(
        (grid.width(), grid.height()) == (5 * 128 + 6 * 2, 8 * 128 + 9 * 2),
        "grid {}x{}",
        grid.width(),
        grid.height()
    );
    Ok(())
}

#[test]
fn run_decodes_with_a_vae_and_refuses_a_model_that_is_not_one() -> Result<()> {
    require_ort()?;
    let tmp = tempfile::tempdir()?;
    let plan = tmp.path().join("plan");
    let o = dfc_compile(root().join("models/sd15_tiny.onnx"), 2, &plan, &[])?;
    ensure!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let io = root().join("models/sd15_tiny.io.npz");
    let run = |vae: &std::path::Path, out: &std::path::Path, png: &std::path::Path| {
        dfc(&[
            "run".as_ref(),
            plan.as_os_str(),
            "--steps".as_ref(),
            "2".as_ref(),
            "--guidance".as_ref(),
            "2".as_ref(),
            "--inputs".as_ref(),
            io.as_os_str(),
            "--vae".as_ref(),
            vae.as_os_str(),
            "--output".as_ref(),
            out.as_os_str(),
            "--png".as_ref(),
            png.as_os_str(),
        ])
    };
    let (out, png) = (tmp.path().join("out.npz"), tmp.path().join("out.png"));
    let o = run(&root().join("models/vae_decoder_tiny.onnx"), &out, &png)?;
    ensure!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The tiny decoder doubles the 32×32 latent.
    let img = image::open(&png)?;
    ensure!(
        (img.width(), img.height()) == (64, 64),
        "{}x{}",
        img.width(),
        img.height()
    );
    let rgb = img.to_rgb8();
    let (lo, hi) = rgb
        .as_raw()
        .iter()
        .fold((255u8, 0u8), |(l, h), &v| (l.min(v), h.max(v)));
    ensure!(hi > lo, "the decoded image is flat");

    // The UNet is no VAE decoder (three inputs): exit 1, no files.
    let (out, png) = (tmp.path().join("bad.npz"), tmp.path().join("bad.png"));
    let o = run(&root().join("models/sd15_tiny.onnx"), &out, &png)?;
    let stderr = String::from_utf8_lossy(&o.stderr);
    ensure!(o.status.code() == Some(1), "exit {:?}: {stderr}", o.status);
    ensure!(stderr.contains("is not a VAE decoder"), "{stderr}");
    ensure!(!out.exists() && !png.exists(), "files written on failure");
    Ok(())
}

//! The dfc backend inside a real Triton Inference Server (2.51, from PyPI's nvidia-pytriton
//! wheel; `tools/setup_triton.sh` installs it): a plan of the trained `models/shapes` UNet on
//! two ranks, served by two instances, checked by `tests/serving/client.py` (tritonclient over
//! HTTP and gRPC) against `dfc run`'s latents for the same seeds, and a 32×32 plan with the tiny
//! VAE decoder against `dfc run --vae --png`'s latent and image; a model folder whose
//! plan changed fails to load with the file named, and the server shuts down cleanly with a
//! request in flight. Skipped, with the reason, where the server is not installed.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::{dfc, dfc_compile, root};
use dfc::runtime::{HostTensor, read_npz, write_npz};

const STEPS: &str = "3";
const GUIDANCE: &str = "3";
const MAX_STEPS: &str = "60";

/// The venv with the server and its clients, or why it is absent.
fn triton_venv() -> Result<PathBuf, String> {
    let venv = match std::env::var_os("DFC_TRITON_VENV") {
        Some(v) => PathBuf::from(v),
        None => {
            let cache = std::env::var_os("DFC_CACHE")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/dfc")))
                .ok_or("neither DFC_CACHE nor HOME is set")?;
            cache.join("triton-venv")
        }
    };
    if server_binary(&venv).is_none() {
        return Err(format!(
            "no tritonserver in {} (install it with tools/setup_triton.sh)",
            venv.display()
        ));
    }
    Ok(venv)
}

fn server_binary(venv: &Path) -> Option<PathBuf> {
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    lib.flatten()
        .map(|e| {
            e.path()
                .join("site-packages/pytriton/tritonserver/bin/tritonserver")
        })
        .find(|p| p.is_file())
}

/// Three free loopback ports in a row (HTTP, gRPC, metrics), as the client expects.
fn free_ports() -> Result<u16> {
    for _ in 0..50 {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let base = l.local_addr()?.port();
        drop(l);
        if base < 65000 && (1..3).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return Ok(base);
        }
    }
    bail!("no three free ports in a row")
}

/// `GET path` on the loopback port; the status code.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

/// A running server, killed when dropped.
struct Server {
    child: Child,
    log: PathBuf,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(
        venv: &Path,
        repo: &Path,
        backends: &Path,
        log: PathBuf,
        extra: &[&str],
    ) -> Result<Self> {
        let port = free_ports()?;
        let ort = dfc::runtime::find_onnxruntime()?.path;
        let file = std::fs::File::create(&log)?;
        let child = Command::new(server_binary(venv).context("tritonserver")?)
            .args(["--model-repository".as_ref(), repo.as_os_str()])
            .args(["--backend-directory".as_ref(), backends.as_os_str()])
            .args(["--http-port", &port.to_string()])
            .args(["--grpc-port", &(port + 1).to_string()])
            .args(["--metrics-port", &(port + 2).to_string()])
            .args(["--log-verbose", "1", "--exit-timeout-secs", "60"])
            .args(extra)
            .env("ORT_DYLIB_PATH", ort)
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("starting tritonserver")?;
        let mut server = Server { child, log, port };
        let start = Instant::now();
        while http_status(port, "/v2/health/live") != Some(200) {
            if let Some(status) = server.child.try_wait()? {
                bail!("tritonserver exited ({status}):\n{}", server.log_text());
            }
            ensure!(
                start.elapsed() < Duration::from_secs(120),
                "tritonserver did not start in 120 s:\n{}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(server)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_ready(&self, model: &str) -> Result<()> {
        let start = Instant::now();
        while http_status(self.port, &format!("/v2/models/{model}/ready")) != Some(200) {
            ensure!(
                start.elapsed() < Duration::from_secs(120),
                "model {model} not ready in 120 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }
}

/// `dfc compile` of the trained `models/shapes` UNet for 2 GPUs, batch 2 and a 4-token text,
/// with `extra` options, into `out`; fails with its stderr.
fn compile_ok(out: &Path, extra: &[&str]) -> Result<()> {
    let mut options = vec!["--batch", "2", "--dim", "sequence=4"];
    options.extend(extra);
    let o = dfc_compile("models/shapes/unet.onnx", 2, out, &options)?;
    ensure!(
        o.status.success(),
        "dfc compile failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}

/// `dfc run PLAN --inputs COND --steps STEPS --guidance GUIDANCE --seed SEED` followed by
/// `extra`; fails with its stderr.
fn sample_ok(plan: &Path, cond: &Path, seed: &str, extra: &[&std::ffi::OsStr]) -> Result<()> {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "run".as_ref(),
        plan.as_os_str(),
        "--inputs".as_ref(),
        cond.as_os_str(),
        "--steps".as_ref(),
        STEPS.as_ref(),
        "--guidance".as_ref(),
        GUIDANCE.as_ref(),
        "--seed".as_ref(),
        seed.as_ref(),
    ];
    args.extend_from_slice(extra);
    run_ok(&args)
}

fn run_ok(args: &[&std::ffi::OsStr]) -> Result<()> {
    let out = dfc(args)?;
    ensure!(
        out.status.success(),
        "dfc {:?} failed:\n{}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Builds the backend library (dev profile, like this test) and a backend folder holding it.
fn backend_dir(dir: &Path) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "-p", "dfc-triton"])
        .current_dir(root())
        .output()
        .context("running cargo build -p dfc-triton")?;
    ensure!(
        out.status.success(),
        "building the backend failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The test binary lives in <target>/<profile>/deps/.
    let exe = std::env::current_exe()?;
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .context("the test's target folder")?;
    let lib = profile.join("libtriton_dfc.so");
    ensure!(lib.is_file(), "{} was not built", lib.display());
    let backends = dir.join("backends");
    std::fs::create_dir_all(backends.join("dfc"))?;
    std::os::unix::fs::symlink(&lib, backends.join("dfc/libtriton_dfc.so"))?;
    Ok(backends)
}

#[test]
fn a_stock_triton_server_serves_a_plan_like_dfc_run() -> Result<()> {
    let venv = match triton_venv() {
        Ok(v) => v,
        Err(why) => {
            println!("skipped: {why}");
            return Ok(());
        }
    };
    common::require_ort()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    // Two images' conditioning (the unconditional half first): rows 0 and 8 of cond8.npz.
    let cond8 = read_npz(&root().join("models/shapes/cond8.npz"))?;
    let cond: Vec<(String, HostTensor)> = cond8
        .into_iter()
        .map(|(n, t)| match t {
            HostTensor::F32(a) => Ok((
                n,
                HostTensor::F32(a.select(ndarray::Axis(0), &[0, 8]).to_owned()),
            )),
            other => bail!("unexpected conditioning {n}: {}", other.dtype()),
        })
        .collect::<Result<_>>()?;
    let cond_path = dir.join("cond.npz");
    write_npz(&cond_path, &cond)?;
    let plan = dir.join("plan");
    let p = |p: &Path| p.as_os_str().to_owned();
    compile_ok(&plan, &["--height", "64", "--width", "64"])?;
    // dfc run's latents: seeds 0..7 (DDIM) and seed 0 with Euler.
    let refs = dir.join("refs");
    std::fs::create_dir(&refs)?;
    let runs: Vec<(String, String, &str)> = (0..8)
        .map(|s| (format!("seed{s}.npz"), s.to_string(), "ddim"))
        .chain([("euler0.npz".to_string(), "0".to_string(), "euler")])
        .collect();
    for (file, seed, scheduler) in &runs {
        sample_ok(
            &plan,
            &cond_path,
            seed,
            &[
                "--scheduler".as_ref(),
                scheduler.as_ref(),
                "--threads".as_ref(),
                "1".as_ref(),
                "-o".as_ref(),
                &p(&refs.join(file)),
            ],
        )?;
    }
    // A 32×32 plan served with the tiny VAE decoder (its input is 4×32×32).
    let plan32 = dir.join("plan32");
    let vae = root().join("models/vae_decoder_tiny.onnx");
    compile_ok(&plan32, &["--height", "32", "--width", "32"])?;
    sample_ok(
        &plan32,
        &cond_path,
        "4",
        &[
            "--vae".as_ref(),
            &p(&vae),
            "--png".as_ref(),
            &p(&refs.join("vae.png")),
            "-o".as_ref(),
            &p(&refs.join("vae.npz")),
        ],
    )?;
    let repo = dir.join("repo");
    run_ok(&[
        "triton".as_ref(),
        &p(&plan32),
        "-o".as_ref(),
        &p(&repo),
        "--name".as_ref(),
        "shapes_vae".as_ref(),
        "--vae".as_ref(),
        &p(&vae),
    ])?;
    for (name, instances) in [("shapes", "2"), ("stale", "1")] {
        run_ok(&[
            "triton".as_ref(),
            &p(&plan),
            "-o".as_ref(),
            &p(&repo),
            "--name".as_ref(),
            name.as_ref(),
            "--instances".as_ref(),
            instances.as_ref(),
            "--max-steps".as_ref(),
            MAX_STEPS.as_ref(),
        ])?;
    }
    // `stale`'s rank 1 is replaced by another file (the links to the plan stay intact).
    let stale_rank = repo.join("stale/1/rank1.onnx");
    std::fs::remove_file(&stale_rank)?;
    std::fs::write(&stale_rank, b"not the compiled rank")?;

    let backends = backend_dir(dir)?;
    let server = Server::start(
        &venv,
        &repo,
        &backends,
        dir.join("server.log"),
        &["--exit-on-error=false", "--strict-readiness=false"],
    )?;
    server.wait_ready("shapes")?;
    server.wait_ready("shapes_vae")?;
    ensure!(
        http_status(server.port, "/v2/models/stale/ready") != Some(200),
        "the model with a changed rank file is ready:\n{}",
        server.log_text()
    );
    let log = server.log_text();
    ensure!(
        log.contains("stale/1/rank1.onnx changed since the model folder was written"),
        "the load failure does not name the changed file:\n{log}"
    );

    let python = venv.join("bin/python");
    let out = Command::new(&python)
        .arg(root().join("tests/serving/client.py"))
        .args(["--http", &server.port.to_string()])
        .args(["--grpc", &(server.port + 1).to_string()])
        .args(["--model", "shapes", "--cond"])
        .arg(&cond_path)
        .arg("--refs")
        .arg(&refs)
        .args([
            "--steps",
            STEPS,
            "--guidance",
            GUIDANCE,
            "--max-steps",
            MAX_STEPS,
        ])
        .args(["--vae-model", "shapes_vae", "--vae-ref"])
        .arg(refs.join("vae.npz"))
        .arg("--vae-image-out")
        .arg(dir.join("served.rgb"))
        .output()
        .context("running tests/serving/client.py")?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    ensure!(
        out.status.success(),
        "the client's checks failed:\n{}\n--- server log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log_text()
    );
    // The served image is the one `dfc run --png` wrote.
    let png = image::open(refs.join("vae.png"))?.to_rgb8();
    let served = std::fs::read(dir.join("served.rgb"))?;
    ensure!(
        png.as_raw() == &served,
        "the served image ({} bytes) differs from dfc run's {}x{} PNG",
        served.len(),
        png.width(),
        png.height()
    );
    let log = server.log_text();
    let cancelled = log
        .lines()
        .find(|l| l.contains("cancelled after"))
        .with_context(|| format!("no cancellation in the server log:\n{log}"))?;
    ensure!(
        !cancelled.contains(&format!("after {MAX_STEPS} of")),
        "the cancelled request ran to the end: {cancelled}"
    );
    ensure!(
        log.contains("step 1 of 3 in"),
        "no per-step timing in the verbose log"
    );
    println!("server: {}", cancelled.trim());
    shutdown_with_a_request_in_flight(server, &python, &cond_path)
}

/// SIGTERM while a request runs: the request is answered and the server exits 0.
fn shutdown_with_a_request_in_flight(mut server: Server, python: &Path, cond: &Path) -> Result<()> {
    let script = format!(
        "import numpy as np, tritonclient.http as h\n\
         c = h.InferenceServerClient('localhost:{port}', network_timeout=120)\n\
         ins = []\n\
         for n, a in np.load('{cond}').items():\n\
         \x20   i = h.InferInput(n, list(a.shape), 'FP32'); i.set_data_from_numpy(a); ins.append(i)\n\
         for n, a, t in [('seed', np.array([1], np.int64), 'INT64'), ('steps', np.array([12], np.int32), 'INT32'), ('guidance', np.array([3], np.float32), 'FP32')]:\n\
         \x20   i = h.InferInput(n, [1], t); i.set_data_from_numpy(a); ins.append(i)\n\
         print(c.infer('shapes', ins).as_numpy('latent').shape)\n",
        port = server.port,
        cond = cond.display()
    );
    let client = Command::new(python)
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Wait until the request is running, then ask the server to stop.
    let start = Instant::now();
    while !server.log_text().contains("request ``: step 1 of 12") {
        ensure!(
            start.elapsed() < Duration::from_secs(60),
            "the last request never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: a plain signal to our own child process.
    let rc = unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    ensure!(rc == 0, "cannot signal the server");
    let status = server.child.wait()?;
    let out = client.wait_with_output()?;
    ensure!(
        out.status.success(),
        "the request in flight failed at shutdown: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        status.success(),
        "the server exited with {status}:\n{}",
        server.log_text()
    );
    println!(
        "shutdown: the request in flight got {} and the server exited 0",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    Ok(())
}

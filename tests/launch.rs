//! `dfc launch` with real processes on loopback: the rank processes are `dfc rank-probe`
//! (hidden), which makes no NCCL communicator, and node 0 makes random ids (`--fake-nccl`), so
//! the rendezvous, the id's travel and the failure handling run without GPUs.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// A free loopback port (bound, then released).
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn start(args: &[&str]) -> Result<Child> {
    Command::new(env!("CARGO_BIN_EXE_dfc"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting dfc")
}

/// Waits for `child`, killing it (and failing) after `limit`.
fn finish(mut child: Child, limit: Duration) -> Result<Output> {
    let until = Instant::now() + limit;
    while child.try_wait()?.is_none() {
        if Instant::now() >= until {
            let _ = child.kill();
            let o = child.wait_with_output()?;
            bail!(
                "still running after {limit:?}; stderr: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child.wait_with_output()?)
}

fn node_args<'a>(
    nnodes: &'a str,
    node: &'a str,
    master: &'a str,
    timeout: &'a str,
    probe: &[&'a str],
) -> Vec<&'a str> {
    let mut a = vec![
        "launch",
        "--gpus",
        "2",
        "--nnodes",
        nnodes,
        "--node-rank",
        node,
        "--master-addr",
        master,
        "--timeout",
        timeout,
        "--fake-nccl",
        "--",
        "rank-probe",
    ];
    a.extend_from_slice(probe);
    a
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn all_ranks_of_two_nodes_meet_with_one_id() -> Result<()> {
    let master = format!("127.0.0.1:{}", free_port()?);
    // Node 1 first: it retries until node 0 listens.
    let n1 = start(&node_args("2", "1", &master, "8", &[]))?;
    std::thread::sleep(Duration::from_millis(200));
    let n0 = start(&node_args("2", "0", &master, "8", &[]))?;
    let o0 = finish(n0, Duration::from_secs(9))?;
    let o1 = finish(n1, Duration::from_secs(9))?;
    ensure!(o0.status.success(), "node 0: {}", text(&o0.stderr));
    ensure!(o1.status.success(), "node 1: {}", text(&o1.stderr));
    let lines: Vec<String> = text(&o0.stdout)
        .lines()
        .chain(text(&o1.stdout).lines())
        .map(str::to_string)
        .collect();
    let mut ranks = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for l in &lines {
        // "rank R of 4 on node K: id HEX"
        let f: Vec<&str> = l.split_whitespace().collect();
        ensure!(f.len() == 9 && f[0] == "rank" && f[2] == "of", "line `{l}`");
        ensure!(f[3] == "4", "world size in `{l}`");
        let rank: usize = f[1].parse()?;
        let node: usize = f[6].trim_end_matches(':').parse()?;
        ensure!(rank / 2 == node, "rank {rank} on node {node}");
        ranks.insert(rank);
        ids.insert(f[8].to_string());
    }
    ensure!(ranks == (0..4).collect(), "ranks {ranks:?} from {lines:?}");
    ensure!(ids.len() == 1, "ranks got different ids: {ids:?}");
    Ok(())
}

#[test]
fn a_missing_node_times_out_with_a_clear_message() -> Result<()> {
    let master = format!("127.0.0.1:{}", free_port()?);
    let started = Instant::now();
    let o = finish(
        start(&node_args("3", "0", &master, "1", &[]))?,
        Duration::from_secs(8),
    )?;
    let err = text(&o.stderr);
    ensure!(o.status.code() == Some(1), "exit {:?}: {err}", o.status);
    ensure!(
        err.contains("timed out") && err.contains("node(s) 1, 2 of 3"),
        "message: {err}"
    );
    ensure!(started.elapsed() < Duration::from_secs(5));

    // A non-zero node without its master: the same, from the other side.
    let o = finish(
        start(&node_args("2", "1", &master, "1", &[]))?,
        Duration::from_secs(8),
    )?;
    let err = text(&o.stderr);
    ensure!(o.status.code() == Some(1), "exit {:?}: {err}", o.status);
    ensure!(
        err.contains("timed out") && err.contains("node 0 did not answer"),
        "message: {err}"
    );
    Ok(())
}

#[test]
fn a_failing_rank_stops_every_rank_of_every_node_with_its_error() -> Result<()> {
    let master = format!("127.0.0.1:{}", free_port()?);
    // Rank 3 (node 1) fails; every other rank blocks as in a collective until aborted.
    let probe = ["--fail-rank", "3", "--after-ms", "300", "--block"];
    let started = Instant::now();
    let n0 = start(&node_args("2", "0", &master, "8", &probe))?;
    let n1 = start(&node_args("2", "1", &master, "8", &probe))?;
    let o0 = finish(n0, Duration::from_secs(9))?;
    let o1 = finish(n1, Duration::from_secs(9))?;
    ensure!(
        started.elapsed() < Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
    for (node, o) in [(0, &o0), (1, &o1)] {
        let err = text(&o.stderr);
        ensure!(
            o.status.code() == Some(1),
            "node {node}: exit {:?}: {err}",
            o.status
        );
        ensure!(
            err.contains("error: rank 3 failed: rank 3: injected failure"),
            "node {node} does not report rank 3's error: {err}"
        );
    }
    // Node 0's ranks were aborted (their communicator first), not killed.
    let err0 = text(&o0.stderr);
    for r in [0, 1] {
        ensure!(
            err0.contains(&format!("rank {r}: communicator aborted")),
            "rank {r} was not aborted: {err0}"
        );
    }
    Ok(())
}

#[test]
fn one_node_failure_stops_its_other_ranks() -> Result<()> {
    let o = finish(
        start(&[
            "launch",
            "--gpus",
            "3",
            "--fake-nccl",
            "--",
            "rank-probe",
            "--fail-rank",
            "1",
            "--block",
        ])?,
        Duration::from_secs(9),
    )?;
    let err = text(&o.stderr);
    ensure!(o.status.code() == Some(1), "exit {:?}: {err}", o.status);
    ensure!(
        err.contains("rank 1 failed: rank 1: injected failure"),
        "{err}"
    );
    ensure!(
        err.matches("communicator aborted").count() == 2,
        "ranks 0 and 2 were not aborted: {err}"
    );
    Ok(())
}

#[test]
fn wrong_node_count_or_rank_is_refused() -> Result<()> {
    let master = format!("127.0.0.1:{}", free_port()?);
    let n0 = start(&node_args("2", "0", &master, "3", &[]))?;
    // Node 1 believes in 3 nodes: node 0 refuses it.
    let o1 = finish(
        start(&node_args("3", "1", &master, "3", &[]))?,
        Duration::from_secs(6),
    )?;
    let err = text(&o1.stderr);
    ensure!(o1.status.code() == Some(1), "exit {:?}: {err}", o1.status);
    ensure!(
        err.contains("refused") && err.contains("--nnodes 3") && err.contains("--nnodes 2"),
        "message: {err}"
    );
    // A second node 0 (rank 0 is node 0's own) is refused too.
    let o = finish(
        start(&node_args("2", "0", &master, "1", &[]))?,
        Duration::from_secs(6),
    )?;
    ensure!(o.status.code() == Some(1), "a second node 0 was accepted");
    // Node 0 never got its node 1 and times out.
    let o0 = finish(n0, Duration::from_secs(6))?;
    let err0 = text(&o0.stderr);
    ensure!(
        o0.status.code() == Some(1) && err0.contains("timed out"),
        "{err0}"
    );

    // A node rank out of range is refused before anything starts.
    let o = finish(
        start(&node_args("2", "2", &master, "1", &[]))?,
        Duration::from_secs(6),
    )?;
    let err = text(&o.stderr);
    ensure!(o.status.code() == Some(1), "exit {:?}: {err}", o.status);
    ensure!(err.contains("--node-rank 2 is out of range"), "{err}");
    Ok(())
}

#[test]
fn launch_refuses_the_cpu_backend_and_other_commands() -> Result<()> {
    for (cmd, want) in [
        (
            vec![
                "launch",
                "--gpus",
                "2",
                "--",
                "run",
                "p",
                "--backend",
                "cpu",
            ],
            "runs the tensorrt backend",
        ),
        (
            vec!["launch", "--gpus", "2", "--", "compile", "m.onnx"],
            "not `compile`",
        ),
    ] {
        let o = finish(start(&cmd)?, Duration::from_secs(6))?;
        let err = text(&o.stderr);
        ensure!(
            o.status.code() == Some(1),
            "{cmd:?}: exit {:?}: {err}",
            o.status
        );
        ensure!(err.contains(want), "{cmd:?}: {err}");
    }
    Ok(())
}

//! `dfc launch --gpus N [--nnodes M --node-rank K --master-addr HOST:PORT] [--timeout S] -- run
//! PLAN …`: one `dfc run --backend tensorrt` process per GPU of this node, the group's NCCL
//! unique id made on node 0 and carried to the other nodes over TCP, and a failing rank stopping
//! every other (see [`crate::runtime::launch`]). Also the hidden `rank-probe` command, a rank
//! process that makes no communicator (the launcher's tests).

use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::runtime::launch::{
    FakeIds, IdSource, LaunchConfig, RankCommand, RankEnv, rendezvous, supervise, watch_for_abort,
};

/// Arguments of `dfc launch`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Ranks (GPUs) on this node: rank processes use CUDA devices 0..N.
    #[arg(long)]
    pub gpus: usize,
    /// Number of nodes (each runs its own `dfc launch` with the same --gpus).
    #[arg(long, default_value_t = 1)]
    pub nnodes: usize,
    /// This node's rank (0: the node that makes the unique id and listens on --master-addr).
    #[arg(long, default_value_t = 0)]
    pub node_rank: usize,
    /// Node 0's address, `HOST:PORT`: node 0 listens there, the others connect.
    #[arg(long, value_name = "HOST:PORT")]
    pub master_addr: Option<String>,
    /// Seconds the rendezvous of the nodes may take.
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,
    /// Random ids instead of NCCL's (for rank commands that make no NCCL communicator).
    #[arg(long, hide = true)]
    pub fake_nccl: bool,
    /// The dfc command every rank runs: `run PLAN …` (`--backend tensorrt` is implied).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// The rank command's arguments: `run` gets `--backend tensorrt` unless it names a backend,
/// which must then be `tensorrt`.
fn rank_args(command: &[String], fake: bool) -> Result<Vec<String>> {
    let Some(sub) = command.first() else {
        bail!("no command after `--` (e.g. `-- run PLAN --inputs cond.npz -o out.npz`)");
    };
    match sub.as_str() {
        "run" => {
            let mut args = command.to_vec();
            let backend = command.iter().enumerate().find_map(|(i, a)| {
                if a == "--backend" {
                    Some(command.get(i + 1).cloned().unwrap_or_default())
                } else {
                    a.strip_prefix("--backend=").map(str::to_string)
                }
            });
            match backend.as_deref() {
                None => args.extend(["--backend".to_string(), "tensorrt".to_string()]),
                Some("tensorrt") => {}
                Some(other) => bail!(
                    "dfc launch runs the tensorrt backend (one process per GPU); `--backend \
                     {other}` runs every rank in one process: use `dfc {}` without launch",
                    command.join(" ")
                ),
            }
            Ok(args)
        }
        "rank-probe" if fake => Ok(command.to_vec()),
        "rank-probe" => bail!("rank-probe makes no NCCL communicator; it needs --fake-nccl"),
        other => bail!("dfc launch runs `run PLAN …` on every rank, not `{other}`"),
    }
}

/// The id source of node 0.
fn id_source(fake: bool) -> Result<Box<dyn IdSource>> {
    if fake {
        return Ok(Box::new(FakeIds));
    }
    #[cfg(feature = "gpu")]
    {
        Ok(Box::new(
            crate::runtime::gpu::NcclIds::find().context("NCCL is needed for the unique id")?,
        ))
    }
    #[cfg(not(feature = "gpu"))]
    {
        bail!(
            "this dfc was built without the `gpu` feature, so it cannot run ranks on GPUs; \
             build it with `cargo build --release --features gpu`"
        )
    }
}

/// Extra environment of the rank processes: the library folders that let them load NCCL.
fn rank_env(fake: bool) -> Result<Vec<(String, String)>> {
    if fake {
        return Ok(Vec::new());
    }
    #[cfg(feature = "gpu")]
    {
        Ok(crate::runtime::gpu::libs::rank_library_env()?)
    }
    #[cfg(not(feature = "gpu"))]
    {
        Ok(Vec::new())
    }
}

/// Runs the command.
pub fn run(args: &Args) -> Result<()> {
    // The launcher writes to its ranks' stdin; a rank that already died must surface as an
    // error of that write (handled), not as a SIGPIPE that kills the launcher silently (the
    // executable sets SIGPIPE's default action for the printing commands).
    #[cfg(unix)]
    // SAFETY: changing a signal's disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        bail!("--timeout must be a positive number of seconds");
    }
    let cfg = LaunchConfig {
        gpus: args.gpus,
        nnodes: args.nnodes,
        node_rank: args.node_rank,
        master: args.master_addr.clone(),
        timeout: Duration::from_secs_f64(args.timeout),
    };
    cfg.check()?;
    let rank_args = rank_args(&args.command, args.fake_nccl)?;
    // Only node 0 makes the id; the others must not need NCCL before the rendezvous.
    let ids: Box<dyn IdSource> = if args.node_rank == 0 {
        id_source(args.fake_nccl)?
    } else {
        Box::new(FakeIds)
    };
    let env = rank_env(args.fake_nccl)?;
    let program = std::env::current_exe().context("locating the dfc executable")?;
    let (id, peers) = rendezvous(&cfg, ids.as_ref())?;
    eprintln!(
        "dfc launch: node {} of {}: ranks {}..{} of {}",
        cfg.node_rank,
        cfg.nnodes,
        cfg.rank_of(0),
        cfg.rank_of(cfg.gpus),
        cfg.world_size()
    );
    supervise(
        &cfg,
        &id,
        peers,
        &RankCommand {
            program,
            args: rank_args,
            env,
        },
    )?;
    Ok(())
}

/// Arguments of `dfc rank-probe` (hidden): a rank process for the launcher's tests.
#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// This rank fails (exits with an error) after --after-ms.
    #[arg(long)]
    pub fail_rank: Option<usize>,
    /// Milliseconds before the failure, or of work of the other ranks.
    #[arg(long, default_value_t = 0)]
    pub after_ms: u64,
    /// Ranks that do not fail wait (as in a collective) until they are aborted, at most 60 s.
    #[arg(long)]
    pub block: bool,
}

/// Runs `rank-probe`: prints `rank R of W on node K: id <first 16 hex digits>` and behaves as
/// its flags say.
pub fn probe(args: &ProbeArgs) -> Result<()> {
    let Some(me) = RankEnv::from_env()? else {
        bail!("rank-probe runs under `dfc launch --fake-nccl`");
    };
    let hex = crate::runtime::launch::to_hex(&me.unique_id);
    println!(
        "rank {} of {} on node {}: id {}",
        me.rank,
        me.world_size,
        me.node_rank,
        &hex[..16.min(hex.len())]
    );
    let rank = me.rank;
    watch_for_abort(move |reason| {
        eprintln!("rank {rank}: communicator aborted ({reason})");
    })?;
    let pause = Duration::from_millis(args.after_ms);
    if args.fail_rank == Some(rank) {
        std::thread::sleep(pause);
        bail!("rank {rank}: injected failure");
    }
    if args.block {
        std::thread::sleep(Duration::from_secs(60));
        bail!("rank {rank}: nobody aborted this rank within 60 s");
    }
    std::thread::sleep(pause);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn run_gets_the_tensorrt_backend() {
        let got = rank_args(&strings(&["run", "p", "-o", "x.npz"]), false).expect("ok");
        assert_eq!(got[got.len() - 2..], strings(&["--backend", "tensorrt"]));
        let same = strings(&["run", "p", "--backend=tensorrt"]);
        assert_eq!(rank_args(&same, false).expect("ok"), same);
        assert!(rank_args(&strings(&["run", "p", "--backend", "cpu"]), false).is_err());
        assert!(rank_args(&strings(&["compile", "m.onnx"]), false).is_err());
        assert!(rank_args(&strings(&["rank-probe"]), false).is_err());
    }
}

//! Supervision: the launcher starts its ranks, relays their stderr, and watches them and the
//! other nodes until every rank has succeeded or one has failed anywhere; then it stops the
//! rest ([`super::ABORT_GRACE`]).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::rank::RankEnv;
use super::rendezvous::Peers;
use super::{ABORT_GRACE, Event, LaunchConfig, LaunchError};

/// One rank process.
struct RankChild {
    rank: usize,
    child: Child,
    stdin: Option<ChildStdin>,
    /// The `error:` lines of its stderr (and the `caused by` lines after them).
    errors: Arc<Mutex<Vec<String>>>,
    status: Option<ExitStatus>,
}

impl RankChild {
    fn message(&self) -> String {
        let lines = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        let text = lines.join(": ");
        let status = self
            .status
            .map_or_else(|| "did not exit".to_string(), |s| s.to_string());
        if text.is_empty() {
            format!("rank {} failed: {status}", self.rank)
        } else {
            format!("rank {} failed: {text}", self.rank)
        }
    }
}

/// What to start for every rank.
#[derive(Debug, Clone)]
pub struct RankCommand {
    /// The program (normally this `dfc` binary).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment (e.g. a library path), for every rank.
    pub env: Vec<(String, String)>,
}

fn spawn(
    cmd: &RankCommand,
    env: &RankEnv,
    events: &Sender<Event>,
) -> Result<RankChild, LaunchError> {
    let mut c = Command::new(&cmd.program);
    c.args(&cmd.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped());
    for (k, v) in &cmd.env {
        c.env(k, v);
    }
    for (k, v) in env.vars() {
        c.env(k, v);
    }
    let mut child = c.spawn().map_err(|source| LaunchError::Spawn {
        rank: env.rank,
        program: cmd.program.display().to_string(),
        source,
    })?;
    let errors = Arc::new(Mutex::new(Vec::new()));
    if let Some(stderr) = child.stderr.take() {
        let errors = errors.clone();
        let events = events.clone();
        let rank = env.rank;
        std::thread::spawn(move || {
            let mut in_error = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[rank {rank}] {line}");
                if let Some(e) = line.strip_prefix("error: ") {
                    in_error = true;
                    errors
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(e.into());
                } else if let Some(c) = line.trim_start().strip_prefix("caused by: ")
                    && in_error
                {
                    errors
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(c.into());
                }
            }
            let _ = events.send(Event::Stderr);
        });
    }
    Ok(RankChild {
        rank: env.rank,
        stdin: child.stdin.take(),
        child,
        errors,
        status: None,
    })
}

/// Starts this node's ranks (`cmd` each, with its [`RankEnv`]) and supervises them until all
/// succeed or one fails anywhere (see [`super`]'s documentation). `peers` come from
/// [`rendezvous`](super::rendezvous()). Returns the first failure, the same on every node.
pub fn supervise(
    cfg: &LaunchConfig,
    unique_id: &[u8],
    mut peers: Peers,
    cmd: &RankCommand,
) -> Result<(), LaunchError> {
    let (tx, rx) = channel();
    peers.listen(&tx)?;
    let mut children = Vec::with_capacity(cfg.gpus);
    for local in 0..cfg.gpus {
        let env = RankEnv {
            rank: cfg.rank_of(local),
            world_size: cfg.world_size(),
            local_rank: local,
            node_rank: cfg.node_rank,
            unique_id: unique_id.to_vec(),
        };
        match spawn(cmd, &env, &tx) {
            Ok(c) => children.push(c),
            Err(e) => {
                let reason = e.to_string();
                tell_failure(cfg, &mut peers, None, &reason);
                stop(&mut children, &reason);
                return Err(e);
            }
        }
    }
    drop(tx);
    let outcome = watch(cfg, &mut children, &mut peers, &rx);
    if let Err(reason) = &outcome {
        stop(&mut children, reason);
    }
    outcome.map_err(LaunchError::Failed)
}

/// Sends a failure to the other nodes: node k tells node 0; node 0 tells everyone but the
/// node it came from.
fn tell_failure(cfg: &LaunchConfig, peers: &mut Peers, from: Option<usize>, reason: &str) {
    if cfg.node_rank == 0 {
        peers.send(from, &format!("abort {reason}"));
    } else if from.is_none() {
        peers.send(None, &format!("fail {reason}"));
    }
}

fn watch(
    cfg: &LaunchConfig,
    children: &mut [RankChild],
    peers: &mut Peers,
    rx: &Receiver<Event>,
) -> Result<(), String> {
    let mut remote_pending = peers.nodes();
    let mut local_done = false;
    loop {
        for c in children.iter_mut() {
            if c.status.is_some() {
                continue;
            }
            match c.child.try_wait() {
                Ok(Some(status)) => {
                    c.status = Some(status);
                    if !status.success() {
                        // Its error lines are complete once its stderr has ended.
                        let until = Instant::now() + Duration::from_millis(500);
                        while Instant::now() < until && Arc::strong_count(&c.errors) > 1 {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        let reason = c.message();
                        tell_failure(cfg, peers, None, &reason);
                        return Err(reason);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    let reason = format!("rank {}: cannot wait for it: {e}", c.rank);
                    tell_failure(cfg, peers, None, &reason);
                    return Err(reason);
                }
            }
        }
        if !local_done && children.iter().all(|c| c.status.is_some()) {
            local_done = true;
            if cfg.node_rank != 0 {
                peers.send(None, "done");
                return Ok(());
            }
        }
        if local_done && remote_pending.is_empty() {
            return Ok(());
        }
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(Event::Stderr) | Err(RecvTimeoutError::Timeout) => {}
            Ok(Event::Done(node)) => {
                remote_pending.remove(&node);
            }
            Ok(Event::Failed(node, reason)) => {
                tell_failure(cfg, peers, Some(node), &reason);
                return Err(reason);
            }
            Ok(Event::Lost(node)) => {
                if remote_pending.contains(&node) {
                    let reason = format!("lost the connection to node {node}");
                    tell_failure(cfg, peers, Some(node), &reason);
                    return Err(reason);
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Aborts every live rank (`abort <reason>` on its stdin), kills those still alive after
/// [`ABORT_GRACE`], and reaps them all.
fn stop(children: &mut [RankChild], reason: &str) {
    for c in children.iter_mut() {
        if c.status.is_none()
            && let Some(stdin) = c.stdin.as_mut()
        {
            let _ = writeln!(stdin, "abort {reason}");
            let _ = stdin.flush();
        }
    }
    let until = Instant::now() + ABORT_GRACE;
    loop {
        let mut alive = false;
        for c in children.iter_mut() {
            if c.status.is_none() {
                match c.child.try_wait() {
                    Ok(Some(s)) => c.status = Some(s),
                    _ => alive = true,
                }
            }
        }
        if !alive {
            return;
        }
        if Instant::now() >= until {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for c in children.iter_mut() {
        if c.status.is_none() {
            let _ = c.child.kill();
            c.status = c.child.wait().ok();
        }
    }
}

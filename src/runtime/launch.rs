//! One process per rank: the launcher side (`dfc launch`) and the rank side (a process it
//! started).
//!
//! **Launcher.** Each node runs one launcher with `gpus` ranks. Node 0 makes the group's
//! unique id (an [`IdSource`]: NCCL's `ncclGetUniqueId`, or [`FakeIds`] where no NCCL is
//! wanted, e.g. tests). With several nodes, node 0 listens on the master address and every
//! other node connects to it ([`rendezvous`]): each says hello with its node count, node rank
//! and GPU count; node 0 refuses a hello that does not fit (other node count, rank out of
//! range or taken, another GPU count) and, once every node is there, sends each the id. Nobody
//! waits past the timeout: a missing node fails the rendezvous with a message that says which
//! nodes never came. Then each launcher starts its ranks (global rank = node rank × gpus + local
//! rank) as child processes of the `dfc` binary, with [`RankEnv`] in their environment, and
//! supervises them ([`supervise`]).
//!
//! **Failure.** The first rank that exits unsuccessfully decides the outcome: its launcher
//! takes its error (the `error:` lines of its stderr), tells the other nodes (node k → node 0
//! → every other node, over the rendezvous connections, which stay open), and every launcher
//! writes `abort <reason>` to its live ranks' stdin. A rank process watches its stdin
//! ([`watch_for_abort`]): on `abort` (or when the launcher is gone) it aborts its communicator
//! (`ncclCommAbort`, which makes blocked collectives return) and exits with the reason. A rank
//! that has not exited within [`ABORT_GRACE`] is killed. Every launcher then exits with the
//! same first error; a lost connection counts as a failure of that node.
//!
//! Protocol (text lines over TCP): `hello <nnodes> <node> <gpus>` → `id <hex>` or
//! `refuse <reason>`; afterwards `fail <reason>` (a node's rank failed), `abort <reason>`
//! (node 0 to the others) and `done` (a node's ranks all succeeded).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use thiserror::Error;

/// Bytes of a collective's unique id (NCCL's `ncclUniqueId`).
pub const ID_BYTES: usize = 128;

/// How long an aborted rank may take to exit before it is killed.
pub const ABORT_GRACE: Duration = Duration::from_secs(3);

/// Environment variables a launcher gives each rank process.
pub mod env {
    /// Global rank.
    pub const RANK: &str = "DFC_RANK";
    /// Number of ranks of all nodes.
    pub const WORLD_SIZE: &str = "DFC_WORLD_SIZE";
    /// Rank within the node; also the CUDA device ordinal.
    pub const LOCAL_RANK: &str = "DFC_LOCAL_RANK";
    /// The node's rank.
    pub const NODE_RANK: &str = "DFC_NODE_RANK";
    /// The group's unique id, hexadecimal.
    pub const UNIQUE_ID: &str = "DFC_UNIQUE_ID";
}

/// Errors of launching, rendezvous and supervision.
#[derive(Debug, Error)]
pub enum LaunchError {
    /// Options that cannot work.
    #[error("{0}")]
    Options(String),
    /// The rendezvous did not complete.
    #[error("rendezvous at {addr}: {reason}")]
    Rendezvous { addr: String, reason: String },
    /// Node 0 refused this node.
    #[error("node 0 at {addr} refused this node: {reason}")]
    Refused { addr: String, reason: String },
    /// No unique id could be made.
    #[error("cannot make the group's unique id: {0}")]
    Id(String),
    /// A rank process could not be started.
    #[error("cannot start rank {rank} ({program}): {source}")]
    Spawn {
        rank: usize,
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// A rank failed (here or on another node); every rank was stopped.
    #[error("{0}")]
    Failed(String),
    /// The environment of a rank process is malformed.
    #[error("bad rank environment: {0}")]
    Env(String),
}

/// Where this launcher stands in the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchConfig {
    /// Ranks (GPUs) on this node; the same on every node.
    pub gpus: usize,
    /// Number of nodes.
    pub nnodes: usize,
    /// This node's rank, `0..nnodes`.
    pub node_rank: usize,
    /// Node 0's address (`HOST:PORT`); required with more than one node.
    pub master: Option<String>,
    /// Longest wait of the rendezvous.
    pub timeout: Duration,
}

impl LaunchConfig {
    /// Checks the options against each other.
    pub fn check(&self) -> Result<(), LaunchError> {
        if self.gpus == 0 {
            return Err(LaunchError::Options("--gpus must be at least 1".into()));
        }
        if self.nnodes == 0 {
            return Err(LaunchError::Options("--nnodes must be at least 1".into()));
        }
        if self.node_rank >= self.nnodes {
            return Err(LaunchError::Options(format!(
                "--node-rank {} is out of range for --nnodes {} (0..{})",
                self.node_rank, self.nnodes, self.nnodes
            )));
        }
        if self.nnodes > 1 && self.master.is_none() {
            return Err(LaunchError::Options(
                "--master-addr HOST:PORT is required with more than one node".into(),
            ));
        }
        Ok(())
    }

    /// Number of ranks of all nodes.
    pub fn world_size(&self) -> usize {
        self.gpus * self.nnodes
    }

    /// Global rank of local rank `local`.
    pub fn rank_of(&self, local: usize) -> usize {
        self.node_rank * self.gpus + local
    }
}

/// Makes the group's unique id (node 0 only).
pub trait IdSource {
    /// A fresh id of [`ID_BYTES`] bytes.
    fn unique_id(&self) -> Result<Vec<u8>, LaunchError>;
}

/// Ids that are random bytes: for rank processes that do not create an NCCL communicator
/// (tests of the launcher). Every rank still gets the same bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct FakeIds;

impl IdSource for FakeIds {
    fn unique_id(&self) -> Result<Vec<u8>, LaunchError> {
        let seed = format!(
            "{}:{:?}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)
        );
        let mut out = Vec::with_capacity(ID_BYTES);
        let mut block = Sha256::digest(seed.as_bytes());
        while out.len() < ID_BYTES {
            out.extend_from_slice(&block);
            block = Sha256::digest(block);
        }
        out.truncate(ID_BYTES);
        Ok(out)
    }
}

/// Lower-case hexadecimal of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of hexadecimal `s`.
pub fn from_hex(s: &str) -> Result<Vec<u8>, LaunchError> {
    if !s.len().is_multiple_of(2) {
        return Err(LaunchError::Env("odd-length hexadecimal id".into()));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| LaunchError::Env(format!("`{s}` is not hexadecimal")))
        })
        .collect()
}

/// What a launcher tells one rank process (through [`env`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankEnv {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub node_rank: usize,
    /// The group's unique id ([`ID_BYTES`] bytes).
    pub unique_id: Vec<u8>,
}

impl RankEnv {
    /// The environment variables of this rank.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            (env::RANK, self.rank.to_string()),
            (env::WORLD_SIZE, self.world_size.to_string()),
            (env::LOCAL_RANK, self.local_rank.to_string()),
            (env::NODE_RANK, self.node_rank.to_string()),
            (env::UNIQUE_ID, to_hex(&self.unique_id)),
        ]
    }

    /// This process's rank environment: `None` when it was not started by a launcher
    /// (no `DFC_RANK`), an error when it is incomplete or malformed.
    pub fn from_env() -> Result<Option<Self>, LaunchError> {
        if std::env::var_os(env::RANK).is_none() {
            return Ok(None);
        }
        let var = |name: &str| {
            std::env::var(name).map_err(|_| LaunchError::Env(format!("{name} is not set")))
        };
        let num = |name: &str| -> Result<usize, LaunchError> {
            let v = var(name)?;
            v.trim()
                .parse()
                .map_err(|_| LaunchError::Env(format!("{name}={v} is not a number")))
        };
        let me = Self {
            rank: num(env::RANK)?,
            world_size: num(env::WORLD_SIZE)?,
            local_rank: num(env::LOCAL_RANK)?,
            node_rank: num(env::NODE_RANK)?,
            unique_id: from_hex(var(env::UNIQUE_ID)?.trim())?,
        };
        if me.rank >= me.world_size {
            return Err(LaunchError::Env(format!(
                "rank {} of a world of {}",
                me.rank, me.world_size
            )));
        }
        if me.unique_id.len() != ID_BYTES {
            return Err(LaunchError::Env(format!(
                "the unique id has {} bytes, not {ID_BYTES}",
                me.unique_id.len()
            )));
        }
        Ok(Some(me))
    }
}

/// Rank side: watches stdin for the launcher's `abort <reason>` (or its end: the launcher is
/// gone) on a background thread; then calls `on_abort` (abort the communicator, so that
/// blocked collectives return), prints `error: aborted: <reason>` and exits with status 1.
/// Call it only in a process a launcher started (its stdin is the launcher's pipe).
pub fn watch_for_abort<F>(on_abort: F) -> std::io::Result<JoinHandle<()>>
where
    F: FnOnce(&str) + Send + 'static,
{
    std::thread::Builder::new()
        .name("dfc-abort-watch".into())
        .spawn(move || {
            let stdin = std::io::stdin();
            let mut line = String::new();
            let reason = loop {
                line.clear();
                match stdin.lock().read_line(&mut line) {
                    Ok(0) | Err(_) => break "the launcher is gone".to_string(),
                    Ok(_) => {
                        if let Some(r) = line.trim_end().strip_prefix("abort ") {
                            break r.to_string();
                        }
                    }
                }
            };
            on_abort(&reason);
            eprintln!("error: aborted: {reason}");
            std::process::exit(1);
        })
}

/// A connection to another node after the rendezvous.
struct Peer {
    node: usize,
    stream: TcpStream,
}

/// The nodes this launcher talks to after the rendezvous: node 0 talks to every other node,
/// the others to node 0 only.
pub struct Peers {
    peers: Vec<Peer>,
}

impl Peers {
    /// No other node (one-node jobs).
    pub fn none() -> Self {
        Self { peers: Vec::new() }
    }

    fn send(&mut self, except: Option<usize>, line: &str) {
        for p in &mut self.peers {
            if Some(p.node) != except {
                // A peer that is gone cannot be told; its own launcher notices the closed
                // connection.
                let _ = writeln!(p.stream, "{line}");
                let _ = p.stream.flush();
            }
        }
    }

    fn nodes(&self) -> BTreeSet<usize> {
        self.peers.iter().map(|p| p.node).collect()
    }

    /// Starts one reader thread per peer; they report to `events`.
    fn listen(&self, events: &Sender<Event>) -> Result<(), LaunchError> {
        for p in &self.peers {
            let stream = p.stream.try_clone().map_err(|e| {
                LaunchError::Failed(format!("cannot read from node {}: {e}", p.node))
            })?;
            // Rendezvous used a read timeout; the job itself may run for hours.
            let _ = stream.set_read_timeout(None);
            let node = p.node;
            let events = events.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => {
                            let _ = events.send(Event::Lost(node));
                            return;
                        }
                        Ok(_) => {
                            let l = line.trim_end();
                            let ev = if l == "done" {
                                Event::Done(node)
                            } else if let Some(r) =
                                l.strip_prefix("fail ").or_else(|| l.strip_prefix("abort "))
                            {
                                Event::Failed(node, r.to_string())
                            } else {
                                continue;
                            };
                            if events.send(ev).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
        Ok(())
    }
}

fn read_line_until(reader: &mut BufReader<TcpStream>, deadline: Instant) -> Option<String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return None;
    }
    reader.get_ref().set_read_timeout(Some(left)).ok()?;
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(n) if n > 0 => Some(line.trim_end().to_string()),
        _ => None,
    }
}

/// Rendezvous of all nodes: returns the group's unique id (from `ids`, on node 0) and the
/// open connections to the other nodes. With one node it only asks `ids`.
pub fn rendezvous(cfg: &LaunchConfig, ids: &dyn IdSource) -> Result<(Vec<u8>, Peers), LaunchError> {
    cfg.check()?;
    if cfg.nnodes == 1 {
        return Ok((ids.unique_id()?, Peers::none()));
    }
    let addr = cfg.master.clone().unwrap_or_default();
    let deadline = Instant::now() + cfg.timeout;
    if cfg.node_rank == 0 {
        serve(cfg, &addr, deadline, ids)
    } else {
        join(cfg, &addr, deadline)
    }
}

fn resolve(addr: &str) -> Result<Vec<SocketAddr>, LaunchError> {
    let all: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| LaunchError::Options(format!("--master-addr {addr}: {e}")))?
        .collect();
    if all.is_empty() {
        return Err(LaunchError::Options(format!(
            "--master-addr {addr} resolves to no address"
        )));
    }
    Ok(all)
}

/// Node 0: accepts every other node, then sends them the id.
fn serve(
    cfg: &LaunchConfig,
    addr: &str,
    deadline: Instant,
    ids: &dyn IdSource,
) -> Result<(Vec<u8>, Peers), LaunchError> {
    let fail = |reason: String| LaunchError::Rendezvous {
        addr: addr.to_string(),
        reason,
    };
    let listener = TcpListener::bind(&resolve(addr)?[..])
        .map_err(|e| fail(format!("node 0 cannot listen: {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| fail(e.to_string()))?;
    let mut joined: Vec<(usize, BufReader<TcpStream>)> = Vec::new();
    while joined.len() + 1 < cfg.nnodes {
        if Instant::now() >= deadline {
            let have: BTreeSet<usize> = joined.iter().map(|(n, _)| *n).collect();
            let missing: Vec<String> = (1..cfg.nnodes)
                .filter(|n| !have.contains(n))
                .map(|n| n.to_string())
                .collect();
            return Err(fail(format!(
                "timed out after {:.0} s waiting for node(s) {} of {} (started with --node-rank \
                 and --master-addr {addr}?)",
                cfg.timeout.as_secs_f64(),
                missing.join(", "),
                cfg.nnodes
            )));
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err(fail(format!("accept: {e}"))),
        };
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_nodelay(true);
        let mut reader = BufReader::new(stream);
        let Some(hello) = read_line_until(&mut reader, deadline) else {
            continue;
        };
        let verdict = check_hello(cfg, &hello, &joined);
        match verdict {
            Ok(node) => joined.push((node, reader)),
            Err(reason) => {
                eprintln!("dfc launch: refused a node: {reason}");
                let _ = writeln!(reader.get_mut(), "refuse {reason}");
            }
        }
    }
    let id = ids.unique_id()?;
    let line = format!("id {}", to_hex(&id));
    let mut peers = Vec::with_capacity(joined.len());
    for (node, reader) in joined {
        let mut stream = reader.into_inner();
        writeln!(stream, "{line}")
            .and_then(|()| stream.flush())
            .map_err(|e| fail(format!("sending the id to node {node}: {e}")))?;
        peers.push(Peer { node, stream });
    }
    Ok((id, Peers { peers }))
}

fn check_hello(
    cfg: &LaunchConfig,
    hello: &str,
    joined: &[(usize, BufReader<TcpStream>)],
) -> Result<usize, String> {
    let f: Vec<&str> = hello.split_whitespace().collect();
    let [_, nnodes, node, gpus] = f.as_slice() else {
        return Err(format!("unexpected greeting `{hello}`"));
    };
    if f[0] != "hello" {
        return Err(format!("unexpected greeting `{hello}`"));
    }
    let num = |s: &str| s.parse::<usize>().map_err(|_| format!("`{hello}`: `{s}`?"));
    let (nnodes, node, gpus) = (num(nnodes)?, num(node)?, num(gpus)?);
    if nnodes != cfg.nnodes {
        return Err(format!(
            "node {node} was started with --nnodes {nnodes}, node 0 with --nnodes {}",
            cfg.nnodes
        ));
    }
    if node == 0 || node >= cfg.nnodes {
        return Err(format!(
            "node rank {node} is not one of 1..{} (node 0 is the master)",
            cfg.nnodes
        ));
    }
    if joined.iter().any(|(n, _)| *n == node) {
        return Err(format!("node rank {node} has already joined"));
    }
    if gpus != cfg.gpus {
        return Err(format!(
            "node {node} has --gpus {gpus}, node 0 --gpus {} (every node runs the same number)",
            cfg.gpus
        ));
    }
    Ok(node)
}

/// Node k > 0: connects to node 0 (retrying until the deadline), says hello, gets the id.
fn join(
    cfg: &LaunchConfig,
    addr: &str,
    deadline: Instant,
) -> Result<(Vec<u8>, Peers), LaunchError> {
    let fail = |reason: String| LaunchError::Rendezvous {
        addr: addr.to_string(),
        reason,
    };
    let targets = resolve(addr)?;
    let timed_out = || {
        fail(format!(
            "timed out after {:.0} s: node 0 did not answer (is `dfc launch --node-rank 0 \
             --master-addr {addr}` running, with --nnodes {}?)",
            cfg.timeout.as_secs_f64(),
            cfg.nnodes
        ))
    };
    let stream = 'connect: loop {
        for t in &targets {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timed_out());
            }
            if let Ok(s) = TcpStream::connect_timeout(t, left.min(Duration::from_secs(2))) {
                break 'connect s;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream);
    writeln!(
        reader.get_mut(),
        "hello {} {} {}",
        cfg.nnodes,
        cfg.node_rank,
        cfg.gpus
    )
    .map_err(|e| fail(format!("sending hello: {e}")))?;
    let Some(reply) = read_line_until(&mut reader, deadline) else {
        return Err(timed_out());
    };
    if let Some(reason) = reply.strip_prefix("refuse ") {
        return Err(LaunchError::Refused {
            addr: addr.to_string(),
            reason: reason.to_string(),
        });
    }
    let Some(hex) = reply.strip_prefix("id ") else {
        return Err(fail(format!("unexpected answer `{reply}`")));
    };
    let id = from_hex(hex).map_err(|e| fail(e.to_string()))?;
    Ok((
        id,
        Peers {
            peers: vec![Peer {
                node: 0,
                stream: reader.into_inner(),
            }],
        },
    ))
}

/// What a supervisor learns.
enum Event {
    /// A rank process's stderr ended (it exited or closed it).
    Stderr,
    /// A node's ranks all succeeded.
    Done(usize),
    /// A node reports a failure (its own, or forwarded by node 0).
    Failed(usize, String),
    /// The connection to a node closed.
    Lost(usize),
}

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
/// succeed or one fails anywhere (see the module documentation). `peers` come from
/// [`rendezvous`]. Returns the first failure, the same on every node.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let id = FakeIds.unique_id().expect("id");
        assert_eq!(id.len(), ID_BYTES);
        assert_eq!(from_hex(&to_hex(&id)).expect("hex"), id);
        assert!(from_hex("abc").is_err());
        assert!(from_hex("zz").is_err());
    }

    #[test]
    fn options_are_checked() {
        let cfg = LaunchConfig {
            gpus: 2,
            nnodes: 2,
            node_rank: 2,
            master: Some("127.0.0.1:1".into()),
            timeout: Duration::from_secs(1),
        };
        assert!(cfg.check().is_err());
        let no_master = LaunchConfig {
            node_rank: 1,
            master: None,
            ..cfg.clone()
        };
        assert!(no_master.check().is_err());
        let ok = LaunchConfig {
            node_rank: 1,
            ..cfg
        };
        assert!(ok.check().is_ok());
        assert_eq!(ok.rank_of(1), 3);
        assert_eq!(ok.world_size(), 4);
    }
}

//! The rendezvous of the nodes over TCP: node 0 listens, checks every other node's hello and
//! sends each the group's unique id; the connections stay open ([`Peers`]) to carry failures
//! and completions while the job runs.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use super::id::{IdSource, from_hex, to_hex};
use super::{Event, LaunchConfig, LaunchError};

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

    pub(super) fn send(&mut self, except: Option<usize>, line: &str) {
        for p in &mut self.peers {
            if Some(p.node) != except {
                // A peer that is gone cannot be told; its own launcher notices the closed
                // connection.
                let _ = writeln!(p.stream, "{line}");
                let _ = p.stream.flush();
            }
        }
    }

    pub(super) fn nodes(&self) -> BTreeSet<usize> {
        self.peers.iter().map(|p| p.node).collect()
    }

    /// Starts one reader thread per peer; they report to `events`.
    pub(super) fn listen(&self, events: &Sender<Event>) -> Result<(), LaunchError> {
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

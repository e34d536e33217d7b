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
//!
//! The files follow the seams: `id` (the group's unique id and its hexadecimal form), `rank`
//! (the rank side: its environment, the abort watch), `rendezvous` (the nodes meet, the
//! connections that stay open) and `supervise` (the launcher starts its ranks and watches
//! them and the other nodes).

use std::time::Duration;

use thiserror::Error;

mod id;
mod rank;
mod rendezvous;
mod supervise;

pub use id::{FakeIds, IdSource, from_hex, to_hex};
pub use rank::{RankEnv, watch_for_abort};
pub use rendezvous::{Peers, rendezvous};
pub use supervise::{RankCommand, supervise};

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

/// What a supervisor learns, from its rank processes and from the other nodes.
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::LaunchConfig;

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

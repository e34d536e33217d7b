//! The rank side: what a launcher tells a rank process ([`RankEnv`]) and the watch for its
//! `abort` ([`watch_for_abort`]).

use std::io::BufRead;
use std::thread::JoinHandle;

use super::id::{from_hex, to_hex};
use super::{ID_BYTES, LaunchError, env};

/// What a launcher tells one rank process (through [`env`](mod@super::env)).
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

//! `dfc passes`: list every pass and every pipeline, from the tables of [`crate::passes`].

use anyhow::Result;

use crate::passes::{PIPELINES, REGISTRY};

/// Arguments of `dfc passes` (none).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {}

/// The listing: passes with their descriptions, then pipelines with their passes.
pub fn render() -> String {
    let mut s = String::from("passes:\n");
    let width = REGISTRY.iter().map(|p| p.name().len()).max().unwrap_or(0);
    for p in REGISTRY {
        s.push_str(&format!("  {:width$}  {}\n", p.name(), p.description()));
    }
    s.push_str("pipelines:\n");
    for (name, passes) in PIPELINES {
        s.push_str(&format!("  {name}: {}\n", passes.join(" → ")));
    }
    s
}

/// Runs the command.
pub fn run(_args: &Args) -> Result<()> {
    print!("{}", render());
    Ok(())
}

//! Small checks that keep the structure honest: every Rust module says what it is (a `//!`
//! doc), no module is mounted from another folder with `#[path]`, and the crates' manifests
//! keep the layering (the compiler and the operators never depend on the runtime or the CLI's
//! crates; the runtime never on the compiler), and the compiler has one owner of its passes
//! (no `PassManager` outside the passes crate).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Every `.rs` file under `dir`, skipping build outputs.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = entry?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if p.is_dir() {
            if !matches!(name, "target" | "build" | "fuzz" | "snapshots") {
                rust_files(&p, out)?;
            }
        } else if name.ends_with(".rs") {
            out.push(p);
        }
    }
    Ok(())
}

#[test]
fn every_module_has_a_doc_and_none_is_mounted_by_path() -> Result<()> {
    let mut files = Vec::new();
    for dir in ["src", "passes", "plugins"] {
        rust_files(&root().join(dir), &mut files)?;
    }
    ensure!(files.len() > 50, "only {} files found", files.len());
    let mut missing = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f)?;
        let first = text
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default();
        if !first.starts_with("//!") && !f.ends_with("main.rs") {
            missing.push(f.strip_prefix(root())?.display().to_string());
        }
        ensure!(
            !text.contains("#[path"),
            "{} mounts a module from elsewhere with #[path]",
            f.display()
        );
    }
    ensure!(
        missing.is_empty(),
        "modules without a `//!` doc: {missing:?}"
    );
    Ok(())
}

/// The `dfc-*` crates `manifest` depends on (normal dependencies).
fn dfc_deps(manifest: &str) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(root().join(manifest))?;
    let deps = text
        .split("\n[")
        .find(|s| s.starts_with("dependencies]"))
        .unwrap_or_default();
    Ok(deps
        .lines()
        .filter_map(|l| l.split(['.', ' ', '=']).next())
        .filter(|name| name.starts_with("dfc-"))
        .map(str::to_string)
        .collect())
}

#[test]
fn crate_dependencies_follow_the_layering() -> Result<()> {
    let allowed: [(&str, &[&str]); 8] = [
        ("src/contract/Cargo.toml", &[]),
        ("src/graph/Cargo.toml", &[]),
        ("passes/Cargo.toml", &["dfc-contract", "dfc-graph"]),
        ("plugins/Cargo.toml", &["dfc-contract"]),
        ("src/trt/Cargo.toml", &[]),
        ("src/triton/Cargo.toml", &["dfc-runtime"]),
        (
            "src/runtime/Cargo.toml",
            &["dfc-contract", "dfc-graph", "dfc-plugins", "dfc-trt"],
        ),
        (
            "src/cli/Cargo.toml",
            &[
                "dfc-contract",
                "dfc-graph",
                "dfc-passes",
                "dfc-plugins",
                "dfc-trt",
                "dfc-runtime",
            ],
        ),
    ];
    for (manifest, ok) in allowed {
        for dep in dfc_deps(manifest)? {
            ensure!(
                ok.contains(&dep.as_str()),
                "{manifest} depends on {dep}, against the layering in ARCHITECTURE.md"
            );
        }
    }
    ensure!(dfc_deps("passes/Cargo.toml")?.len() == 2);
    Ok(())
}

/// The workspace members, from the root manifest.
fn members() -> Result<Vec<String>> {
    let text = std::fs::read_to_string(root().join("Cargo.toml"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with("members = ["))
        .context("no members line in Cargo.toml")?;
    Ok(line
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect())
}

#[test]
fn every_crate_is_a_folder_of_its_own() -> Result<()> {
    let members = members()?;
    ensure!(members.len() >= 7, "members: {members:?}");
    ensure!(
        !root().join("src").join("lib.rs").exists() && !root().join("src").join("main.rs").exists(),
        "src/ holds crate folders only"
    );
    // src/ holds only crate folders; no crate folder holds another crate.
    for entry in std::fs::read_dir(root().join("src"))? {
        let p = entry?.path();
        let name = p.strip_prefix(root())?.display().to_string();
        ensure!(p.is_dir(), "{name} is not a crate folder");
        ensure!(members.contains(&name), "{name} is not a workspace member");
    }
    for a in &members {
        ensure!(
            root().join(a).join("lib.rs").exists(),
            "{a}: the crate root is lib.rs in the crate's folder"
        );
        ensure!(
            !root().join(a).join("mod.rs").exists(),
            "{a}: a mod.rs crate root"
        );
        for b in &members {
            ensure!(
                a == b || !Path::new(b).starts_with(a),
                "crate folder {a} contains crate {b}"
            );
        }
    }
    Ok(())
}

/// The passes crate owns the compile: everything above it calls its driver
/// (`passes::driver::compile`) or its analyses, never the pass manager, so which passes run in
/// which order is decided once, by `passes::PIPELINES`.
#[test]
fn only_the_passes_crate_runs_passes() -> Result<()> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files)?;
    ensure!(files.len() > 20, "only {} files found", files.len());
    let mut users = Vec::new();
    for f in &files {
        if std::fs::read_to_string(f)?.contains("PassManager") {
            users.push(f.strip_prefix(root())?.display().to_string());
        }
    }
    ensure!(
        users.is_empty(),
        "PassManager used outside the passes crate (call passes::driver instead): {users:?}"
    );
    Ok(())
}

#[test]
fn no_import_cycle_between_modules() -> Result<()> {
    let out = std::process::Command::new("python3")
        .arg(root().join("tools/module_graph.py"))
        .arg(root())
        .arg("--check")
        .output()
        .context("running tools/module_graph.py (needs python3)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && text.contains("import cycles between modules: 0"),
        "tools/module_graph.py found import cycles:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

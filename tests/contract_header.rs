//! The TensorRT plugins include `plugins/tensorrt/include/dfc_contract.h`, rendered from
//! `dfc::contract::exchange`: this test fails when the committed header and the Rust contract
//! disagree. `INSTA_UPDATE=always cargo test --test contract_header` rewrites the header: the
//! same switch as the insta snapshots (`tests/golden.rs`), so one command blesses everything.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use dfc::contract::exchange::{C_HEADER_PATH, c_header};

#[test]
fn committed_header_is_the_rendered_contract() -> Result<()> {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join(C_HEADER_PATH);
    let want = c_header();
    // insta's switch: `always` overwrites every snapshot (here: the header) and passes.
    if std::env::var("INSTA_UPDATE").is_ok_and(|v| v == "always") {
        std::fs::write(&path, &want).with_context(|| format!("writing {}", path.display()))?;
        println!("blessed {}", path.display());
        return Ok(());
    }
    let got =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        got == want,
        "{} differs from the Rust contract; run `INSTA_UPDATE=always cargo test --test contract_header` \
         and rebuild the plugins.\n--- rendered ---\n{want}",
        path.display()
    );
    Ok(())
}

#[test]
fn header_names_every_operator_and_attribute() {
    let h = c_header();
    for kind in dfc::contract::ExchangeKind::ALL {
        assert!(
            h.contains(&format!("\"{}\"", kind.op_type())),
            "{}",
            kind.op_type()
        );
        for attr in kind.attributes() {
            assert!(h.contains(&format!("\"{attr}\"")), "{attr}");
        }
    }
}

//! Fuzzes everything that reads a decoded model before any file is written: decoding, IR
//! construction, verification, the text dump, lowering back to protobuf, and specialization
//! (shape inference and constant folding over hostile attributes and constants). Arbitrary
//! bytes must give a result or an error, never a panic.
#![no_main]

use std::path::{Path, PathBuf};

use dfc::ir::Graph;
use dfc::onnx::ExternalStore;
use dfc::passes::specialize::{SpecializeOptions, specialize};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(proto) = dfc::onnx::decode(Path::new("fuzz.onnx"), bytes::Bytes::copy_from_slice(data)) else {
        return;
    };
    let Ok(mut graph) = Graph::from_model(proto) else {
        return;
    };
    let _ = graph.dump();
    if graph.verify().is_err() {
        return;
    }
    let _ = graph.to_model();
    // External data cannot resolve here: the folder does not exist.
    let store = ExternalStore::new(PathBuf::from("/nonexistent-dfc-fuzz"));
    let options = SpecializeOptions {
        batch: Some(1),
        height: Some(16),
        width: Some(16),
        dims: vec![("sequence".into(), 4)],
    };
    if specialize(&mut graph, &store, &options).is_ok() {
        let _ = graph.to_model();
    }
});

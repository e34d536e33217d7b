//! Fuzzes the model decoder and everything that reads a decoded model before any file I/O:
//! arbitrary bytes must give a model or an error, never a panic.
#![no_main]

use std::path::Path;

use dfc::ir::Graph;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(proto) = dfc::onnx::decode(Path::new("fuzz.onnx"), bytes::Bytes::copy_from_slice(data)) else {
        return;
    };
    let Ok(graph) = Graph::from_model(proto) else {
        return;
    };
    let _ = graph.dump();
    if graph.verify().is_ok() {
        let _ = graph.to_model();
    }
});

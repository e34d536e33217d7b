//! Deterministic text form of a graph, for golden tests, `--dump-after` and debugging.
//!
//! One line per graph input, initializer (name and type only, never data), node (in
//! [`Graph::topo_order`]) and graph output:
//!
//! ```text
//! input  %0 sample: f32[2,4,32,32]
//! init   %3 conv_in.weight: f32[32,4,3,3]
//! n0 /conv_in/Conv = Conv(%0, %3, %4) {kernel_shape=[3,3], pads=[1,1,1,1]} -> %7: f32[2,32,32,32]
//! output %9 out_sample: f32[2,4,32,32]
//! ```

use std::fmt::Write;

use super::{Graph, ValueId};
use crate::onnx::proto::{AttributeProto, AttributeType};

impl Graph {
    fn type_text(&self, v: ValueId) -> String {
        match &self.value(v).ty {
            Some(super::ValueType::Tensor(t)) => t.to_string(),
            Some(super::ValueType::Other(_)) => "other".into(),
            None => "?".into(),
        }
    }

    /// The text dump; see the module documentation for the format.
    pub fn dump(&self) -> String {
        let mut s = String::new();
        for &v in &self.inputs {
            let _ = writeln!(
                s,
                "input  {v} {}: {}",
                self.value(v).name,
                self.type_text(v)
            );
        }
        for v in self.value_ids() {
            if self.value(v).init.is_some() && !self.inputs.contains(&v) {
                let _ = writeln!(
                    s,
                    "init   {v} {}: {}",
                    self.value(v).name,
                    self.type_text(v)
                );
            }
        }
        match self.topo_order() {
            Ok(order) => {
                for id in order {
                    let n = self.node(id);
                    let ins: Vec<String> = n
                        .inputs()
                        .iter()
                        .map(|v| v.map(|v| v.to_string()).unwrap_or_else(|| "_".into()))
                        .collect();
                    let outs: Vec<String> = n
                        .outputs()
                        .iter()
                        .map(|v| match v {
                            Some(v) => format!("{v}: {}", self.type_text(*v)),
                            None => "_".into(),
                        })
                        .collect();
                    let op = if n.domain.is_empty() {
                        n.op_type.clone()
                    } else {
                        format!("{}:{}", n.domain, n.op_type)
                    };
                    let attrs = if n.attrs.is_empty() {
                        String::new()
                    } else {
                        let parts: Vec<String> = n.attrs.iter().map(attr_text).collect();
                        format!(" {{{}}}", parts.join(", "))
                    };
                    let _ = writeln!(
                        s,
                        "{id} {} = {op}({}){attrs} -> {}",
                        n.name,
                        ins.join(", "),
                        outs.join(", ")
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(s, "# cannot order nodes: {e}");
            }
        }
        for &v in &self.outputs {
            let _ = writeln!(
                s,
                "output {v} {}: {}",
                self.value(v).name,
                self.type_text(v)
            );
        }
        s
    }
}

fn attr_text(a: &AttributeProto) -> String {
    let list = |items: Vec<String>| format!("[{}]", items.join(","));
    let value = match a.r#type() {
        AttributeType::Float => format!("{}", a.f()),
        AttributeType::Int => format!("{}", a.i()),
        AttributeType::String => format!("{:?}", String::from_utf8_lossy(a.s())),
        AttributeType::Floats => list(a.floats.iter().map(|f| f.to_string()).collect()),
        AttributeType::Ints => list(a.ints.iter().map(|i| i.to_string()).collect()),
        AttributeType::Strings => list(
            a.strings
                .iter()
                .map(|s| format!("{:?}", String::from_utf8_lossy(s)))
                .collect(),
        ),
        AttributeType::Tensor => match &a.t {
            Some(t) => format!("tensor<{}{:?}>", super::DataType(t.data_type()), t.dims),
            None => "tensor<?>".into(),
        },
        AttributeType::Graph => "graph".into(),
        other => format!("<{other:?}>"),
    };
    format!("{}={value}", a.name())
}

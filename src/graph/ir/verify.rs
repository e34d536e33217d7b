//! The IR verifier: structural invariants every pass must preserve.

use std::collections::HashSet;

use super::{Graph, IrError, ValueType};

impl Graph {
    /// Checks the module-level invariants: single producers, defined inputs, edges matching
    /// node inputs, no cycles, and initializer types consistent with their declared types.
    pub fn verify(&self) -> Result<(), IrError> {
        let inputs: HashSet<_> = self.inputs.iter().copied().collect();
        for id in self.node_ids() {
            let n = self.node(id);
            for (port, out) in n.outputs().iter().enumerate() {
                if let Some(v) = out {
                    let val = self.value(*v);
                    if val.producer() != Some((id, port)) {
                        return Err(IrError::DuplicateProducer(val.name.clone()));
                    }
                    if val.init.is_some() || inputs.contains(v) {
                        return Err(IrError::DuplicateProducer(val.name.clone()));
                    }
                }
            }
            let mut expected_edges = 0;
            for (port, inp) in n.inputs().iter().enumerate() {
                let Some(v) = inp else { continue };
                let val = self.value(*v);
                if !val.live {
                    return Err(IrError::Inconsistent(format!(
                        "node `{}` reads removed value `{}`",
                        n.name, val.name
                    )));
                }
                if !val.uses.contains(&(id, port)) {
                    return Err(IrError::Inconsistent(format!(
                        "value `{}` does not record its use by node `{}` port {port}",
                        val.name, n.name
                    )));
                }
                match val.producer() {
                    Some((p, _)) if self.contains_node(p) => expected_edges += 1,
                    Some(_) => {
                        return Err(IrError::Inconsistent(format!(
                            "value `{}` has a removed producer",
                            val.name
                        )));
                    }
                    None if val.init.is_some() || inputs.contains(v) => {}
                    None => {
                        return Err(IrError::Undefined {
                            node: n.name.clone(),
                            op: n.op_type.clone(),
                            value: val.name.clone(),
                        });
                    }
                }
            }
            let actual = self.predecessors(id).count();
            if actual != expected_edges {
                return Err(IrError::Inconsistent(format!(
                    "node `{}` has {actual} incoming edges but {expected_edges} produced inputs",
                    n.name
                )));
            }
            for (src, e) in self.predecessors(id) {
                if n.input(e.dst_port) != Some(e.value)
                    || self.node(src).output(e.src_port) != Some(e.value)
                {
                    return Err(IrError::Inconsistent(format!(
                        "edge into `{}` port {} disagrees with the node",
                        n.name, e.dst_port
                    )));
                }
            }
        }
        for v in self.value_ids() {
            let val = self.value(v);
            for &(n, port) in val.uses() {
                if !self.contains_node(n) || self.node(n).input(port) != Some(v) {
                    return Err(IrError::Inconsistent(format!(
                        "value `{}` records a stale use",
                        val.name
                    )));
                }
            }
            if let (Some(init), Some(ValueType::Tensor(t))) = (&val.init, &val.ty) {
                let declared = super::TensorType::of_initializer(init);
                if t.elem != declared.elem
                    || (t.static_dims().is_some() && t.static_dims() != declared.static_dims())
                {
                    return Err(IrError::Inconsistent(format!(
                        "initializer `{}` holds {declared} but its value is typed {t}",
                        val.name
                    )));
                }
            }
        }
        for &o in &self.outputs {
            let val = self.value(o);
            let produced = val.producer().is_some_and(|(p, _)| self.contains_node(p));
            if !produced && val.init.is_none() && !inputs.contains(&o) {
                return Err(IrError::UndefinedOutput(val.name.clone()));
            }
        }
        self.topo_order()?;
        Ok(())
    }
}

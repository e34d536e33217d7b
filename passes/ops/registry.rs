//! The operator registry: every family's table, looked up by domain and operator name. It is
//! the only module that imports the families; they import only the row type ([`OpDef`]), the
//! rule context and the partition types.

use std::collections::HashMap;
use std::sync::OnceLock;

use super::def::OpDef;
use super::layout::Part;
use super::{ORT_DOMAIN, conv, elementwise, exchange, linalg, norm, reduce, shape};

/// Every default-domain operator table, in family order.
fn tables() -> [&'static [OpDef]; 6] {
    [
        conv::OPS,
        norm::OPS,
        linalg::OPS,
        shape::OPS,
        elementwise::OPS,
        reduce::OPS,
    ]
}

/// Every table of ONNX Runtime's domain ([`ORT_DOMAIN`]).
fn ort_tables() -> [&'static [OpDef]; 3] {
    [elementwise::ORT_OPS, norm::ORT_OPS, linalg::ORT_OPS]
}

/// The row of `op_type` of `domain`, if dfc knows the operator: the default domain (`""` or
/// `"ai.onnx"`), the exchange operators of domain [`exchange::DOMAIN`], the internal
/// operators of domain [`norm::INTERNAL_DOMAIN`] and the few ONNX Runtime operators of domain
/// [`ORT_DOMAIN`] dfc partitions.
pub fn lookup(domain: &str, op_type: &str) -> Option<&'static OpDef> {
    static MAP: OnceLock<HashMap<&'static str, &'static OpDef>> = OnceLock::new();
    if domain == exchange::DOMAIN {
        return exchange::OPS.iter().find(|d| d.op_type == op_type);
    }
    if domain == norm::INTERNAL_DOMAIN {
        return norm::INTERNAL_OPS.iter().find(|d| d.op_type == op_type);
    }
    if domain == ORT_DOMAIN {
        return ort_tables()
            .into_iter()
            .flat_map(|t| t.iter())
            .find(|d| d.op_type == op_type);
    }
    if !(domain.is_empty() || domain == "ai.onnx") {
        return None;
    }
    MAP.get_or_init(|| {
        tables()
            .into_iter()
            .flat_map(|t| t.iter())
            .map(|d| (d.op_type, d))
            .collect()
    })
    .get(op_type)
    .copied()
}

/// How `op_type` of `domain` treats a split input (`None`: dfc does not know the operator).
pub fn partition_of(domain: &str, op_type: &str) -> Option<Part> {
    lookup(domain, op_type).map(|d| d.partition)
}

/// Names of every supported default-domain operator, sorted.
pub fn supported_ops() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = tables()
        .into_iter()
        .flat_map(|t| t.iter().map(|d| d.op_type))
        .collect();
    v.sort_unstable();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row of every table, with its domain.
    fn rows() -> Vec<(&'static str, &'static OpDef)> {
        let mut v: Vec<(&'static str, &'static OpDef)> = tables()
            .into_iter()
            .flat_map(|t| t.iter().map(|d| ("", d)))
            .collect();
        v.extend(exchange::OPS.iter().map(|d| (exchange::DOMAIN, d)));
        v.extend(
            norm::INTERNAL_OPS
                .iter()
                .map(|d| (norm::INTERNAL_DOMAIN, d)),
        );
        v.extend(
            ort_tables()
                .into_iter()
                .flat_map(|t| t.iter().map(|d| (ORT_DOMAIN, d))),
        );
        v
    }

    #[test]
    fn every_operator_has_a_partition_rule_or_a_stated_refusal() {
        let mut missing = Vec::new();
        for (domain, d) in rows() {
            match d.partition {
                Part::Rule(_) => {}
                Part::Refuse(reason) => assert!(
                    reason.len() > 10,
                    "{domain}:{} refuses without a reason",
                    d.op_type
                ),
                Part::Undeclared => missing.push(format!("{domain}:{}", d.op_type)),
            }
        }
        assert!(missing.is_empty(), "no partition declared: {missing:?}");
    }

    #[test]
    fn operator_names_are_unique_per_domain() {
        let mut seen = std::collections::HashSet::new();
        for (domain, d) in rows() {
            assert!(
                seen.insert((domain, d.op_type)),
                "{domain}:{} twice",
                d.op_type
            );
        }
        assert!(supported_ops().len() > 100);
        assert!(lookup("ai.onnx", "Conv").is_some() && lookup("com.x", "Conv").is_none());
        // ONNX Runtime's rows answer in its domain only; its other operators have none.
        assert!(lookup(ORT_DOMAIN, "SkipLayerNormalization").is_some());
        assert!(lookup("", "SkipLayerNormalization").is_none());
        assert!(lookup(ORT_DOMAIN, "Gelu").is_some_and(|d| d.op_type == "Gelu"));
        assert!(lookup(ORT_DOMAIN, "MultiHeadAttention").is_some());
        assert!(lookup(ORT_DOMAIN, "GroupNorm").is_some() && lookup("", "GroupNorm").is_none());
        assert!(
            lookup(ORT_DOMAIN, "BiasSplitGelu").is_none() && lookup(ORT_DOMAIN, "Conv").is_none()
        );
    }
}

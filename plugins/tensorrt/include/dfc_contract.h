/* The exchange operators' contract (DESIGN §3), generated from the Rust contract module
 * `dfc::contract`. Do not edit: `INSTA_UPDATE=always cargo test --test contract_header`
 * rewrites it, and that test fails whenever this file and the Rust side disagree. */
#ifndef DFC_CONTRACT_H
#define DFC_CONTRACT_H

/* ONNX domain of the exchange operators (TensorRT plugin namespace) and their version. */
#define DFC_DOMAIN "dfc"
#define DFC_OP_VERSION "1"

/* Operator names (TensorRT plugin names). */
#define DFC_OP_HALO "DfcHaloExchange"
#define DFC_OP_STATS "DfcStatsAllReduce"
#define DFC_OP_GATHER "DfcPatchAllGather"

/* Attribute names. Every operator carries `slot` (int); halo: `axis`, `top`, `bottom` (ints);
 * gather: `axis` (int) and `parts` (ints: every band's extent on `axis`, band order). */
#define DFC_ATTR_SLOT "slot"
#define DFC_ATTR_AXIS "axis"
#define DFC_ATTR_TOP "top"
#define DFC_ATTR_BOTTOM "bottom"
#define DFC_ATTR_PARTS "parts"

/* GroupNorm statistics in the stale steps of displaced mode (plan.json `gn`). */
#define DFC_GN_CORRECTED 0
#define DFC_GN_STALE 1
#define DFC_GN_SYNC 2
#define DFC_GN_SEPARATE 3

/* Entries of the last axis of a statistics tensor that the corrected mode treats as one
 * (E[x], E[x^2]) pair. */
#define DFC_STATS_PAIR 2

#endif /* DFC_CONTRACT_H */

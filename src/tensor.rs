//! Constant tensors.

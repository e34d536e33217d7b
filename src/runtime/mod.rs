//! Execution of models and plans.

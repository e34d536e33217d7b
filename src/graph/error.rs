//! Errors decided by type: [`Internal`] marks a fault of dfc itself (exit code 2), as opposed
//! to a problem of the input or the environment (exit code 1). Library code raises it with
//! [`internal!`](crate::internal); the command line finds it anywhere in an error's chain.

/// Marks an error as dfc's own fault (exit code 2) rather than the input's.
#[derive(Debug, thiserror::Error)]
#[error("internal error: {0}")]
pub struct Internal(pub String);

/// An [`Internal`] error as an `anyhow::Error`, from a format string.
#[macro_export]
macro_rules! internal {
    ($($arg:tt)*) => {
        ::anyhow::Error::new($crate::error::Internal(format!($($arg)*)))
    };
}

/// Whether `e` (or any error in its chain) is an [`Internal`] fault.
pub fn is_internal(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<Internal>())
}

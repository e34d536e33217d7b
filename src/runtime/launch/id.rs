//! The group's unique id: who makes it ([`IdSource`], [`FakeIds`]) and its hexadecimal form in a
//! rank's environment and on the wire.

use sha2::{Digest, Sha256};

use super::{ID_BYTES, LaunchError};

/// Makes the group's unique id (node 0 only).
pub trait IdSource {
    /// A fresh id of [`ID_BYTES`] bytes.
    fn unique_id(&self) -> Result<Vec<u8>, LaunchError>;
}

/// Ids that are random bytes: for rank processes that do not create an NCCL communicator
/// (tests of the launcher). Every rank still gets the same bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct FakeIds;

impl IdSource for FakeIds {
    fn unique_id(&self) -> Result<Vec<u8>, LaunchError> {
        let seed = format!(
            "{}:{:?}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)
        );
        let mut out = Vec::with_capacity(ID_BYTES);
        let mut block = Sha256::digest(seed.as_bytes());
        while out.len() < ID_BYTES {
            out.extend_from_slice(&block);
            block = Sha256::digest(block);
        }
        out.truncate(ID_BYTES);
        Ok(out)
    }
}

/// Lower-case hexadecimal of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of hexadecimal `s`.
pub fn from_hex(s: &str) -> Result<Vec<u8>, LaunchError> {
    if !s.len().is_multiple_of(2) {
        return Err(LaunchError::Env("odd-length hexadecimal id".into()));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| LaunchError::Env(format!("`{s}` is not hexadecimal")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let id = FakeIds.unique_id().expect("id");
        assert_eq!(id.len(), ID_BYTES);
        assert_eq!(from_hex(&to_hex(&id)).expect("hex"), id);
        assert!(from_hex("abc").is_err());
        assert!(from_hex("zz").is_err());
    }
}

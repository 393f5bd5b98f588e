//! Content-addressed files kept in a store that several kernels share —
//! the WebAssembly components of installed plugins — so that a kernel on
//! any machine finds the code a plugin was installed with. A blob is named
//! by the SHA-256 of its bytes (lowercase hex), which every reader checks
//! before using it.

use async_trait::async_trait;

use super::StoreError;

/// Files kept by their SHA-256.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Keeps `bytes` under `sha256` (their hash, which the caller has
    /// checked); keeping the same blob again changes nothing.
    async fn put_blob(&self, sha256: &str, bytes: &[u8]) -> Result<(), StoreError>;

    /// Whether a blob is kept under `sha256`.
    async fn has_blob(&self, sha256: &str) -> Result<bool, StoreError>;

    /// The bytes kept under `sha256`, if any (unchecked: check their
    /// hash); refused, without being read, if larger than `max_bytes`.
    async fn blob(&self, sha256: &str, max_bytes: u64) -> Result<Option<Vec<u8>>, StoreError>;
}

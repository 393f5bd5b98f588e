//! The [`BlobStore`] of a [`super::PostgresStore`]: `lion.blobs`, files by
//! the SHA-256 of their bytes (installed plugins' components), so that
//! every kernel sharing the store finds them.

use agentic_core::StoreError;
use agentic_core::store::blobs::BlobStore;
use async_trait::async_trait;

use super::PostgresStore;

#[async_trait]
impl BlobStore for PostgresStore {
    async fn put_blob(&self, sha256: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.read(async |c| {
            c.execute(
                "INSERT INTO lion.blobs (sha256, bytes) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&sha256, &bytes],
            )
            .await?;
            Ok(())
        })
        .await
    }

    async fn blob(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(async |c| {
            let row = c
                .query_opt("SELECT bytes FROM lion.blobs WHERE sha256 = $1", &[&sha256])
                .await?;
            Ok(row.map(|r| r.get(0)))
        })
        .await
    }
}

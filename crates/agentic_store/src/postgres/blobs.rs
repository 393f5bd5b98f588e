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
        self.query(async |c| {
            c.execute(
                "INSERT INTO lion.blobs (sha256, bytes) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&sha256, &bytes],
            )
            .await?;
            Ok(())
        })
        .await
    }

    async fn has_blob(&self, sha256: &str) -> Result<bool, StoreError> {
        self.query(async |c| {
            let row = c
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM lion.blobs WHERE sha256 = $1)",
                    &[&sha256],
                )
                .await?;
            Ok(row.get(0))
        })
        .await
    }

    async fn blob(&self, sha256: &str, max_bytes: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let max = i64::try_from(max_bytes).unwrap_or(i64::MAX);
        let row = self
            .read(async |c| {
                let row = c
                    .query_opt(
                        "SELECT octet_length(bytes), CASE WHEN octet_length(bytes) <= $2::bigint \
                         THEN bytes END FROM lion.blobs WHERE sha256 = $1",
                        &[&sha256, &max],
                    )
                    .await?;
                Ok(row.map(|r| (r.get::<_, i32>(0), r.get::<_, Option<Vec<u8>>>(1))))
            })
            .await?;
        match row {
            None => Ok(None),
            Some((_, Some(bytes))) => Ok(Some(bytes)),
            Some((length, None)) => Err(StoreError::Corrupt {
                path: format!("{} blob {sha256}", self.location()),
                reason: format!("it holds {length} bytes, more than the {max_bytes} allowed"),
            }),
        }
    }
}

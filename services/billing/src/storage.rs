//! Where uploaded files (expense receipts) live.
//!
//! `ISP_BILLING_STORAGE` picks the backend: `local` (default) keeps files under
//! `<ISP_DATA_DIR>/billing/files`; `s3` is reserved for an S3-compatible store
//! (`ISP_BILLING_S3_*`) and is not implemented yet: starting with it fails loudly
//! rather than silently writing somewhere else.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Stores `data` under `key` (a relative path of `[a-z0-9-/.]` segments).
    async fn put(&self, key: &str, data: Bytes) -> anyhow::Result<()>;
    /// The file under `key`, or None.
    async fn get(&self, key: &str) -> anyhow::Result<Option<Bytes>>;
    async fn delete(&self, key: &str) -> anyhow::Result<()>;
    /// Deletes every object whose key starts with `prefix/`.
    async fn delete_prefix(&self, prefix: &str) -> anyhow::Result<()>;
}

/// Files in a local folder. Writes go to a temporary name first and are renamed
/// into place, so a reader never sees half a file.
pub struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, key: &str) -> anyhow::Result<PathBuf> {
        anyhow::ensure!(
            !key.is_empty()
                && key
                    .split('/')
                    .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')),
            "invalid storage key {key:?}"
        );
        Ok(self.root.join(Path::new(key)))
    }
}

#[async_trait]
impl Storage for LocalStorage {
    async fn put(&self, key: &str, data: Bytes) -> anyhow::Result<()> {
        let path = self.path(key)?;
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
        tokio::fs::write(&tmp, &data).await?;
        tokio::fs::rename(&tmp, &path).await?;
        Ok(())
    }

    async fn get(&self, key: &str) -> anyhow::Result<Option<Bytes>> {
        match tokio::fs::read(self.path(key)?).await {
            Ok(b) => Ok(Some(Bytes::from(b))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        match tokio::fs::remove_file(self.path(key)?).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete_prefix(&self, prefix: &str) -> anyhow::Result<()> {
        match tokio::fs::remove_dir_all(self.path(prefix)?).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

pub fn from_env(data_dir: &Path) -> anyhow::Result<Arc<dyn Storage>> {
    match isp_platform::config::env_or("ISP_BILLING_STORAGE", "local").as_str() {
        "local" => Ok(Arc::new(LocalStorage::new(
            data_dir.join("billing").join("files"),
        ))),
        "s3" => anyhow::bail!(
            "ISP_BILLING_STORAGE=s3 is not implemented yet; use local (files under ISP_DATA_DIR)"
        ),
        other => anyhow::bail!("ISP_BILLING_STORAGE={other:?}: expected local or s3"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_storage_round_trips_and_refuses_escaping_keys() {
        let dir = std::env::temp_dir().join(format!("isp-storage-{}", uuid::Uuid::new_v4()));
        let s = LocalStorage::new(&dir);
        s.put("a/b.pdf", Bytes::from_static(b"%PDF-1.4"))
            .await
            .unwrap();
        assert_eq!(s.get("a/b.pdf").await.unwrap().unwrap(), &b"%PDF-1.4"[..]);
        s.delete("a/b.pdf").await.unwrap();
        assert!(s.get("a/b.pdf").await.unwrap().is_none());
        assert!(s.put("../x", Bytes::new()).await.is_err());
        assert!(s.get("/etc/passwd").await.is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}

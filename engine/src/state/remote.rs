//! Checkpoints in object storage: a `[checkpoint] dir` that is an `s3://`, `gs://` or
//! `az://` URL keeps its checkpoints there, through the `object_store` crate, one prefix
//! `chk-NNNNNN/` per checkpoint and the manifest put last (a put is atomic, so a
//! checkpoint is complete once its manifest is there). Credentials, region and endpoint
//! come from the environment as each cloud's tools name them (`AWS_ACCESS_KEY_ID`,
//! `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_…`).
//! A `file://` URL is a local directory.
//!
//! The calls block the calling thread on a runtime of their own (one thread, the caller's):
//! a checkpoint waits for its state to be stored, as it waits for a local disk's sync.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::error::{Error, Result};

/// A root of checkpoints in an object store.
#[derive(Clone)]
pub(crate) struct Remote {
    /// The root as the job names it, for messages.
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: Key,
}

/// The object store URL schemes.
const SCHEMES: [&str; 6] = ["s3://", "s3a://", "gs://", "az://", "azure://", "abfs://"];

/// The local directory a checkpoint root names (`file://` stripped), when it is not in an
/// object store.
pub(crate) fn local(root: &Path) -> Option<PathBuf> {
    let text = root.to_str().unwrap_or_default();
    if SCHEMES.iter().any(|s| text.starts_with(s)) {
        return None;
    }
    Some(
        text.strip_prefix("file://")
            .map_or_else(|| root.to_path_buf(), PathBuf::from),
    )
}

fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> =
        OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::Internal(format!("starting the object store's runtime: {e}")))
}

impl Remote {
    /// The object store root `root`, or `None` for a local directory. Clients are made
    /// once per bucket and kept.
    pub(crate) fn open(root: &Path) -> Result<Option<Remote>> {
        if local(root).is_some() {
            return Ok(None);
        }
        let url = root.to_string_lossy().trim_end_matches('/').to_string();
        let (scheme, rest) = url.split_once("://").unwrap_or_default();
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad(&url, "names no bucket (s3://BUCKET/PREFIX)".into()));
        }
        static STORES: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
        let stores = STORES.get_or_init(Mutex::default);
        let key = format!("{scheme}://{bucket}");
        let cached = stores.lock().ok().and_then(|s| s.get(&key).cloned());
        let store = match cached {
            Some(store) => store,
            None => {
                let store = build(scheme, &key).map_err(|e| bad(&url, e))?;
                if let Ok(mut s) = stores.lock() {
                    s.insert(key, store.clone());
                }
                store
            }
        };
        Ok(Some(Remote {
            prefix: Key::from(prefix),
            url,
            store,
        }))
    }

    /// Where checkpoint `id` is, for messages and manifests.
    pub(crate) fn dir(&self, id: u64) -> PathBuf {
        super::checkpoint::dir_of(Path::new(&self.url), id)
    }

    fn key(&self, id: u64, name: &str) -> Key {
        (self.prefix.clone())
            .join(super::checkpoint::dir_name(id))
            .join(name)
    }

    fn wait<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> Result<T> {
        runtime()?.block_on(f).map_err(|e| Error::Checkpoint {
            path: PathBuf::from(&self.url),
            message: format!("{what}: {e}"),
        })
    }

    /// The ids of the checkpoints under the root, ascending.
    pub(crate) fn ids(&self) -> Result<Vec<u64>> {
        let list = self.wait(
            "listing",
            self.store.list_with_delimiter(Some(&self.prefix)),
        )?;
        let mut ids: Vec<u64> = (list.common_prefixes.iter())
            .filter_map(|p| p.filename().and_then(super::checkpoint::id_of))
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// Stores file `name` of checkpoint `id`.
    pub(crate) fn put(&self, id: u64, name: &str, bytes: Vec<u8>) -> Result<()> {
        let key = self.key(id, name);
        self.wait(
            &format!("storing {key}"),
            self.store.put(&key, PutPayload::from(bytes)),
        )?;
        Ok(())
    }

    /// File `name` of checkpoint `id`; `None` when there is none.
    pub(crate) fn get(&self, id: u64, name: &str) -> Result<Option<Vec<u8>>> {
        let key = self.key(id, name);
        let got = runtime()?.block_on(async {
            match self.store.get(&key).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        got.map(|b| b.map(|b| b.to_vec()))
            .map_err(|e| Error::Checkpoint {
                path: self.dir(id),
                message: format!("reading {name}: {e}"),
            })
    }

    /// The files of checkpoint `id`, with their sizes.
    fn files(&self, id: u64) -> Result<Vec<(Key, u64)>> {
        let dir = self.prefix.clone().join(super::checkpoint::dir_name(id));
        let list = self.wait("listing", self.store.list_with_delimiter(Some(&dir)))?;
        Ok(list
            .objects
            .into_iter()
            .map(|o| (o.location, o.size))
            .collect())
    }

    /// Bytes stored for checkpoint `id`.
    pub(crate) fn size(&self, id: u64) -> Result<u64> {
        Ok(self.files(id)?.iter().map(|f| f.1).sum())
    }

    /// Removes checkpoint `id`: its manifest first, so that it is never complete with a
    /// file missing.
    pub(crate) fn remove(&self, id: u64) -> Result<()> {
        let mut files = self.files(id)?;
        files.sort_by_key(|(k, _)| k.filename() != Some(super::checkpoint::MANIFEST));
        for (key, _) in files {
            self.wait(&format!("removing {key}"), self.store.delete(&key))?;
        }
        Ok(())
    }
}

fn bad(url: &str, message: String) -> Error {
    Error::Checkpoint {
        path: PathBuf::from(url),
        message,
    }
}

/// A client for bucket `url` (`scheme://bucket`), configured from the environment. A
/// request that fails is retried 5 times within 30 s, then the checkpoint fails with it.
fn build(scheme: &str, url: &str) -> std::result::Result<Arc<dyn ObjectStore>, String> {
    let retry = object_store::RetryConfig {
        backoff: object_store::BackoffConfig::default(),
        max_retries: 5,
        retry_timeout: std::time::Duration::from_secs(30),
    };
    let text = |e: object_store::Error| e.to_string();
    let store: Arc<dyn ObjectStore> = match scheme {
        "s3" | "s3a" => Arc::new(
            (object_store::aws::AmazonS3Builder::from_env().with_url(url))
                .with_retry(retry)
                .build()
                .map_err(text)?,
        ),
        "gs" => Arc::new(
            (object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(url))
                .with_retry(retry)
                .build()
                .map_err(text)?,
        ),
        _ => Arc::new(
            (object_store::azure::MicrosoftAzureBuilder::from_env().with_url(url))
                .with_retry(retry)
                .build()
                .map_err(text)?,
        ),
    };
    Ok(store)
}

//! Object stores (`s3://`, `gs://`, `az://`, `http(s)://`, `file://`) through `object_store`.
//!
//! A URL names one object, a prefix ending in `/`, or a glob (`s3://bucket/fineweb/*.parquet`). Objects are
//! copied into `$FLAME_CACHE/objects/SCHEME/HOST/KEY` (checked against size and ETag, written to a
//! temporary name and renamed) and read from there, so a rerun or a resumed run downloads nothing
//! twice. Credentials and endpoints come from the environment as the store builders read them
//! (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_*`, …).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use url::Url;

use super::{InputFile, SourceFormat, resolve_inputs};
use flame_formats::prefix::natural_cmp;

/// Whether `dataset` is a URL this module reads.
pub fn is_url(dataset: &str) -> bool {
    [
        "s3://", "s3a://", "gs://", "az://", "abfs://", "abfss://", "http://", "https://",
        "file://",
    ]
    .iter()
    .any(|s| dataset.starts_with(s))
}

/// The input files `url` names, downloaded into `cache`.
pub fn resolve_url(url: &str, split: &str, cache: &Path) -> anyhow::Result<Vec<InputFile>> {
    let parsed = Url::parse(url).with_context(|| format!("{url}: not a valid URL"))?;
    if parsed.scheme() == "file" {
        let path = parsed
            .to_file_path()
            .map_err(|()| anyhow::anyhow!("{url}: not a local file URL"))?;
        return resolve_inputs(&path.to_string_lossy(), split);
    }
    let host = parsed
        .host_str()
        .with_context(|| format!("{url}: no bucket or host"))?
        .to_owned();
    let key = parsed.path().trim_start_matches('/').to_owned();
    let store = build_store(&parsed)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the I/O runtime")?;
    let objects = runtime.block_on(find_objects(store.as_ref(), url, &key))?;
    anyhow::ensure!(
        !objects.is_empty(),
        "{url}: no readable object (parquet, jsonl[.gz|.zst], arrow, txt)"
    );
    let root = cache.join("objects").join(parsed.scheme()).join(&host);
    objects
        .iter()
        .map(|meta| {
            let local = root.join(meta.location.as_ref());
            runtime
                .block_on(fetch(store.as_ref(), meta, &local))
                .with_context(|| format!("{url}: downloading {}", meta.location))?;
            let format = SourceFormat::of(&local).expect("filtered by format");
            let uri = format!("{}://{host}/{}", parsed.scheme(), meta.location);
            Ok(InputFile {
                path: local,
                format,
                num_bytes: meta.size,
                uri,
            })
        })
        .collect()
}

fn build_store(url: &Url) -> anyhow::Result<Arc<dyn ObjectStore>> {
    let base = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        "s3" | "s3a" => Arc::new(
            object_store::aws::AmazonS3Builder::from_env()
                .with_url(&base)
                .build()?,
        ),
        "gs" => Arc::new(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(&base)
                .build()?,
        ),
        "az" | "abfs" | "abfss" => Arc::new(
            object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(&base)
                .build()?,
        ),
        "http" | "https" => {
            let origin = url.origin().ascii_serialization();
            Arc::new(
                object_store::http::HttpBuilder::new()
                    .with_url(origin)
                    .build()?,
            )
        }
        other => anyhow::bail!("{url}: unsupported scheme {other:?}"),
    };
    Ok(store)
}

/// The objects `key` names: a glob, a prefix ending in `/`, or one object (or, failing that, a prefix).
async fn find_objects(
    store: &dyn ObjectStore,
    url: &str,
    key: &str,
) -> anyhow::Result<Vec<ObjectMeta>> {
    let glob_at = key.find(['*', '?', '[']);
    let (prefix, pattern) = match glob_at {
        Some(at) => (&key[..key[..at].rfind('/').map_or(0, |slash| slash + 1)], Some(glob::Pattern::new(key).with_context(|| format!("{url}: bad glob"))?)),
        None if key.ends_with('/') || key.is_empty() => (key, None),
        None => match store.head(&ObjectPath::from(key)).await {
            Ok(meta) => return Ok(vec![meta]),
            Err(object_store::Error::NotFound { .. }) => (key, None),
            Err(e) => return Err(anyhow::Error::new(e).context(format!("{url}: cannot reach the object store (check the endpoint and credentials in the environment)"))),
        },
    };
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    let listing: Vec<ObjectMeta> = store
        .list(Some(&ObjectPath::from(prefix.trim_end_matches('/'))))
        .try_collect()
        .await
        .with_context(|| {
            format!(
                "{url}: cannot list objects (check the endpoint and credentials in the environment)"
            )
        })?;
    let mut objects: Vec<ObjectMeta> = listing
        .into_iter()
        .filter(|m| SourceFormat::of(Path::new(m.location.as_ref())).is_some())
        .filter(|m| {
            pattern
                .as_ref()
                .is_none_or(|p| p.matches_with(m.location.as_ref(), options))
        })
        .collect();
    objects.sort_by(|a, b| natural_cmp(a.location.as_ref(), b.location.as_ref()));
    Ok(objects)
}

/// Copies one object to `local` unless an identical copy (size and ETag) is already there.
async fn fetch(store: &dyn ObjectStore, meta: &ObjectMeta, local: &Path) -> anyhow::Result<()> {
    let etag_path = flame_formats::prefix::with_suffix(local, ".etag");
    let etag = meta.e_tag.clone().unwrap_or_default();
    let is_cached = std::fs::metadata(local).is_ok_and(|m| m.len() == meta.size)
        && std::fs::read_to_string(&etag_path).is_ok_and(|e| e == etag);
    if is_cached {
        return Ok(());
    }
    let dir = local.parent().expect("under the cache root");
    std::fs::create_dir_all(dir).with_context(|| format!("{}: create", dir.display()))?;
    let temp: PathBuf = flame_formats::temp_path(local);
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&temp).with_context(|| format!("{}: create", temp.display()))?,
    );
    let mut stream = store.get(&meta.location).await?.into_stream();
    let mut received = 0u64;
    while let Some(chunk) = stream.try_next().await? {
        received += chunk.len() as u64;
        file.write_all(&chunk)
            .with_context(|| format!("{}: write", temp.display()))?;
    }
    anyhow::ensure!(
        received == meta.size,
        "{}: received {received} bytes of {}",
        meta.location,
        meta.size
    );
    file.into_inner()
        .map_err(std::io::IntoInnerError::into_error)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("{}: write", temp.display()))?;
    flame_formats::publish(&temp, local)?;
    flame_formats::write_atomic(&etag_path, etag.as_bytes())?;
    Ok(())
}

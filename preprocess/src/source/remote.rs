//! Object stores (`s3://`, `gs://`, `az://`, `http(s)://`, `file://`) through `object_store`.
//!
//! A URL names one object, a prefix ending in `/`, or a glob (`s3://bucket/fineweb/*.parquet`). Objects are
//! copied into `$FLAME_CACHE/objects/SCHEME/HOST/KEY` (checked against size and ETag, written to a
//! temporary name and renamed) and read from there, so a rerun or a resumed run downloads nothing
//! twice. [`list_url`] lists them without downloading (a streaming server fetches each as it goes). Credentials and endpoints come from the environment as the store builders read them
//! (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_*`, …).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use url::Url;

use super::{InputFile, RemoteFile, SourceFormat, resolve_inputs};
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

/// The input files `url` names, downloaded into `cache` (`cache/objects/SCHEME/HOST/KEY`).
pub fn resolve_url(url: &str, split: &str, cache: &Path) -> anyhow::Result<Vec<InputFile>> {
    let mut inputs = list_url(url, split)?;
    for input in &mut inputs {
        if let Some(remote) = input.remote.take() {
            let local = cache.join("objects").join(&input.path);
            remote.fetch(&local)?;
            input.path = local;
        }
    }
    Ok(inputs)
}

/// The input files `url` names, listed and not downloaded: each object's [`InputFile::remote`] says how
/// to fetch it, and its `path` is `SCHEME/HOST/KEY`, where a cache keeps it. A `file://` URL names local
/// files, which are returned as they are.
pub fn list_url(url: &str, split: &str) -> anyhow::Result<Vec<InputFile>> {
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
    let objects = runtime()?.block_on(find_objects(store.as_ref(), url, &key))?;
    anyhow::ensure!(
        !objects.is_empty(),
        "{url}: no readable object (parquet, jsonl[.gz|.zst], arrow, txt)"
    );
    Ok(objects
        .into_iter()
        .map(|meta| {
            let path = Path::new(parsed.scheme())
                .join(&host)
                .join(meta.location.as_ref());
            let format = SourceFormat::of(&path).expect("filtered by format");
            let uri = format!("{}://{host}/{}", parsed.scheme(), meta.location);
            InputFile {
                path,
                format,
                num_bytes: meta.size,
                remote: Some(RemoteFile::Object {
                    url: uri.clone(),
                    num_bytes: meta.size,
                    etag: meta.e_tag.unwrap_or_default(),
                }),
                uri,
            }
        })
        .collect())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the I/O runtime")
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

/// Whether `local` holds a download of `num_bytes` bytes whose recorded ETag is `etag` (none recorded
/// reads as empty).
pub(crate) fn is_fetched(local: &Path, num_bytes: u64, etag: &str) -> bool {
    let etag_path = flame_formats::prefix::with_suffix(local, ".etag");
    std::fs::metadata(local).is_ok_and(|m| m.len() == num_bytes)
        && std::fs::read_to_string(&etag_path).unwrap_or_default() == etag
}

/// Publishes the download at `temp` (of `url`) as `local` once it is `num_bytes` long: fsynced, renamed,
/// and its ETag recorded beside it (`LOCAL.etag`, when it has one).
pub(crate) fn publish_fetched(
    temp: &Path,
    local: &Path,
    url: &str,
    (num_bytes, etag): (u64, &str),
) -> anyhow::Result<()> {
    let file = std::fs::File::open(temp).with_context(|| format!("{}: open", temp.display()))?;
    let received = file
        .metadata()
        .with_context(|| format!("{}: stat", temp.display()))?
        .len();
    anyhow::ensure!(
        received == num_bytes,
        "{url}: received {received} bytes of {num_bytes}"
    );
    file.sync_all()
        .with_context(|| format!("{}: fsync", temp.display()))?;
    let etag_path = flame_formats::prefix::with_suffix(local, ".etag");
    let _ = std::fs::remove_file(&etag_path);
    flame_formats::publish(temp, local)?;
    if !etag.is_empty() {
        flame_formats::write_atomic(&etag_path, etag.as_bytes())?;
    }
    Ok(())
}

/// Downloads object `url` (`num_bytes` bytes, ETag `etag`) to `local`.
pub(crate) fn fetch_object(
    url: &str,
    num_bytes: u64,
    etag: &str,
    local: &Path,
) -> anyhow::Result<()> {
    let parsed = Url::parse(url).with_context(|| format!("{url}: not a valid URL"))?;
    let store = build_store(&parsed)?;
    let location = ObjectPath::from(parsed.path().trim_start_matches('/'));
    let dir = local.parent().expect("under a cache root");
    std::fs::create_dir_all(dir).with_context(|| format!("{}: create", dir.display()))?;
    let temp: PathBuf = flame_formats::temp_path(local);
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&temp).with_context(|| format!("{}: create", temp.display()))?,
    );
    runtime()?.block_on(async {
        let mut stream = store.get(&location).await?.into_stream();
        while let Some(chunk) = stream.try_next().await? {
            file.write_all(&chunk)
                .with_context(|| format!("{}: write", temp.display()))?;
        }
        anyhow::Ok(())
    })?;
    file.into_inner()
        .map_err(std::io::IntoInnerError::into_error)
        .with_context(|| format!("{}: write", temp.display()))?;
    publish_fetched(&temp, local, url, (num_bytes, etag))
}

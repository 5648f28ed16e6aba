//! `--dataset sample`: a small public-domain parquet and its tokenizer, embedded in the binary so the
//! quickstart needs no download. See `preprocess/data/README.md` for provenance.

use std::path::PathBuf;

use anyhow::Context;
use sha2::Digest;

const PARQUET: &[u8] = include_bytes!("../data/sample/train-00000-of-00001.parquet");
const TOKENIZER: &[u8] = include_bytes!("../data/sample/tokenizer.json");

/// Where the sample lives once written out: `(dataset directory, tokenizer.json)`.
#[derive(Debug)]
pub struct Sample {
    /// A directory holding `data/train-00000-of-00001.parquet`.
    pub dataset_dir: PathBuf,
    /// The bundled tokenizer.
    pub tokenizer: PathBuf,
}

/// Writes the embedded files under `${FLAME_CACHE:-~/.cache/flame}/sample-<hash>/` (once) and returns their paths.
pub fn materialize() -> anyhow::Result<Sample> {
    let mut hasher = sha2::Sha256::new();
    hasher.update(PARQUET);
    hasher.update(TOKENIZER);
    let tag = &hex::encode(hasher.finalize())[..16];
    let root = cache_dir()?.join(format!("sample-{tag}"));
    let dataset_dir = root.join("dataset");
    let parquet = dataset_dir
        .join("data")
        .join("train-00000-of-00001.parquet");
    let tokenizer = root.join("tokenizer.json");
    for (path, bytes) in [(&parquet, PARQUET), (&tokenizer, TOKENIZER)] {
        if std::fs::metadata(path).map(|m| m.len()).ok() != Some(bytes.len() as u64) {
            std::fs::create_dir_all(path.parent().expect("has a parent"))
                .with_context(|| format!("{}: create directory", root.display()))?;
            flame_formats::write_atomic(path, bytes)?;
        }
    }
    Ok(Sample {
        dataset_dir,
        tokenizer,
    })
}

/// `$FLAME_CACHE`, else `$XDG_CACHE_HOME/flame`, else `~/.cache/flame`.
pub fn cache_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("FLAME_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("flame"));
    }
    let home = std::env::var_os("HOME").context("neither FLAME_CACHE nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache").join("flame"))
}

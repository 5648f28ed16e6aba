//! Writing already-tokenized documents again, in order or in a seeded permutation, into the final layout.
//! `flame-prep merge` and `--shuffle` both end here, which is why they agree byte for byte.

use std::path::Path;

use anyhow::Context;
use flame_formats::permutation::Permutation;
use flame_formats::{IndexedDataset, TokenDtype, TokenSlice};

use crate::shard::{Layout, ShardSink, SinkState, SinkSummary};

/// Document-level shards addressed as one list of documents.
#[derive(Debug)]
pub struct DocumentSet {
    datasets: Vec<IndexedDataset>,
    starts: Vec<u64>,
}

impl DocumentSet {
    /// Opens the shards at `prefixes`, in order.
    pub fn open(prefixes: &[impl AsRef<Path>]) -> anyhow::Result<Self> {
        let mut datasets = Vec::with_capacity(prefixes.len());
        let mut starts = vec![0];
        for prefix in prefixes {
            let dataset = IndexedDataset::open(prefix)?;
            starts.push(starts.last().expect("non-empty") + dataset.num_documents());
            datasets.push(dataset);
        }
        Ok(Self { datasets, starts })
    }

    /// Number of documents.
    pub fn len(&self) -> u64 {
        *self.starts.last().expect("non-empty")
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Document `k` as `u32` ids in `out`.
    pub fn document(&self, k: u64, out: &mut Vec<u32>) -> anyhow::Result<()> {
        let shard = self.starts.partition_point(|&s| s <= k) - 1;
        let slice = self.datasets[shard].document(k - self.starts[shard])?;
        out.clear();
        match slice {
            TokenSlice::Uint16(s) => out.extend(s.iter().map(|&t| u32::from(t))),
            TokenSlice::Int32(s) => {
                out.extend(s.iter().map(|&t| u32::try_from(t).unwrap_or(u32::MAX)));
            }
            other => anyhow::bail!(
                "{}: holds {}, flame-prep writes uint16 or int32",
                self.datasets[shard].prefix().display(),
                other.dtype()
            ),
        }
        Ok(())
    }
}

/// Writes every document of `set` into `dir` (through `staging`) with `layout`, in order, or in the
/// order of the permutation seeded by `shuffle_seed`: output document `i` is input document `π(i)`.
pub fn restream(
    set: &DocumentSet,
    shuffle_seed: Option<u64>,
    dir: &Path,
    staging: &Path,
    dtype: TokenDtype,
    layout: Layout,
    shard_tokens: u64,
) -> anyhow::Result<SinkSummary> {
    if staging.exists() {
        std::fs::remove_dir_all(staging)
            .with_context(|| format!("{}: remove", staging.display()))?;
    }
    std::fs::create_dir_all(staging).with_context(|| format!("{}: create", staging.display()))?;
    let mut sink = ShardSink::new(
        dir,
        staging,
        dtype,
        layout,
        shard_tokens,
        SinkState::default(),
    )?;
    let order = shuffle_seed.map(|seed| Permutation::new(set.len(), seed));
    let mut tokens = Vec::new();
    for i in 0..set.len() {
        set.document(order.map_or(i, |p| p.apply(i)), &mut tokens)?;
        if sink.is_full() {
            sink.rotate()?;
        }
        sink.add_document(&tokens)?;
    }
    let summary = sink.finish()?;
    std::fs::remove_dir_all(staging).with_context(|| format!("{}: remove", staging.display()))?;
    Ok(summary)
}

//! The stream of a job: global sample `k` as a pure function of the job spec and `k`.
//!
//! Sample `k` belongs to global batch `k / G` (`G` = `global_batch_size`). [`Mixer`] says which dataset
//! and which of that dataset's windows it is; the dataset-local window index runs through the dataset's
//! epochs (`epoch = j / windows_per_epoch`), each wrapping around independently; [`EpochPlan`] turns
//! (epoch, window) into pieces of documents and `cu_seqlens`. With `order = "megatron"`,
//! [`MegatronOrder`] says instead which dataset and which of its GPTDataset samples `k` is, as
//! megatron-core's BlendedDataset does.
//!
//! Rank `r` of `W` at step `s`, micro-step `m` reads samples
//! `s·G + m·(B·W) + r·B .. + B` (`B` = `micro_batch_size`): the union over ranks of a step is the same
//! global batch for every `W`, so a checkpoint is the job's fingerprint plus the samples consumed, and a
//! job restarted on another number of ranks continues the same stream. This is also how Megatron's
//! `MegatronPretrainingSampler` slices its global order.

use std::path::Path;
use std::sync::Arc;

use flame_formats::Corpus;
use flame_formats::permutation::splitmix64;

use crate::data_root::DataRoot;
use crate::epoch::{EpochPlan, Piece, cu_seqlens};
use crate::error::{Error, Result};
use crate::file_cache::FileCache;
use crate::megatron::MegatronOrder;
use crate::metrics::Metrics;
use crate::mix::Mixer;
use crate::online::{Cursor, OnlineDataset, RawSource, Window};
#[cfg(feature = "raw-text")]
use crate::raw_text;
use crate::source::{Documents, SplitView};
use crate::spec::{JobSpec, Order, SpecError};

/// One sample: a window of `seq_len` tokens from one dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Global sample index.
    pub index: u64,
    /// Index of its dataset in the job.
    pub dataset: usize,
    /// The tokens: `seq_len` of them (`seq_len + 1` in Megatron's order).
    pub tokens: Vec<u32>,
    /// Sequence boundaries inside the window (`[0, seq_len]` when `varlen` is off).
    pub cu_seqlens: Vec<u32>,
}

/// Samples in flat buffers: tokens `[B, T]` row-major, then per sample (global index, dataset,
/// `cu_seqlens` count), the `cu_seqlens` one sample after the other.
#[derive(Clone, Debug, Default)]
pub struct BatchBuffers {
    /// Tokens of every sample, one after the other.
    pub tokens: Vec<u32>,
    /// (global index, dataset, `cu_seqlens` count) of each sample.
    pub samples: Vec<(u64, u32, u32)>,
    /// Every sample's `cu_seqlens`, one after the other.
    pub cu_seqlens: Vec<u32>,
}

impl BatchBuffers {
    /// Tokens per sample (all samples have as many).
    pub fn tokens_per_sample(&self) -> usize {
        self.tokens
            .len()
            .checked_div(self.samples.len())
            .unwrap_or(0)
    }

    /// The samples, each with its own vectors.
    pub fn to_samples(&self) -> Vec<Sample> {
        let t = self.tokens_per_sample();
        let mut cu = 0;
        self.samples
            .iter()
            .enumerate()
            .map(|(i, &(index, dataset, count))| {
                let sample = Sample {
                    index,
                    dataset: dataset as usize,
                    tokens: self.tokens[i * t..(i + 1) * t].to_vec(),
                    cu_seqlens: self.cu_seqlens[cu..cu + count as usize].to_vec(),
                };
                cu += count as usize;
                sample
            })
            .collect()
    }
}

/// A job's datasets, packing and mixing.
pub struct Stream {
    spec: JobSpec,
    order: Planned,
    /// The job's samples: `num_samples`, or `epochs` × the windows of one epoch of every dataset.
    num_samples: Option<u64>,
}

/// Opens every dataset of `spec` (files mapped, nothing planned), each cut to the job's split, in the
/// spec's order. With `root`, every path must lie under it ([`DataRoot`]). Raw datasets are refused:
/// they need the server's cache ([`open_datasets`]).
pub fn open_documents(spec: &JobSpec, root: Option<&DataRoot>) -> Result<Vec<Box<dyn Documents>>> {
    spec.validate()?;
    spec.datasets
        .iter()
        .map(|d| {
            if d.dataset.is_some() {
                return Err(Error::Raw {
                    dataset: d.label().to_owned(),
                    reason: "raw datasets are opened by a server (flame-stream serve), which tokenizes them".into(),
                });
            }
            open_prepared(spec, &d.path, d.label(), root)
        })
        .collect()
}

/// Opens every dataset of `spec` as [`open_documents`] does, and its raw datasets too: streamed
/// (`streaming = true`, [`Dataset::Online`], their remote files fetched into `files`, hub listings kept
/// under `cache/stream-listings`) or prepared once into `cache` and then opened as prepared
/// ([`crate::raw_text::prepare`], its progress shown in `metrics`). With `root`, raw datasets and the
/// tokenizer must be paths under it.
pub fn open_datasets(
    spec: &JobSpec,
    root: Option<&DataRoot>,
    (cache, files): (&Path, &Arc<FileCache>),
    metrics: &Metrics,
) -> Result<Vec<Dataset>> {
    spec.validate()?;
    let mut spec = spec.clone();
    if let Some(root) = root {
        confine_raw(&mut spec, root)?;
    }
    let tokenizer = job_tokenizer(&spec)?;
    let mut datasets = Vec::with_capacity(spec.datasets.len());
    for (index, d) in spec.datasets.iter().enumerate() {
        datasets.push(match &d.dataset {
            None => {
                let corpus = open_corpus(&d.path, d.label(), root)?;
                if let (Some(sha256), Some(manifest)) = (&tokenizer, corpus.manifest())
                    && manifest.tokenizer.sha256 != *sha256
                {
                    return Err(Error::Spec(SpecError::Invalid(format!(
                        "dataset {:?} was tokenized with {} (tokenizer.json sha256 {}), not the job's tokenizer {:?} (sha256 {sha256}): one tokenizer serves a job",
                        d.label(),
                        manifest.tokenizer.name.as_deref().unwrap_or("another tokenizer"),
                        manifest.tokenizer.sha256,
                        spec.tokenizer.as_deref().unwrap_or_default(),
                    ))));
                }
                Dataset::Prepared(split_view(&spec, corpus)?)
            }
            Some(_) => open_raw(&spec, index, (cache, files), metrics)?,
        });
    }
    Ok(datasets)
}

/// Raw dataset `index` of `spec`: streamed (its cursors kept under `cache/cursors`), or prepared into
/// `cache` and opened as prepared.
#[cfg(feature = "raw-text")]
fn open_raw(
    spec: &JobSpec,
    index: usize,
    (cache, files): (&Path, &Arc<FileCache>),
    metrics: &Metrics,
) -> Result<Dataset> {
    let d = &spec.datasets[index];
    let raw_error = |e: anyhow::Error| Error::Raw {
        dataset: d.label().to_owned(),
        reason: format!("{e:#}"),
    };
    if spec.streaming {
        let config = raw_text::streaming_config(spec, d, &cache.join("stream-listings"))
            .map_err(raw_error)?;
        let cursors = cache
            .join("cursors")
            .join(spec.fingerprint())
            .join(index.to_string());
        return Ok(Dataset::Online(
            raw_text::raw_source(&config, files, Some(&cursors)).map_err(raw_error)?,
        ));
    }
    let dir = raw_text::prepare(spec, d, cache, metrics).map_err(raw_error)?;
    let path = dir
        .to_str()
        .ok_or_else(|| raw_error(anyhow::anyhow!("{}: not UTF-8", dir.display())))?;
    // The cache is the server's own: no data-root check.
    Ok(Dataset::Prepared(open_prepared(
        spec,
        path,
        d.label(),
        None,
    )?))
}

/// Without flame-prep's code (the `raw-text` feature, on by default) raw datasets are refused.
#[cfg(not(feature = "raw-text"))]
fn open_raw(
    spec: &JobSpec,
    index: usize,
    _: (&Path, &Arc<FileCache>),
    _: &Metrics,
) -> Result<Dataset> {
    let d = &spec.datasets[index];
    Err(Error::Raw {
        dataset: d.label().to_owned(),
        reason: "this flame-stream was built without the raw-text feature".into(),
    })
}

/// Rewrites the raw datasets' and the tokenizer's paths of `spec` to their places under `root`,
/// refusing anything else (a hub id or URL would reach past the files the server was given).
fn confine_raw(spec: &mut JobSpec, root: &DataRoot) -> Result<()> {
    if !spec.has_raw_datasets() {
        return Ok(());
    }
    let under = |given: &str| -> Result<String> {
        let resolved = root.resolve(given)?;
        if !resolved.exists() && !given.contains(['*', '?', '[']) {
            return Err(Error::Raw {
                dataset: given.to_owned(),
                reason: format!(
                    "a server with --data-root serves only files under {}: no such file there (hub ids and URLs are refused)",
                    root.path().display()
                ),
            });
        }
        Ok(resolved.to_string_lossy().into_owned())
    };
    for d in &mut spec.datasets {
        if let Some(raw) = &d.dataset {
            d.dataset = Some(under(raw)?);
        }
    }
    if let Some(tokenizer) = &spec.tokenizer {
        spec.tokenizer = Some(under(tokenizer)?);
    }
    Ok(())
}

/// One prepared dataset at `path` (`label` in errors), cut to the job's split.
fn open_prepared(
    spec: &JobSpec,
    path: &str,
    label: &str,
    root: Option<&DataRoot>,
) -> Result<Box<dyn Documents>> {
    split_view(spec, open_corpus(path, label, root)?)
}

/// The SHA-256 of the `tokenizer.json` of a job with raw datasets, which its prepared datasets' manifests
/// must name too; `None` for a job without both kinds (nothing to compare).
#[cfg(feature = "raw-text")]
fn job_tokenizer(spec: &JobSpec) -> Result<Option<String>> {
    if !spec.has_raw_datasets() || spec.datasets.iter().all(|d| d.dataset.is_some()) {
        return Ok(None);
    }
    raw_text::tokenizer_sha256(spec)
        .map(Some)
        .map_err(|e| Error::Raw {
            dataset: spec.tokenizer.clone().unwrap_or_default(),
            reason: format!("{e:#}"),
        })
}

#[cfg(not(feature = "raw-text"))]
#[allow(clippy::unnecessary_wraps)] // the same signature as with the feature
fn job_tokenizer(_: &JobSpec) -> Result<Option<String>> {
    Ok(None)
}

/// The documents of `corpus` in the job's split.
fn split_view(spec: &JobSpec, corpus: Corpus) -> Result<Box<dyn Documents>> {
    let view = SplitView::new(corpus, spec.split.as_deref(), spec.split_index())
        .map_err(|e| Error::Spec(SpecError::Invalid(e)))?;
    Ok(Box::new(view))
}

/// Opens prepared dataset `path` (with `root`, only under it).
fn open_corpus(path: &str, label: &str, root: Option<&DataRoot>) -> Result<Corpus> {
    let resolved = match root {
        Some(root) => {
            let resolved = root.resolve(path)?;
            root.check_files(path, &resolved)?;
            resolved
        }
        None => path.into(),
    };
    let corpus = Corpus::open(&resolved).map_err(|e| Error::dataset(label, e))?;
    if let Some(root) = root {
        root.check_corpus(path, &corpus)?;
    }
    Ok(corpus)
}

/// A dataset of a job, opened: prepared documents, or raw text tokenized while it is served.
pub enum Dataset {
    /// Prepared shards (or documents in memory), cut to the job's split.
    Prepared(Box<dyn Documents>),
    /// A raw dataset of a `streaming = true` job ([`crate::online`]).
    Online(Arc<RawSource>),
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Prepared(documents) => {
                write!(f, "Prepared({} documents)", documents.num_documents())
            }
            Self::Online(source) => write!(f, "Online({source:?})"),
        }
    }
}

/// Where a sample's tokens are: pieces of a dataset's documents, or an online dataset's window.
enum Located {
    Pieces(Vec<Piece>),
    Window(Arc<Window>),
}

/// One dataset of flame's order, planned.
enum FlamePlan {
    Prepared(EpochPlan<Box<dyn Documents>>),
    Online(OnlineDataset),
}

/// The plan of one of the two orders.
enum Planned {
    Flame {
        plans: Vec<FlamePlan>,
        mixer: Mixer,
    },
    Megatron {
        order: MegatronOrder,
        documents: Vec<Box<dyn Documents>>,
        lengths: Vec<Vec<u32>>,
    },
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("fingerprint", &self.spec.fingerprint())
            .field("order", &self.spec.order)
            .finish_non_exhaustive()
    }
}

impl Stream {
    /// Opens every dataset of `spec` (manifest directories or Megatron prefixes) and plans the stream.
    pub fn open(spec: JobSpec) -> Result<Self> {
        let documents = open_documents(&spec, None)?;
        Self::from_documents(spec, documents)
    }

    /// Plans the stream over datasets already open (and already cut to the job's split), one per entry
    /// of `spec.datasets`, in that order.
    ///
    /// # Panics
    /// If the counts differ.
    pub fn from_documents(spec: JobSpec, documents: Vec<Box<dyn Documents>>) -> Result<Self> {
        Self::from_datasets(spec, documents.into_iter().map(Dataset::Prepared).collect())
    }

    /// Plans the stream over datasets already open, prepared or raw, one per entry of `spec.datasets`.
    ///
    /// # Panics
    /// If the counts differ.
    pub fn from_datasets(spec: JobSpec, datasets: Vec<Dataset>) -> Result<Self> {
        spec.validate()?;
        assert_eq!(
            datasets.len(),
            spec.datasets.len(),
            "one set of documents per dataset"
        );
        let order = match spec.order {
            Order::Flame => Self::plan_flame(&spec, datasets)?,
            Order::Megatron => {
                let documents = datasets
                    .into_iter()
                    .zip(&spec.datasets)
                    .map(|(d, named)| match d {
                        Dataset::Prepared(documents) => Ok(documents),
                        Dataset::Online(_) => Err(Error::Plan {
                            path: named.label().to_owned(),
                            reason: "Megatron's order needs prepared datasets".into(),
                        }),
                    })
                    .collect::<Result<_>>()?;
                Self::plan_megatron(&spec, documents)?
            }
        };
        let mut stream = Self {
            num_samples: spec.num_samples,
            spec,
            order,
        };
        if let Some(epochs) = stream.spec.epochs {
            let windows: u64 = stream.windows_per_epoch().iter().sum();
            stream.num_samples = Some(u64::from(epochs).saturating_mul(windows));
        }
        Ok(stream)
    }

    fn plan_flame(spec: &JobSpec, datasets: Vec<Dataset>) -> Result<Planned> {
        let mut plans = Vec::with_capacity(datasets.len());
        for (i, (dataset, d)) in datasets.into_iter().zip(&spec.datasets).enumerate() {
            let mut state = spec.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let seed = splitmix64(&mut state);
            let docs = match dataset {
                Dataset::Online(source) => {
                    plans.push(FlamePlan::Online(OnlineDataset::new(
                        source,
                        spec.seq_len,
                        seed,
                    )));
                    continue;
                }
                Dataset::Prepared(docs) => docs,
            };
            let plan = EpochPlan::new(docs, spec.seq_len, seed);
            if let Some(packed) = plan.documents().packed_seq_len()
                && packed != spec.seq_len
            {
                return Err(Error::Plan {
                    path: d.label().to_owned(),
                    reason: format!(
                        "packed into windows of {packed} tokens, the job's seq_len is {}: serve it with seq_len = {packed}, or pack the documents here from a Megatron output",
                        spec.seq_len
                    ),
                });
            }
            // Megatron loops forever on an empty split; refuse it here instead.
            if plan.windows_per_epoch() == 0 {
                return Err(Error::TooSmall {
                    path: d.label().to_owned(),
                    split: spec.split_name.clone(),
                    documents: plan.documents().num_documents(),
                    tokens: plan.total_tokens(),
                    seq_len: spec.seq_len,
                });
            }
            plans.push(FlamePlan::Prepared(plan));
        }
        let weights: Vec<f64> = spec.datasets.iter().map(|d| d.weight).collect();
        let mixer = Mixer::new(&weights, spec.global_batch_size, spec.seed);
        Ok(Planned::Flame { plans, mixer })
    }

    fn plan_megatron(spec: &JobSpec, documents: Vec<Box<dyn Documents>>) -> Result<Planned> {
        let lengths: Vec<Vec<u32>> = documents
            .iter()
            .zip(&spec.datasets)
            .map(|(docs, d)| {
                (0..docs.num_documents())
                    .map(|i| {
                        u32::try_from(docs.document_len(i)).map_err(|_| Error::Plan {
                            path: d.path.clone(),
                            reason: format!("document {i} is longer than int32"),
                        })
                    })
                    .collect()
            })
            .collect::<Result<_>>()?;
        let weights: Vec<f64> = spec.datasets.iter().map(|d| d.weight).collect();
        let order = MegatronOrder::build(
            &lengths,
            &weights,
            spec.num_samples.expect("validated"),
            u64::from(spec.seq_len),
            u32::try_from(spec.seed).expect("validated"),
        )
        .map_err(|(i, reason)| {
            let path = spec.datasets[i].path.clone();
            if documents[i].num_documents() == 0 || lengths[i].iter().all(|&l| l == 0) {
                Error::TooSmall {
                    path,
                    split: spec.split_name.clone(),
                    documents: documents[i].num_documents(),
                    tokens: 0,
                    seq_len: spec.seq_len,
                }
            } else {
                Error::Plan { path, reason }
            }
        })?;
        Ok(Planned::Megatron {
            order,
            documents,
            lengths,
        })
    }

    /// The job spec.
    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }

    /// Samples in the job (`None`: unbounded).
    pub fn num_samples(&self) -> Option<u64> {
        self.num_samples
    }

    /// Tokens in every sample: `seq_len`, or `seq_len + 1` in Megatron's order (inputs are the first
    /// `seq_len`, labels the last `seq_len`).
    pub fn tokens_per_sample(&self) -> u32 {
        match self.order {
            Planned::Flame { .. } => self.spec.seq_len,
            Planned::Megatron { .. } => self.spec.seq_len + 1,
        }
    }

    /// Samples in one epoch of each dataset (flame's order), or the samples each dataset's index holds
    /// (Megatron's).
    pub fn windows_per_epoch(&self) -> Vec<u64> {
        match &self.order {
            Planned::Flame { plans, .. } => plans
                .iter()
                .map(|plan| match plan {
                    FlamePlan::Prepared(plan) => plan.windows_per_epoch(),
                    // Unknown until a pass is read (validation refuses `epochs` for such jobs).
                    FlamePlan::Online(_) => 0,
                })
                .collect(),
            Planned::Megatron { order, .. } => order.samples_per_dataset(),
        }
    }

    /// For each dataset streamed online (by its place in the job), the cursor a trainer's checkpoint keeps
    /// to resume at `step`: at or before the first window that step reads from it, so that a fresh
    /// server given these ([`Stream::add_cursors`]) serves the step without replaying the stream.
    pub fn cursors(&self, step: u64) -> Vec<(usize, Cursor)> {
        let Planned::Flame { plans, mixer } = &self.order else {
            return Vec::new();
        };
        // Dataset `i`'s windows drawn by the steps before `step`: the first one `step` or a later step reads.
        let (_, before) = mixer.batch(step);
        plans
            .iter()
            .enumerate()
            .filter_map(|(i, plan)| match plan {
                FlamePlan::Online(online) => online.cursor_at(before[i]).map(|c| (i, c)),
                FlamePlan::Prepared(_) => None,
            })
            .collect()
    }

    /// Gives the online datasets cursors from a trainer's checkpoint ([`Stream::cursors`]); cursors for
    /// datasets that are not online are ignored.
    pub fn add_cursors(&self, cursors: &[(usize, Cursor)]) {
        if let Planned::Flame { plans, .. } = &self.order {
            for &(i, cursor) in cursors {
                if let Some(FlamePlan::Online(online)) = plans.get(i) {
                    online.add_cursor(cursor);
                }
            }
        }
    }

    /// Global sample `k`.
    pub fn sample(&self, k: u64) -> Result<Sample> {
        let mut out = BatchBuffers::default();
        self.samples_into(k..k + 1, &mut out)?;
        Ok(Sample {
            index: k,
            dataset: out.samples[0].1 as usize,
            tokens: out.tokens,
            cu_seqlens: out.cu_seqlens,
        })
    }

    /// Appends global samples `range` (within one global batch) to `out`.
    fn samples_into(&self, range: std::ops::Range<u64>, out: &mut BatchBuffers) -> Result<()> {
        if let Some(num_samples) = self.num_samples
            && range.end > num_samples
        {
            return Err(Error::PastEnd {
                index: range.end - 1,
                num_samples,
            });
        }
        let located: Vec<(usize, Located)> = match &self.order {
            Planned::Flame { plans, mixer } => mixer
                .draws(range.clone())
                .into_iter()
                .map(|draw| {
                    let located = match &plans[draw.dataset] {
                        FlamePlan::Prepared(plan) => {
                            let per_epoch = plan.windows_per_epoch();
                            Located::Pieces(
                                plan.window(draw.window / per_epoch, draw.window % per_epoch),
                            )
                        }
                        FlamePlan::Online(online) => {
                            Located::Window(online.window(draw.window).map_err(|e| {
                                Error::online(self.spec.datasets[draw.dataset].label(), e)
                            })?)
                        }
                    };
                    Ok((draw.dataset, located))
                })
                .collect::<Result<_>>()?,
            Planned::Megatron { order, lengths, .. } => range
                .clone()
                .map(|k| {
                    let (d, j) = order.locate(k);
                    (d, Located::Pieces(order.pieces(d, j, &lengths[d])))
                })
                .collect(),
        };
        let context_len = u64::from(self.spec.context_len());
        for (k, (dataset, located)) in range.zip(located) {
            let label = self.spec.datasets[dataset].label();
            let (pieces, documents): (&[Piece], Option<&dyn Documents>) = match &located {
                Located::Window(window) => {
                    out.tokens.extend_from_slice(&window.tokens);
                    (&window.pieces, None)
                }
                Located::Pieces(pieces) => {
                    let documents: &dyn Documents = match &self.order {
                        Planned::Flame { plans, .. } => match &plans[dataset] {
                            FlamePlan::Prepared(plan) => plan.documents(),
                            FlamePlan::Online(_) => unreachable!("online datasets give windows"),
                        },
                        Planned::Megatron { documents, .. } => &documents[dataset],
                    };
                    for piece in pieces {
                        documents
                            .read(piece.document, piece.tokens.clone(), &mut out.tokens)
                            .map_err(|e| Error::dataset(label, e))?;
                    }
                    (pieces, Some(documents))
                }
            };
            let before = out.cu_seqlens.len();
            // A window packed ahead of time (flame's order serves it whole) keeps its stored boundaries.
            let stored = match (pieces, documents) {
                ([only], Some(documents))
                    if self.spec.varlen && matches!(self.order, Planned::Flame { .. }) =>
                {
                    documents
                        .window_boundaries(only.document)
                        .map_err(|e| Error::dataset(label, e))?
                }
                _ => None,
            };
            if let Some(stored) = stored {
                let segments: Vec<Piece> = stored
                    .windows(2)
                    .map(|w| Piece {
                        document: 0,
                        tokens: 0..u64::from(w[1] - w[0]),
                    })
                    .collect();
                out.cu_seqlens.extend(cu_seqlens(&segments, context_len));
            } else if self.spec.varlen {
                out.cu_seqlens.extend(cu_seqlens(pieces, context_len));
                // Megatron's extra label token is not an input position.
                while out
                    .cu_seqlens
                    .last()
                    .is_some_and(|&c| c >= self.spec.seq_len)
                {
                    out.cu_seqlens.pop();
                }
                out.cu_seqlens.push(self.spec.seq_len);
            } else {
                out.cu_seqlens.extend([0, self.spec.seq_len]);
            }
            let count = u32::try_from(out.cu_seqlens.len() - before).expect("below seq_len");
            out.samples
                .push((k, u32::try_from(dataset).expect("few datasets"), count));
        }
        Ok(())
    }

    /// Rank `rank`'s micro-batch into `out` (cleared first): what [`Stream::micro_batch`] returns, in
    /// flat buffers that the server copies to the wire or a shared-memory slot as they are.
    pub fn micro_batch_into(
        &self,
        (step, micro_step): (u64, u64),
        (rank, world_size): (u32, u32),
        out: &mut BatchBuffers,
    ) -> Result<()> {
        out.tokens.clear();
        out.samples.clear();
        out.cu_seqlens.clear();
        let range = self.micro_batch_indices(step, micro_step, rank, world_size)?;
        self.samples_into(range, out)
    }

    /// The global sample indices rank `rank` of `world_size` reads at `step`, `micro_step`.
    pub fn micro_batch_indices(
        &self,
        step: u64,
        micro_step: u64,
        rank: u32,
        world_size: u32,
    ) -> Result<std::ops::Range<u64>> {
        let (g, b) = (
            u64::from(self.spec.global_batch_size),
            u64::from(self.spec.micro_batch_size),
        );
        let per_micro_step = b * u64::from(world_size);
        if world_size == 0 || rank >= world_size {
            return Err(Error::Shape(format!(
                "rank {rank} is not in 0..{world_size}"
            )));
        }
        if !g.is_multiple_of(per_micro_step) {
            return Err(Error::Shape(format!(
                "global_batch_size {g} is not a multiple of micro_batch_size {b} × world size {world_size}"
            )));
        }
        if micro_step >= g / per_micro_step {
            return Err(Error::Shape(format!(
                "micro-step {micro_step} is past the {} micro-steps of a step",
                g / per_micro_step
            )));
        }
        // Sample indices are u64; a step whose samples do not fit is refused, not wrapped.
        let start = step
            .checked_mul(g)
            .and_then(|s| s.checked_add(micro_step * per_micro_step + u64::from(rank) * b))
            .filter(|start| start.checked_add(b).is_some())
            .ok_or_else(|| {
                Error::Shape(format!(
                    "step {step}: its samples lie past the largest sample index, 2^64 - 1"
                ))
            })?;
        Ok(start..start + b)
    }

    /// The samples rank `rank` of `world_size` reads at `step`, `micro_step`.
    pub fn micro_batch(
        &self,
        step: u64,
        micro_step: u64,
        rank: u32,
        world_size: u32,
    ) -> Result<Vec<Sample>> {
        let mut out = BatchBuffers::default();
        self.micro_batch_into((step, micro_step), (rank, world_size), &mut out)?;
        Ok(out.to_samples())
    }
}

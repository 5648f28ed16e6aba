//! The stream of a job: global sample `k` as a pure function of the job spec and `k`.
//!
//! Sample `k` belongs to global batch `k / G` (`G` = `global_batch_size`). [`Mixer`] says which dataset
//! and which of that dataset's windows it is; the dataset-local window index runs through the dataset's
//! epochs (`epoch = j / windows_per_epoch`), each wrapping around independently; [`EpochPlan`] turns
//! (epoch, window) into pieces of documents and `cu_seqlens`.
//!
//! Rank `r` of `W` at step `s`, micro-step `m` reads samples
//! `s·G + m·(B·W) + r·B .. + B` (`B` = `micro_batch_size`): the union over ranks of a step is the same
//! global batch for every `W`, so a checkpoint is the job's fingerprint plus the samples consumed, and a
//! job restarted on another number of ranks continues the same stream.

use flame_formats::Corpus;
use flame_formats::permutation::splitmix64;

use crate::epoch::{EpochPlan, cu_seqlens};
use crate::error::{Error, Result};
use crate::mix::Mixer;
use crate::source::{Documents, SplitView};
use crate::spec::{JobSpec, Order};

/// One sample: a window of `seq_len` tokens from one dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Global sample index.
    pub index: u64,
    /// Index of its dataset in the job.
    pub dataset: usize,
    /// The tokens, exactly `seq_len` of them.
    pub tokens: Vec<u32>,
    /// Sequence boundaries inside the window (`[0, seq_len]` when `varlen` is off).
    pub cu_seqlens: Vec<u32>,
}

/// A job's datasets, packing and mixing.
pub struct Stream {
    spec: JobSpec,
    plans: Vec<EpochPlan<Box<dyn Documents>>>,
    mixer: Mixer,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("fingerprint", &self.spec.fingerprint())
            .field("plans", &self.plans)
            .finish_non_exhaustive()
    }
}

impl Stream {
    /// Opens every dataset of `spec` (manifest directories or Megatron prefixes) and plans the stream.
    pub fn open(spec: JobSpec) -> Result<Self> {
        spec.validate()?;
        let mut documents: Vec<Box<dyn Documents>> = Vec::new();
        for d in &spec.datasets {
            let corpus = Corpus::open(&d.path).map_err(|e| Error::dataset(&d.path, e))?;
            documents.push(Box::new(SplitView::new(
                corpus,
                spec.split_shares(),
                spec.split_index(),
            )));
        }
        Self::from_documents(spec, documents)
    }

    /// Plans the stream over datasets already open, one per entry of `spec.datasets`, in that order.
    ///
    /// # Panics
    /// If the counts differ.
    pub fn from_documents(spec: JobSpec, documents: Vec<Box<dyn Documents>>) -> Result<Self> {
        spec.validate()?;
        if spec.order != Order::Flame {
            return Err(Error::Unsupported(
                "order = \"megatron\" is not served yet; use order = \"flame\"".into(),
            ));
        }
        assert_eq!(
            documents.len(),
            spec.datasets.len(),
            "one set of documents per dataset"
        );
        let plans: Vec<_> = documents
            .into_iter()
            .enumerate()
            .map(|(i, docs)| {
                let mut state = spec.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                EpochPlan::new(docs, spec.seq_len, splitmix64(&mut state))
            })
            .collect();
        for (plan, d) in plans.iter().zip(&spec.datasets) {
            // Megatron loops forever on an empty split; refuse it here instead.
            if plan.windows_per_epoch() == 0 {
                return Err(Error::TooSmall {
                    path: d.path.clone(),
                    split: spec.split_name.clone(),
                    documents: plan.documents().num_documents(),
                    tokens: plan.total_tokens(),
                    seq_len: spec.seq_len,
                });
            }
        }
        let weights: Vec<f64> = spec.datasets.iter().map(|d| d.weight).collect();
        let mixer = Mixer::new(&weights, spec.global_batch_size, spec.seed);
        Ok(Self { spec, plans, mixer })
    }

    /// The job spec.
    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }

    /// Windows per epoch of each dataset.
    pub fn windows_per_epoch(&self) -> Vec<u64> {
        self.plans
            .iter()
            .map(EpochPlan::windows_per_epoch)
            .collect()
    }

    /// Global sample `k`.
    pub fn sample(&self, k: u64) -> Result<Sample> {
        if let Some(num_samples) = self.spec.num_samples
            && k >= num_samples
        {
            return Err(Error::PastEnd {
                index: k,
                num_samples,
            });
        }
        let draw = self.mixer.draw(k);
        let plan = &self.plans[draw.dataset];
        let per_epoch = plan.windows_per_epoch();
        let pieces = plan.window(draw.window / per_epoch, draw.window % per_epoch);
        let mut tokens = Vec::with_capacity(self.spec.seq_len as usize);
        for piece in &pieces {
            plan.documents()
                .read(piece.document, piece.tokens.clone(), &mut tokens)
                .map_err(|e| Error::dataset(&self.spec.datasets[draw.dataset].path, e))?;
        }
        let cu_seqlens = if self.spec.varlen {
            cu_seqlens(&pieces, u64::from(self.spec.context_len()))
        } else {
            vec![0, self.spec.seq_len]
        };
        Ok(Sample {
            index: k,
            dataset: draw.dataset,
            tokens,
            cu_seqlens,
        })
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
        let start = step * g + micro_step * per_micro_step + u64::from(rank) * b;
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
        self.micro_batch_indices(step, micro_step, rank, world_size)?
            .map(|k| self.sample(k))
            .collect()
    }
}

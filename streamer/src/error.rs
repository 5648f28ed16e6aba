//! The stream's errors: each names the dataset, sample or rank it is about.

use std::path::PathBuf;

use crate::budget::ByteSize;
use crate::spec::SpecError;

/// Why a job cannot be planned or a sample cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec itself is wrong.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A dataset could not be opened or read.
    #[error("dataset {path:?}: {source}")]
    Dataset {
        /// As given in the spec.
        path: String,
        /// What the format layer said.
        source: flame_formats::Error,
    },
    /// A raw dataset that cannot be opened or prepared: flame-prep's error, which names the file.
    #[error("dataset {dataset:?}: {reason}")]
    Raw {
        /// As given in the spec.
        dataset: String,
        /// What flame-prep said.
        reason: String,
    },
    /// A raw dataset streamed with online tokenization cannot go on (its file and record named).
    #[error("dataset {dataset:?}: {source}")]
    Online {
        /// As given in the spec.
        dataset: String,
        /// What the stream said.
        source: crate::online::StreamError,
    },
    /// A dataset (in the job's split) holds less than one window: serving it would loop forever.
    #[error(
        "dataset {path:?} ({split} split) has {documents} documents and {tokens} tokens: fewer than one window of {seq_len} tokens"
    )]
    TooSmall {
        /// As given in the spec.
        path: String,
        /// The split the job reads.
        split: String,
        /// Documents in that split.
        documents: u64,
        /// Tokens in that split.
        tokens: u64,
        /// The window size.
        seq_len: u32,
    },
    /// A dataset that cannot be planned as the job asks.
    #[error("dataset {path:?}: {reason}")]
    Plan {
        /// As given in the spec.
        path: String,
        /// Why.
        reason: String,
    },
    /// A spec value this version does not serve yet.
    #[error("{0}")]
    Unsupported(String),
    /// A sample past the job's `num_samples`.
    #[error("sample {index} is past the job's {num_samples} samples")]
    PastEnd {
        /// The sample asked for.
        index: u64,
        /// The job's samples.
        num_samples: u64,
    },
    /// A rank, world size or micro-step that does not fit the job's batch shape.
    #[error("batch shape: {0}")]
    Shape(String),
    /// A dataset path that leads outside the server's data root (`serve --data-root`). Where it leads is
    /// logged on the server, not told to the client.
    #[error(
        "dataset {path:?} leads outside the server's data root {}{}",
        root.display(),
        file.as_ref().map_or(String::new(), |f| format!(" (through its file {})", f.display()))
    )]
    OutsideDataRoot {
        /// As given in the spec.
        path: String,
        /// The file of the dataset that leads out (relative to the root), when the dataset's own path
        /// does not.
        file: Option<PathBuf>,
        /// The data root, canonical.
        root: PathBuf,
    },
    /// A job whose state does not fit the server's memory budget (`serve --max-job-memory`).
    #[error(
        "the job's state needs an estimated {} ({needed} bytes); the server's budget for job state is {} (serve --max-job-memory), {} of it held by {jobs} other open job(s) in use",
        ByteSize(*needed),
        ByteSize(*budget),
        ByteSize(*held)
    )]
    OverBudget {
        /// The job's estimated state, in bytes.
        needed: u64,
        /// The server's budget, in bytes.
        budget: u64,
        /// Bytes held by the other open jobs that could not be dropped (they have sessions).
        held: u64,
        /// Those jobs.
        jobs: usize,
    },
}

impl Error {
    /// A read failure in the dataset at `path`.
    pub fn dataset(path: impl Into<String>, source: flame_formats::Error) -> Self {
        Self::Dataset {
            path: path.into(),
            source,
        }
    }
}

impl Error {
    /// A failure of the online dataset `dataset`.
    pub fn online(dataset: impl Into<String>, source: crate::online::StreamError) -> Self {
        Self::Online {
            dataset: dataset.into(),
            source,
        }
    }
}

/// The stream's result type.
pub type Result<T> = std::result::Result<T, Error>;

//! The job spec: what a trainer asks the server for, as TOML (a file, or sent by a client at connect).
//!
//! ```toml
//! seed = 42
//! seq_len = 2048
//! context_len = 2048
//! varlen = true
//! micro_batch_size = 4
//! global_batch_size = 32
//! order = "flame"            # or "megatron"
//! split = "969,30,1"         # optional; documents are cut into train/valid/test ranges
//! split_name = "train"       # which of them this job reads (default "train")
//! num_samples = 1000000      # optional: the job's samples (or epochs = 2: passes over all tokens)
//! [[datasets]]
//! path = "data/a"            # a flame-prep output directory (manifest.json) or a Megatron prefix
//! weight = 0.7
//! [[datasets]]
//! path = "data/b"
//! weight = 0.3
//! ```
//!
//! A spec is checked before anything is opened ([`JobSpec::validate`]); its [`JobSpec::fingerprint`] names
//! the stream, so a checkpoint is the fingerprint plus the number of samples consumed.

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::budget::ByteSize;
use crate::protocol::Limits;

/// Most datasets a job may name: each is opened and mapped, and mixing costs time per dataset.
pub const MAX_DATASETS: usize = 4096;

/// Largest micro-batch a job may ask for ([`JobSpec::micro_batch_bytes`]): one frame a client accepts.
pub const MAX_MICRO_BATCH_BYTES: u64 = Limits::SERVER_FRAMES.max_frame as u64;

/// The order samples are served in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// flame's: documents shuffled per epoch, packed across boundaries, mixed per token.
    #[default]
    Flame,
    /// megatron-core's GPTDataset + BlendedDataset order.
    Megatron,
}

/// One dataset of a job and its share of the tokens: prepared shards (`path`) or raw text (`dataset`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// A flame-prep output directory (or its `manifest.json`), a Megatron prefix, or a directory of prefixes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// Raw text, tokenized by the server with the job's `tokenizer`: anything `flame-prep --dataset`
    /// takes (a hub id or alias, a local file, directory or glob, an object-store URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// The hub dataset's configuration (`flame-prep --name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The raw dataset's split (`flame-prep --split`, default `train`); not the job's `split`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
    /// The raw dataset's text column or key (`flame-prep --text-key`; default `text`, else `content`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_key: Option<String>,
    /// Relative weight; weights are normalised over the job.
    #[serde(default = "one")]
    pub weight: f64,
}

impl DatasetSpec {
    /// Prepared shards at `path`, with `weight`.
    pub fn prepared(path: impl Into<String>, weight: f64) -> Self {
        Self {
            path: path.into(),
            dataset: None,
            name: None,
            split: None,
            text_key: None,
            weight,
        }
    }

    /// What errors call the dataset: its path, or the raw dataset as named.
    pub fn label(&self) -> &str {
        self.dataset.as_deref().unwrap_or(&self.path)
    }
}

fn one() -> f64 {
    1.0
}

/// A job: datasets with weights and the shape of every batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Seeds every shuffle.
    pub seed: u64,
    /// Tokens per sample.
    pub seq_len: u32,
    /// Longest sequence inside a sample in varlen mode (`cu_seqlens` are cut every `context_len` tokens);
    /// defaults to `seq_len`.
    #[serde(default)]
    pub context_len: Option<u32>,
    /// Whether samples carry document boundaries (`cu_seqlens`).
    #[serde(default = "yes")]
    pub varlen: bool,
    /// Samples per rank per micro-step.
    pub micro_batch_size: u32,
    /// Samples per optimizer step over all ranks.
    pub global_batch_size: u32,
    /// The sample order.
    #[serde(default)]
    pub order: Order,
    /// Megatron's split string, e.g. `"969,30,1"`: each dataset's documents are cut into consecutive
    /// train/valid/test ranges in these proportions.
    #[serde(default)]
    pub split: Option<String>,
    /// Which split this job reads: `train`, `valid` or `test`.
    #[serde(default = "train")]
    pub split_name: String,
    /// Samples in the job; requests past it are refused. `None` (and no `epochs`): unbounded (datasets
    /// wrap around).
    #[serde(default)]
    pub num_samples: Option<u64>,
    /// Instead of `num_samples`: this many passes over all the datasets' tokens (the job's samples are
    /// `epochs` × the windows of one epoch of every dataset; each dataset still wraps around by itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u32>,
    /// The tokenizer of the job's raw datasets (`flame-prep --tokenizer`: a `tokenizer.json`, a
    /// directory, or a hub model id); a prepared dataset of the job must have been made with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
    /// BOS for raw datasets, as `flame-prep --bos`: `tokenizer` (default), `always`, `never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos: Option<String>,
    /// EOS after every raw document, as `flame-prep --append-eod`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub append_eod: bool,
    /// Raw datasets are tokenized while they are served, never prepared (`false`: prepared once into the
    /// server's cache, then served as prepared datasets are).
    #[serde(default, skip_serializing_if = "is_false")]
    pub streaming: bool,
    /// The datasets.
    pub datasets: Vec<DatasetSpec>,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_false(value: &bool) -> bool {
    !value
}

fn yes() -> bool {
    true
}

fn train() -> String {
    "train".into()
}

/// A spec that cannot be served, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Not TOML, or not the spec's keys.
    #[error("job spec: {0}")]
    Parse(#[from] toml::de::Error),
    /// A value out of range or inconsistent with another.
    #[error("job spec: {0}")]
    Invalid(String),
}

impl JobSpec {
    /// Parses and validates a TOML spec.
    pub fn from_toml(text: &str) -> Result<Self, SpecError> {
        let spec: Self = toml::from_str(text)?;
        spec.validate()?;
        Ok(spec)
    }

    /// The TOML form (what a client sends).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a spec always serializes")
    }

    /// Bytes one micro-batch takes at most, on the wire or in a shared-memory slot: per sample
    /// `seq_len + 1` tokens (Megatron's order), as many `cu_seqlens` and one more, and 32 bytes of framing.
    pub fn micro_batch_bytes(&self) -> u64 {
        u64::from(self.micro_batch_size) * (8 * (u64::from(self.seq_len) + 2) + 32)
    }

    /// `context_len`, defaulting to `seq_len`.
    pub fn context_len(&self) -> u32 {
        self.context_len.unwrap_or(self.seq_len)
    }

    /// Checks every value that does not need the datasets opened.
    pub fn validate(&self) -> Result<(), SpecError> {
        let invalid = |m: String| Err(SpecError::Invalid(m));
        if self.seq_len == 0 {
            return invalid("seq_len must be at least 1".into());
        }
        if self.context_len() == 0 || self.context_len() > self.seq_len {
            return invalid(format!(
                "context_len {} must be in 1..={} (seq_len)",
                self.context_len(),
                self.seq_len
            ));
        }
        if self.micro_batch_size == 0 || self.global_batch_size == 0 {
            return invalid("micro_batch_size and global_batch_size must be at least 1".into());
        }
        if !self.global_batch_size.is_multiple_of(self.micro_batch_size) {
            return invalid(format!(
                "global_batch_size {} is not a multiple of micro_batch_size {}",
                self.global_batch_size, self.micro_batch_size
            ));
        }
        if self.micro_batch_bytes() > MAX_MICRO_BATCH_BYTES {
            return invalid(format!(
                "a micro-batch of {} × {} tokens takes up to {}, more than the {} a batch may take",
                self.micro_batch_size,
                self.seq_len,
                ByteSize(self.micro_batch_bytes()),
                ByteSize(MAX_MICRO_BATCH_BYTES)
            ));
        }
        if self.datasets.is_empty() {
            return invalid("no [[datasets]]".into());
        }
        if self.datasets.len() > MAX_DATASETS {
            return invalid(format!(
                "{} datasets; a job may name at most {MAX_DATASETS}",
                self.datasets.len()
            ));
        }
        for d in &self.datasets {
            if !(d.weight.is_finite() && d.weight > 0.0) {
                return invalid(format!(
                    "dataset {:?}: weight {} must be positive",
                    d.label(),
                    d.weight
                ));
            }
        }
        self.validate_raw()?;
        if !["train", "valid", "test"].contains(&self.split_name.as_str()) {
            return invalid(format!(
                "split_name {:?} is not train, valid or test",
                self.split_name
            ));
        }
        if let Some(split) = &self.split {
            parse_split(split)?;
        }
        if self.num_samples.is_some() && self.epochs.is_some() {
            return invalid("give num_samples or epochs, not both".into());
        }
        if self.epochs == Some(0) {
            return invalid("epochs must be at least 1".into());
        }
        if self.order == Order::Megatron {
            if self.num_samples.is_none() {
                return invalid(
                    "order = \"megatron\" needs num_samples (Megatron sizes its indices by the samples it trains on)"
                        .into(),
                );
            }
            if u32::try_from(self.seed).is_err() {
                return invalid(format!(
                    "order = \"megatron\": seed {} must fit in 32 bits (numpy's RandomState)",
                    self.seed
                ));
            }
        }
        Ok(())
    }

    /// Whether any dataset is raw text.
    pub fn has_raw_datasets(&self) -> bool {
        self.datasets.iter().any(|d| d.dataset.is_some())
    }

    /// The rules of raw datasets: each entry names shards or raw text, raw text needs the tokenizer, and
    /// a streaming job has no document count or epoch length before it has read everything.
    fn validate_raw(&self) -> Result<(), SpecError> {
        let invalid = |m: String| Err(SpecError::Invalid(m));
        for d in &self.datasets {
            match (&d.dataset, d.path.is_empty()) {
                (Some(raw), false) => {
                    return invalid(format!(
                        "dataset {raw:?} also gives path {:?}: name prepared shards (path) or raw text (dataset), not both",
                        d.path
                    ));
                }
                (None, true) => {
                    return invalid("a [[datasets]] entry needs path or dataset".into());
                }
                (None, false) => {
                    if d.name.is_some() || d.split.is_some() || d.text_key.is_some() {
                        return invalid(format!(
                            "dataset {:?}: name, split and text_key are for raw text (dataset = ...), not prepared shards",
                            d.path
                        ));
                    }
                }
                (Some(_), true) => {}
            }
        }
        if !self.has_raw_datasets() {
            if self.streaming || self.bos.is_some() || self.append_eod {
                return invalid(
                    "streaming, bos and append_eod are for raw datasets (dataset = ...); this job names none".into(),
                );
            }
            return Ok(());
        }
        if self.tokenizer.is_none() {
            return invalid(
                "raw datasets (dataset = ...) need the job's tokenizer (tokenizer = \"...\": a tokenizer.json, a directory or a hub model id)".into(),
            );
        }
        if let Some(bos) = &self.bos
            && !["tokenizer", "always", "never"].contains(&bos.as_str())
        {
            return invalid(format!("bos {bos:?} is not tokenizer, always or never"));
        }
        if self.streaming {
            if self.order == Order::Megatron {
                return invalid("streaming = true serves flame's order only: Megatron's needs every document's length before the first sample".into());
            }
            if self.epochs.is_some() {
                return invalid("streaming = true: epochs is unknown until a pass is read; give num_samples, or prepare the datasets (streaming = false)".into());
            }
            if self.split.is_some() {
                return invalid("streaming = true: split cuts documents by count, unknown until a pass is read; choose the raw dataset's own split (split in [[datasets]]), or prepare it (streaming = false)".into());
            }
        }
        Ok(())
    }

    /// Which of the three splits this job reads.
    pub fn split_index(&self) -> usize {
        match self.split_name.as_str() {
            "valid" => 1,
            "test" => 2,
            _ => 0,
        }
    }

    /// Names the stream: equal fingerprints serve equal samples for equal indices.
    pub fn fingerprint(&self) -> String {
        let canonical = serde_json::to_vec(self).expect("a spec always serializes");
        hex::encode(&sha2::Sha256::digest(&canonical)[..16])
    }
}

/// Megatron's split string: up to three non-negative numbers, comma or slash separated, normalised.
/// (Checks the string; the ranges are cut by [`crate::megatron::split_matrix`].)
fn parse_split(text: &str) -> Result<[f64; 3], SpecError> {
    let parts: Vec<&str> = text.split([',', '/']).map(str::trim).collect();
    let mut shares = [0.0; 3];
    if parts.len() > 3 {
        return Err(SpecError::Invalid(format!(
            "split {text:?} has more than three parts"
        )));
    }
    for (share, part) in shares.iter_mut().zip(&parts) {
        *share = part
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| {
                SpecError::Invalid(format!(
                    "split {text:?}: {part:?} is not a non-negative number"
                ))
            })?;
    }
    let total: f64 = shares.iter().sum();
    if total <= 0.0 {
        return Err(SpecError::Invalid(format!("split {text:?} sums to zero")));
    }
    Ok(shares.map(|s| s / total))
}

#[cfg(test)]
impl JobSpec {
    /// A job for the unit tests: seed `seed`, `order` over one dataset per weight of `weights` (paths
    /// `mem0`, `mem1`, ...: the tests' openers make them up), windows of 8 tokens, micro- and global
    /// batches of 1, varlen, and `num_samples` (`None`: no end).
    pub(crate) fn for_test(
        seed: u64,
        order: Order,
        weights: &[f64],
        num_samples: Option<u64>,
    ) -> Self {
        Self {
            seed,
            seq_len: 8,
            context_len: None,
            varlen: true,
            micro_batch_size: 1,
            global_batch_size: 1,
            order,
            split: None,
            split_name: "train".into(),
            num_samples,
            epochs: None,
            tokenizer: None,
            bos: None,
            append_eod: false,
            streaming: false,
            datasets: weights
                .iter()
                .enumerate()
                .map(|(i, &weight)| DatasetSpec::prepared(format!("mem{i}"), weight))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        seed = 42
        seq_len = 2048
        context_len = 2048
        varlen = true
        micro_batch_size = 4
        global_batch_size = 32
        order = "flame"
        [[datasets]]
        path = "data/a"
        weight = 0.7
        [[datasets]]
        path = "data/b"
        weight = 0.3
    "#;

    #[test]
    fn the_documented_example_parses_and_round_trips() {
        let spec = JobSpec::from_toml(EXAMPLE).unwrap();
        assert_eq!(spec.datasets.len(), 2);
        assert_eq!(spec.order, Order::Flame);
        assert_eq!(JobSpec::from_toml(&spec.to_toml()).unwrap(), spec);
        assert_eq!(
            spec.fingerprint(),
            JobSpec::from_toml(&spec.to_toml()).unwrap().fingerprint()
        );
        let mut other = spec.clone();
        other.seed = 43;
        assert_ne!(other.fingerprint(), spec.fingerprint());
    }

    #[test]
    fn bad_specs_are_refused_with_the_reason() {
        for (change, reason) in [
            ("seq_len = 2048", "seq_len = 0"),
            ("context_len = 2048", "context_len = 4096"),
            ("global_batch_size = 32", "global_batch_size = 30"),
            ("weight = 0.3", "weight = -1.0"),
            ("order = \"flame\"", "order = \"random\""),
            ("varlen = true", "varlen = true\nsplit = \"1,x\""),
            ("varlen = true", "varlen = true\nsurprise = 1"),
        ] {
            let text = EXAMPLE.replacen(change, reason, 1);
            assert!(JobSpec::from_toml(&text).is_err(), "{reason}");
        }
    }

    const RAW: &str = r#"
        seed = 1
        seq_len = 2048
        micro_batch_size = 1
        global_batch_size = 8
        tokenizer = "mistralai/Mistral-7B-v0.1"
        streaming = true
        [[datasets]]
        dataset = "HuggingFaceFW/fineweb-edu"
        name = "sample-10BT"
        weight = 0.8
        [[datasets]]
        path = "data/code"
        weight = 0.2
    "#;

    #[test]
    fn raw_datasets_parse_and_prepared_jobs_keep_their_fingerprints() {
        let spec = JobSpec::from_toml(RAW).unwrap();
        assert!(spec.has_raw_datasets() && spec.streaming);
        assert_eq!(spec.datasets[0].label(), "HuggingFaceFW/fineweb-edu");
        assert_eq!(JobSpec::from_toml(&spec.to_toml()).unwrap(), spec);
        // A job naming only prepared shards serializes (and so fingerprints) as before raw datasets.
        let prepared = serde_json::to_value(JobSpec::from_toml(EXAMPLE).unwrap()).unwrap();
        let keys: Vec<&str> = prepared
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "context_len",
                "datasets",
                "global_batch_size",
                "micro_batch_size",
                "num_samples",
                "order",
                "seed",
                "seq_len",
                "split",
                "split_name",
                "varlen"
            ]
        );
        assert_eq!(
            prepared["datasets"][0],
            serde_json::json!({"path": "data/a", "weight": 0.7})
        );
    }

    #[test]
    fn raw_datasets_are_refused_where_they_cannot_be_served() {
        for (change, reason, says) in [
            ("name = \"sample-10BT\"", "path = \"data/x\"", "not both"),
            (
                "tokenizer = \"mistralai/Mistral-7B-v0.1\"",
                "",
                "need the job's tokenizer",
            ),
            (
                "streaming = true",
                "streaming = true\norder = \"megatron\"\nnum_samples = 8",
                "flame's order only",
            ),
            (
                "streaming = true",
                "streaming = true\nepochs = 1",
                "epochs is unknown",
            ),
            (
                "streaming = true",
                "streaming = true\nsplit = \"98,1,1\"",
                "split cuts documents",
            ),
            (
                "streaming = true",
                "bos = \"sometimes\"",
                "tokenizer, always or never",
            ),
            (
                "path = \"data/code\"",
                "path = \"data/code\"\ntext_key = \"body\"",
                "for raw text",
            ),
            ("path = \"data/code\"", "", "needs path or dataset"),
        ] {
            let text = RAW.replacen(change, reason, 1);
            let err = JobSpec::from_toml(&text).unwrap_err().to_string();
            assert!(err.contains(says), "{reason}: {err}");
        }
        let err = JobSpec::from_toml(&EXAMPLE.replacen("varlen = true", "streaming = true", 1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("this job names none"), "{err}");
    }

    #[test]
    fn sizes_a_client_controls_are_bounded() {
        // 65536 samples of 2048 tokens: a micro-batch of over 1 GiB, which no client could receive.
        let text = EXAMPLE
            .replacen("micro_batch_size = 4", "micro_batch_size = 65536", 1)
            .replacen("global_batch_size = 32", "global_batch_size = 65536", 1);
        let err = JobSpec::from_toml(&text).unwrap_err().to_string();
        assert!(
            err.contains(
                "a micro-batch of 65536 × 2048 tokens takes up to 1.0 GiB, more than the 1 GiB"
            ),
            "{err}"
        );
        let fits = text
            .replacen("seq_len = 2048", "seq_len = 2000", 1)
            .replacen("context_len = 2048", "", 1);
        JobSpec::from_toml(&fits).unwrap();
        let many = format!(
            "{EXAMPLE}{}",
            "[[datasets]]\npath = \"c\"\n".repeat(MAX_DATASETS)
        );
        let err = JobSpec::from_toml(&many).unwrap_err().to_string();
        assert!(
            err.contains("4098 datasets; a job may name at most 4096"),
            "{err}"
        );
    }

    #[test]
    #[allow(clippy::float_cmp)] // these values are exact in binary after normalising
    fn split_strings_normalise() {
        assert!((parse_split("969,30,1").unwrap()[0] - 0.969).abs() < 1e-12);
        assert_eq!(parse_split("1").unwrap(), [1.0, 0.0, 0.0]);
        assert_eq!(parse_split("50/50").unwrap(), [0.5, 0.5, 0.0]);
        assert!(parse_split("0,0,0").is_err());
        assert!(parse_split("1,2,3,4").is_err());
    }
}

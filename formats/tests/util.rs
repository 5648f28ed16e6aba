//! Shared helpers: building datasets from plain values and reading them back.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use flame_formats::megatron::DatasetSummary;
use flame_formats::{IndexedDataset, IndexedDatasetBuilder, TokenDtype};
use proptest::prelude::*;

/// One sequence: token ids and a mode (used only by multimodal datasets).
pub type Sequence = (Vec<u32>, i8);
/// A document: zero or more sequences.
pub type Doc = Vec<Sequence>;

/// The dtypes flame writes.
pub const WRITABLE: [TokenDtype; 8] = [
    TokenDtype::Uint8,
    TokenDtype::Int8,
    TokenDtype::Int16,
    TokenDtype::Int32,
    TokenDtype::Int64,
    TokenDtype::Float64,
    TokenDtype::Float32,
    TokenDtype::Uint16,
];

pub fn write_docs(
    prefix: &Path,
    dtype: TokenDtype,
    is_multimodal: bool,
    docs: &[Doc],
) -> DatasetSummary {
    let mut builder =
        IndexedDatasetBuilder::create_with_modes(prefix, dtype, is_multimodal).unwrap();
    for doc in docs {
        for (tokens, mode) in doc {
            if is_multimodal {
                builder.add_item_with_mode(tokens, *mode).unwrap();
            } else {
                builder.add_item(tokens).unwrap();
            }
        }
        builder.end_document().unwrap();
    }
    builder.finalize().unwrap()
}

/// Every document as its sequences, each widened to i64.
pub fn read_docs<S: AsRef<[u8]>>(dataset: &IndexedDataset<S>) -> Vec<Vec<Vec<i64>>> {
    (0..dataset.num_documents())
        .map(|d| {
            dataset
                .document_sequences(d)
                .unwrap()
                .map(|i| dataset.sequence(i).unwrap().to_i64_vec())
                .collect()
        })
        .collect()
}

pub fn widen(docs: &[Doc]) -> Vec<Vec<Vec<i64>>> {
    docs.iter()
        .map(|d| {
            d.iter()
                .map(|(t, _)| t.iter().map(|&v| i64::from(v)).collect())
                .collect()
        })
        .collect()
}

fn max_value(dtype: TokenDtype) -> u32 {
    u32::try_from(dtype.max_token_id().min(70_000)).unwrap()
}

pub fn doc_strategy(dtype: TokenDtype) -> impl Strategy<Value = Doc> {
    let sequence = (
        prop::collection::vec(0..=max_value(dtype), 0..12),
        any::<i8>(),
    );
    prop::collection::vec(sequence, 0..4)
}

/// A dtype, whether it is multimodal, and documents whose ids fit the dtype.
pub fn dataset_strategy() -> impl Strategy<Value = (TokenDtype, bool, Vec<Doc>)> {
    (prop::sample::select(WRITABLE.to_vec()), any::<bool>()).prop_flat_map(|(dtype, mm)| {
        (
            Just(dtype),
            Just(mm),
            prop::collection::vec(doc_strategy(dtype), 0..16),
        )
    })
}

/// A small deterministic generator (splitmix64) for tests that need fixed pseudo-random data.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The interop venv's interpreter, created on first use by the project's own script.
pub fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let script = repo_root().join("tools/setup-python.sh");
        let output = Command::new("bash")
            .arg(&script)
            .output()
            .expect("run tools/setup-python.sh");
        assert!(
            output.status.success(),
            "tools/setup-python.sh failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
    })
}

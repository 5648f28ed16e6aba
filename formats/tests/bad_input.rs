//! Corrupt and foreign inputs: a typed error naming the file and the byte offset, never a panic.

use std::path::{Path, PathBuf};

use flame_formats::megatron::{AlignedBytes, IndexKind, IndexLayout};
use flame_formats::{Error, IndexedDataset, TokenDtype};

use crate::util::write_docs;

/// Lengths [4, 3, 0, 6, 2, 2] in documents [0,1,2,3,4,6]: the example of ../shared/notes/megatron.md §1.1.
fn sample(dir: &Path) -> (PathBuf, Vec<u8>, Vec<u8>) {
    let prefix = dir.join("good");
    let seq = |n: u32| (1..=n).collect::<Vec<u32>>();
    let docs = vec![
        vec![(seq(4), 0)],
        vec![(seq(3), 0)],
        vec![(seq(0), 0)],
        vec![(seq(6), 0)],
        vec![(seq(2), 0), (seq(2), 0)],
    ];
    write_docs(&prefix, TokenDtype::Uint16, false, &docs);
    let idx = std::fs::read(dir.join("good.idx")).unwrap();
    let bin = std::fs::read(dir.join("good.bin")).unwrap();
    (prefix, idx, bin)
}

fn open_bytes(dir: &Path, name: &str, idx: &[u8], bin: &[u8]) -> Result<IndexedDataset, Error> {
    let prefix = dir.join(name);
    std::fs::write(dir.join(format!("{name}.idx")), idx).unwrap();
    std::fs::write(dir.join(format!("{name}.bin")), bin).unwrap();
    IndexedDataset::open(prefix)
}

fn assert_names(err: &Error, file: &str, needle: &str) {
    let text = err.to_string();
    assert!(text.contains(file), "error should name {file}: {text}");
    assert!(text.contains(needle), "error should say {needle:?}: {text}");
}

const S: usize = 6;
const LENGTHS: usize = 34;
const POINTERS: usize = 34 + 4 * S;
const DOCS: usize = 34 + 12 * S;

#[test]
fn header_faults_name_the_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (_, idx, bin) = sample(dir.path());
    let mut magic = idx.clone();
    magic[0] = b'X';
    assert_names(
        &open_bytes(dir.path(), "magic", &magic, &bin).unwrap_err(),
        "magic.idx",
        "bad magic at byte 0",
    );
    let mut version = idx.clone();
    version[9] = 2;
    assert_names(
        &open_bytes(dir.path(), "version", &version, &bin).unwrap_err(),
        "version.idx",
        "version 2 at byte 9",
    );
    for code in [0u8, 11, 255] {
        let mut dtype = idx.clone();
        dtype[17] = code;
        assert_names(
            &open_bytes(dir.path(), "dtype", &dtype, &bin).unwrap_err(),
            "dtype.idx",
            &format!("dtype code {code} at byte 17"),
        );
    }
    let mut count = idx.clone();
    count[18] = 7;
    assert!(matches!(
        open_bytes(dir.path(), "count", &count, &bin),
        Err(Error::IndexSizeMismatch {
            num_sequences: 7,
            ..
        })
    ));
    assert_names(
        &open_bytes(dir.path(), "short", &idx[..idx.len() - 3], &bin).unwrap_err(),
        "short.idx",
        "imply",
    );
    assert_names(
        &open_bytes(dir.path(), "tiny", &idx[..20], &bin).unwrap_err(),
        "tiny.idx",
        "truncated at byte 20",
    );
    assert!(matches!(
        open_bytes(dir.path(), "empty", &[], &bin),
        Err(Error::TruncatedHeader { found: 0, .. })
    ));
}

#[test]
fn a_truncated_or_missing_bin_is_caught_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (_, idx, bin) = sample(dir.path());
    let err = open_bytes(dir.path(), "cut", &idx, &bin[..bin.len() - 2]).unwrap_err();
    assert_names(
        &err,
        "cut.bin",
        "index expects 34 token bytes, data file has 32",
    );
    std::fs::write(dir.path().join("lonely.idx"), &idx).unwrap();
    let err = IndexedDataset::open(dir.path().join("lonely")).unwrap_err();
    assert!(matches!(err, Error::MissingBin { .. }), "{err}");
    assert_names(&err, "lonely.bin", "missing");
    let err = IndexedDataset::open(dir.path().join("nothing")).unwrap_err();
    assert_names(&err, "nothing.idx", "open");
}

#[test]
fn pointers_past_the_end_are_refused_on_access() {
    let dir = tempfile::tempdir().unwrap();
    let (_, idx, bin) = sample(dir.path());
    let mut far = idx.clone();
    far[POINTERS + 8..POINTERS + 16].copy_from_slice(&1_000_000i64.to_le_bytes());
    let dataset = open_bytes(dir.path(), "far", &far, &bin).unwrap();
    let err = dataset.sequence(1).unwrap_err();
    assert!(
        matches!(err, Error::SequenceOutOfBounds { sequence: 1, pointer_offset, .. } if pointer_offset == (POINTERS + 8) as u64),
        "{err}"
    );
    assert_names(
        &err,
        "far.bin",
        &format!("pointer at byte {} of the index", POINTERS + 8),
    );
    assert!(dataset.document(1).is_err());
    assert_names(
        &dataset.validate().unwrap_err(),
        "far.idx",
        &format!("byte {}", POINTERS + 8),
    );
    let mut odd = idx.clone();
    odd[POINTERS + 8] = 7;
    let dataset = open_bytes(dir.path(), "odd", &odd, &bin).unwrap();
    assert_names(
        &dataset.sequence(1).unwrap_err(),
        "odd.idx",
        "not a multiple",
    );
    let mut negative = idx.clone();
    negative[POINTERS + 8..POINTERS + 16].copy_from_slice(&(-8i64).to_le_bytes());
    let dataset = open_bytes(dir.path(), "neg", &negative, &bin).unwrap();
    assert_names(
        &dataset.sequence(1).unwrap_err(),
        "neg.idx",
        "negative pointer",
    );
}

#[test]
fn negative_lengths_and_bad_document_indices_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, idx, bin) = sample(dir.path());
    let mut length = idx.clone();
    length[LENGTHS + 4..LENGTHS + 8].copy_from_slice(&(-1i32).to_le_bytes());
    let dataset = open_bytes(dir.path(), "len", &length, &bin).unwrap();
    assert_names(
        &dataset.sequence(1).unwrap_err(),
        "len.idx",
        &format!("byte {}: negative length -1", LENGTHS + 4),
    );
    let mut first = idx.clone();
    first[DOCS] = 1;
    assert_names(
        &open_bytes(dir.path(), "first", &first, &bin).unwrap_err(),
        "first.idx",
        &format!("byte {DOCS}: document index starts at 1"),
    );
    let mut last = idx.clone();
    last[DOCS + 40] = 5;
    assert_names(
        &open_bytes(dir.path(), "last", &last, &bin).unwrap_err(),
        "last.idx",
        "ends at 5, but there are 6 sequences",
    );
    let mut backwards = idx.clone();
    backwards[DOCS + 16] = 0;
    let dataset = open_bytes(dir.path(), "back", &backwards, &bin).unwrap();
    assert_names(
        &dataset.validate().unwrap_err(),
        "back.idx",
        &format!("byte {}", DOCS + 16),
    );
    assert!(dataset.document(1).is_err());
    let mut wild = idx.clone();
    wild[DOCS + 16..DOCS + 24].copy_from_slice(&i64::MAX.to_le_bytes());
    let dataset = open_bytes(dir.path(), "wild", &wild, &bin).unwrap();
    assert_names(&dataset.document(1).unwrap_err(), "wild.idx", "outside");
}

#[test]
fn trailing_bytes_in_bin_fail_validation_only() {
    let dir = tempfile::tempdir().unwrap();
    let (_, idx, mut bin) = sample(dir.path());
    bin.extend_from_slice(&[0, 0]);
    let dataset = open_bytes(dir.path(), "extra", &idx, &bin).unwrap();
    assert_eq!(dataset.sequence_as::<u16>(5).unwrap(), &[1, 2]);
    assert_names(
        &dataset.validate().unwrap_err(),
        "extra.bin",
        "index expects 34 token bytes, data file has 36",
    );
}

#[test]
fn fairseq_indexes_are_read_with_one_document_per_sequence() {
    // fairseq's MMapIndexedDataset: magic, version, code, count, then sizes and pointers; no document index.
    let dir = tempfile::tempdir().unwrap();
    let mut idx = IndexLayout::encode_header(TokenDtype::Uint32, 2, 0)[..26].to_vec();
    for len in [2i32, 1] {
        idx.extend_from_slice(&len.to_le_bytes());
    }
    for pointer in [0i64, 8] {
        idx.extend_from_slice(&pointer.to_le_bytes());
    }
    let bin: Vec<u8> = [7u32, 8, 4_000_000_000]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let dataset = open_bytes(dir.path(), "fairseq", &idx, &bin).unwrap();
    assert_eq!(dataset.kind(), IndexKind::Fairseq);
    assert_eq!(dataset.dtype(), TokenDtype::Uint32);
    assert_eq!(dataset.num_documents(), 2);
    assert_eq!(dataset.document_indices().collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(
        dataset.document(1).unwrap().as_slice::<u32>().unwrap(),
        &[4_000_000_000]
    );
    dataset.validate().unwrap();
}

/// Every single-byte change and every truncation of a valid index: errors are fine, panics are not.
/// (The `cargo fuzz` target in formats/fuzz explores further; this runs in every test run.)
#[test]
fn no_mutation_of_a_valid_index_panics() {
    let dir = tempfile::tempdir().unwrap();
    let (_, idx, bin) = sample(dir.path());
    let bin = AlignedBytes::new(&bin);
    let exercise = |idx: &[u8]| {
        let Ok(dataset) = IndexedDataset::from_bytes(AlignedBytes::new(idx), bin.clone(), "m")
        else {
            return;
        };
        let _ = dataset.validate();
        for i in 0..=dataset.num_sequences() {
            let _ = dataset.sequence(i);
            let _ = dataset.sequence_mode(i);
        }
        for d in 0..=dataset.num_documents() {
            let _ = dataset.document(d);
        }
        let _ = dataset.num_tokens();
        let _ = dataset.document_indices().count();
    };
    for at in 0..idx.len() {
        for value in [0u8, 1, 0x7f, 0x80, 0xff, idx[at] ^ 1] {
            let mut mutated = idx.clone();
            mutated[at] = value;
            exercise(&mutated);
        }
    }
    for len in 0..idx.len() {
        exercise(&idx[..len]);
    }
}

//! Write → read round trips, merging, and the builder's contract.

use flame_formats::megatron::{IndexKind, merge};
use flame_formats::prefix::discover_prefixes;
use flame_formats::{Error, IndexedDataset, IndexedDatasetBuilder, TokenDtype, sha256_file};
use proptest::prelude::*;

use crate::util::{Doc, dataset_strategy, read_docs, widen, write_docs};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn written_datasets_read_back_identically((dtype, is_multimodal, docs) in dataset_strategy()) {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("data");
        let summary = write_docs(&prefix, dtype, is_multimodal, &docs);
        let dataset = IndexedDataset::open(&prefix).unwrap();
        dataset.validate().unwrap();
        prop_assert_eq!(dataset.dtype(), dtype);
        let has_modes = is_multimodal && dataset.num_sequences() > 0; // with no sequences the variants coincide
        prop_assert_eq!(dataset.kind(), if has_modes { IndexKind::Multimodal } else { IndexKind::Megatron });
        prop_assert_eq!(read_docs(&dataset), widen(&docs));
        let num_tokens: usize = docs.iter().flatten().map(|(t, _)| t.len()).sum();
        prop_assert_eq!(dataset.num_tokens(), num_tokens as u64);
        prop_assert_eq!(summary.num_tokens, num_tokens as u64);
        prop_assert_eq!(dataset.num_documents(), docs.len() as u64);
        let modes: Vec<Option<i8>> = (0..dataset.num_sequences()).map(|i| dataset.sequence_mode(i).unwrap()).collect();
        let expected: Vec<Option<i8>> = docs.iter().flatten().map(|(_, m)| is_multimodal.then_some(*m)).collect();
        prop_assert_eq!(modes, expected);
        for (d, doc) in docs.iter().enumerate() {
            let flat: Vec<i64> = doc.iter().flat_map(|(t, _)| t.iter().map(|&v| i64::from(v))).collect();
            prop_assert_eq!(dataset.document(d as u64).unwrap().to_i64_vec(), flat);
        }
        prop_assert_eq!(sha256_file(&dir.path().join("data.bin")).unwrap(), (summary.bin.bytes, summary.bin.sha256.clone()));
        prop_assert_eq!(sha256_file(&dir.path().join("data.idx")).unwrap(), (summary.idx.bytes, summary.idx.sha256.clone()));
    }

    #[test]
    fn merging_equals_writing_everything_at_once(
        (dtype, is_multimodal, docs) in dataset_strategy(),
        cuts in prop::collection::vec(0usize..16, 0..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        write_docs(&dir.path().join("whole"), dtype, is_multimodal, &docs);
        let mut bounds: Vec<usize> = cuts.into_iter().map(|c| c.min(docs.len())).collect();
        bounds.push(0);
        bounds.push(docs.len());
        bounds.sort_unstable();
        let parts: Vec<_> = bounds.windows(2).enumerate().map(|(k, w)| {
            let prefix = dir.path().join(format!("part_{k}"));
            write_docs(&prefix, dtype, is_multimodal, &docs[w[0]..w[1]]);
            prefix
        }).collect();
        merge(dir.path().join("merged"), &parts).unwrap();
        for ext in ["bin", "idx"] {
            let whole = std::fs::read(dir.path().join(format!("whole.{ext}"))).unwrap();
            let merged = std::fs::read(dir.path().join(format!("merged.{ext}"))).unwrap();
            prop_assert!(whole == merged, "merged .{} differs from a single write", ext);
        }
    }

    #[test]
    fn add_document_equals_items_then_end_document(tokens in prop::collection::vec(0u32..60_000, 0..40), cut in 0usize..40) {
        let cut = cut.min(tokens.len());
        let dir = tempfile::tempdir().unwrap();
        let mut a = IndexedDatasetBuilder::create(dir.path().join("a"), TokenDtype::Uint16).unwrap();
        a.add_document(&tokens, &[cut as u32, (tokens.len() - cut) as u32]).unwrap();
        a.finalize().unwrap();
        let docs: Vec<Doc> = vec![vec![(tokens[..cut].to_vec(), 0), (tokens[cut..].to_vec(), 0)]];
        write_docs(&dir.path().join("b"), TokenDtype::Uint16, false, &docs);
        for ext in ["bin", "idx"] {
            prop_assert_eq!(std::fs::read(dir.path().join(format!("a.{ext}"))).unwrap(), std::fs::read(dir.path().join(format!("b.{ext}"))).unwrap());
        }
    }
}

#[test]
fn merge_of_a_directory_takes_numeric_order() {
    let dir = tempfile::tempdir().unwrap();
    for k in [10u32, 2, 1] {
        write_docs(
            &dir.path().join(format!("x_{k}")),
            TokenDtype::Uint16,
            false,
            &[vec![(vec![k], 0)]],
        );
    }
    let prefixes = discover_prefixes(dir.path()).unwrap();
    let out = tempfile::tempdir().unwrap();
    merge(out.path().join("all"), &prefixes).unwrap();
    let merged = IndexedDataset::open(out.path().join("all")).unwrap();
    assert_eq!(
        read_docs(&merged),
        vec![vec![vec![1]], vec![vec![2]], vec![vec![10]]]
    );
}

#[test]
fn empty_dataset_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let summary = write_docs(&dir.path().join("empty"), TokenDtype::Int32, false, &[]);
    assert_eq!(
        (
            summary.num_sequences,
            summary.num_documents,
            summary.bin.bytes,
            summary.idx.bytes
        ),
        (0, 0, 0, 42)
    );
    let dataset = IndexedDataset::open(dir.path().join("empty.idx")).unwrap();
    dataset.validate().unwrap();
    assert_eq!(dataset.num_tokens(), 0);
    assert!(matches!(dataset.sequence(0), Err(Error::OutOfRange { .. })));
}

#[test]
fn floats_and_raw_items_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("f");
    let mut builder = IndexedDatasetBuilder::create(&prefix, TokenDtype::Float64).unwrap();
    builder.add_raw_item(&[0.5f64, -2.25, 1e300]).unwrap();
    assert!(matches!(
        builder.add_raw_item(&[1u16]),
        Err(Error::DtypeMismatch { .. })
    ));
    builder.end_document().unwrap();
    builder.finalize().unwrap();
    let dataset = IndexedDataset::open(&prefix).unwrap();
    assert_eq!(dataset.sequence_as::<f64>(0).unwrap(), &[0.5, -2.25, 1e300]);
    assert!(matches!(
        dataset.sequence_as::<u16>(0),
        Err(Error::DtypeMismatch { .. })
    ));
}

#[test]
fn builder_refuses_what_megatron_could_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut builder =
        IndexedDatasetBuilder::create(dir.path().join("t"), TokenDtype::Uint16).unwrap();
    let err = builder.add_item(&[1, 65_536]).unwrap_err();
    assert!(
        err.to_string().contains("65536 does not fit uint16"),
        "{err}"
    );
    assert!(matches!(
        builder.add_item_with_mode(&[1], 3),
        Err(Error::Usage { .. })
    ));
    builder.add_item(&[1, 2]).unwrap();
    let err = builder.finalize().unwrap_err();
    assert!(
        err.to_string().contains("after the last end_document"),
        "{err}"
    );
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "a failed finalize leaves no files"
    );
    assert!(matches!(
        IndexedDatasetBuilder::create(dir.path().join("u"), TokenDtype::Uint32),
        Err(Error::UnwritableDtype { code: 9, .. })
    ));
}

#[test]
fn an_abandoned_builder_leaves_nothing_under_a_final_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut builder =
        IndexedDatasetBuilder::create(dir.path().join("t"), TokenDtype::Uint16).unwrap();
    builder.add_item(&[1, 2, 3]).unwrap();
    assert!(!dir.path().join("t.bin").exists() && !dir.path().join("t.idx").exists());
    drop(builder);
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

#[test]
fn merge_refuses_mismatched_dtypes_and_modes() {
    let dir = tempfile::tempdir().unwrap();
    write_docs(
        &dir.path().join("a"),
        TokenDtype::Uint16,
        false,
        &[vec![(vec![1], 0)]],
    );
    write_docs(
        &dir.path().join("b"),
        TokenDtype::Int32,
        false,
        &[vec![(vec![1], 0)]],
    );
    write_docs(
        &dir.path().join("c"),
        TokenDtype::Uint16,
        true,
        &[vec![(vec![1], 0)]],
    );
    let err = merge(
        dir.path().join("ab"),
        &[dir.path().join("a"), dir.path().join("b")],
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("it holds int32, the output holds uint16"),
        "{err}"
    );
    assert!(matches!(
        merge(
            dir.path().join("ac"),
            &[dir.path().join("a"), dir.path().join("c")]
        ),
        Err(Error::Incompatible { .. })
    ));
    assert!(!dir.path().join("ab.idx").exists() && !dir.path().join("ac.idx").exists());
}

//! Packed windows: exactly `seq_len` tokens each, no token lost or repeated, `cu_seqlens` at document starts.

use flame_formats::packed::cu_seqlens_prefix;
use flame_formats::{Error, IndexedDataset, PackedDataset, PackedWriter, TailPolicy, TokenDtype};
use proptest::prelude::*;

fn docs_strategy() -> impl Strategy<Value = Vec<Vec<u32>>> {
    prop::collection::vec(prop::collection::vec(0u32..32_000, 0..40), 0..30)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn windows_hold_every_token_once_with_boundaries_at_document_starts(
        docs in docs_strategy(),
        seq_len in 1u32..24,
        pad in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("packed");
        let mut writer = PackedWriter::create(&prefix, TokenDtype::Uint16, seq_len).unwrap();
        for doc in &docs {
            writer.add_document(doc).unwrap();
        }
        let tail = if pad { TailPolicy::Pad { pad_id: 0 } } else { TailPolicy::Drop };
        let summary = writer.finish(tail).unwrap();

        let stream: Vec<u32> = docs.iter().flatten().copied().collect();
        let mut starts = Vec::new();
        let mut at = 0usize;
        for doc in docs.iter().filter(|d| !d.is_empty()) {
            starts.push(at);
            at += doc.len();
        }
        let seq_len = seq_len as usize;
        let num_full = stream.len() / seq_len;
        let remainder = stream.len() % seq_len;
        let num_windows = num_full + usize::from(pad && remainder > 0);
        prop_assert_eq!(summary.num_windows, num_windows as u64);
        prop_assert_eq!(summary.num_documents, docs.len() as u64);
        prop_assert_eq!(summary.num_dropped_tokens, if pad { 0 } else { remainder as u64 });
        prop_assert_eq!(summary.num_pad_tokens, if pad && remainder > 0 { (seq_len - remainder) as u64 } else { 0 });
        prop_assert_eq!(summary.num_document_tokens + summary.num_dropped_tokens, stream.len() as u64);

        let packed = PackedDataset::open(&prefix).unwrap();
        packed.validate().unwrap();
        prop_assert_eq!(packed.num_windows(), num_windows as u64);
        let mut seen = Vec::new();
        for w in 0..packed.num_windows() {
            let window = packed.window(w).unwrap();
            prop_assert_eq!(window.tokens.len(), seq_len);
            let base = w as usize * seq_len;
            let mut expected = vec![0i32];
            expected.extend(starts.iter().filter(|&&s| s > base && s < base + seq_len).map(|&s| (s - base) as i32));
            if base + seq_len > stream.len() {
                expected.push((stream.len() - base) as i32); // the padding's own segment
            }
            expected.push(seq_len as i32);
            prop_assert_eq!(window.cu_seqlens, expected.as_slice());
            seen.extend(window.tokens.as_slice::<u16>().unwrap().iter().map(|&t| u32::from(t)));
        }
        let kept = if pad { stream.len() } else { num_full * seq_len };
        prop_assert_eq!(&seen[..kept], &stream[..kept]);
        prop_assert!(seen[kept..].iter().all(|&t| t == 0));
    }
}

#[test]
fn packed_files_are_plain_megatron_datasets() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("p");
    let mut writer = PackedWriter::create(&prefix, TokenDtype::Int32, 4).unwrap();
    writer.add_document(&[1, 10, 11]).unwrap();
    writer.add_document(&[]).unwrap();
    writer.add_document(&[1, 20, 21, 22, 23, 24]).unwrap();
    let summary = writer.finish(TailPolicy::Drop).unwrap();
    assert_eq!((summary.num_windows, summary.num_dropped_tokens), (2, 1));
    let tokens = IndexedDataset::open(&prefix).unwrap();
    assert_eq!(tokens.sequence_as::<i32>(0).unwrap(), &[1, 10, 11, 1]);
    assert_eq!(tokens.sequence_as::<i32>(1).unwrap(), &[20, 21, 22, 23]);
    let cu = IndexedDataset::open(cu_seqlens_prefix(&prefix)).unwrap();
    assert_eq!(cu.sequence_as::<i32>(0).unwrap(), &[0, 3, 4]);
    assert_eq!(cu.sequence_as::<i32>(1).unwrap(), &[0, 4]);
    assert_eq!(cu.num_documents(), 2);
}

#[test]
fn a_window_of_the_wrong_length_or_bad_offsets_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("p");
    let mut writer = PackedWriter::create(&prefix, TokenDtype::Uint16, 4).unwrap();
    writer.add_document(&[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
    writer.finish(TailPolicy::Drop).unwrap();
    // Rewrite the offsets of window 1 from [0, 4] to [0, 5].
    let cu_bin = flame_formats::prefix::bin_path(&cu_seqlens_prefix(&prefix));
    let mut bytes = std::fs::read(&cu_bin).unwrap();
    bytes[12..16].copy_from_slice(&5i32.to_le_bytes());
    std::fs::write(&cu_bin, bytes).unwrap();
    let packed = PackedDataset::open(&prefix).unwrap();
    packed.window(0).unwrap();
    let err = packed.window(1).unwrap_err();
    assert!(
        matches!(err, Error::CorruptWindow { window: 1, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("must rise strictly from 0 to 4"),
        "{err}"
    );
    assert!(PackedWriter::create(dir.path().join("z"), TokenDtype::Uint16, 0).is_err());
}

#[test]
fn rotating_shards_carries_the_partial_window_over() {
    let dir = tempfile::tempdir().unwrap();
    let docs: Vec<Vec<u32>> = (0..20u32)
        .map(|d| (0..=(d % 7)).map(|t| d * 10 + t).collect())
        .collect();
    let mut whole = PackedWriter::create(dir.path().join("whole"), TokenDtype::Uint16, 5).unwrap();
    let mut split = PackedWriter::create(dir.path().join("part_0"), TokenDtype::Uint16, 5).unwrap();
    let mut parts = 1;
    for (i, doc) in docs.iter().enumerate() {
        whole.add_document(doc).unwrap();
        split.add_document(doc).unwrap();
        if i % 6 == 5 {
            split
                .rotate(dir.path().join(format!("part_{parts}")))
                .unwrap();
            parts += 1;
        }
    }
    whole.finish(TailPolicy::Drop).unwrap();
    split.finish(TailPolicy::Drop).unwrap();
    let whole = PackedDataset::open(dir.path().join("whole")).unwrap();
    let mut windows = Vec::new();
    for k in 0..parts {
        let part = PackedDataset::open(dir.path().join(format!("part_{k}"))).unwrap();
        part.validate().unwrap();
        for w in 0..part.num_windows() {
            let window = part.window(w).unwrap();
            windows.push((window.tokens.to_i64_vec(), window.cu_seqlens.to_vec()));
        }
    }
    let expected: Vec<_> = (0..whole.num_windows())
        .map(|w| {
            let window = whole.window(w).unwrap();
            (window.tokens.to_i64_vec(), window.cu_seqlens.to_vec())
        })
        .collect();
    assert_eq!(windows, expected);
}

#[test]
fn a_resumed_writer_continues_the_same_windows() {
    let dir = tempfile::tempdir().unwrap();
    let docs: Vec<Vec<u32>> = (0..30u32)
        .map(|d| (0..=(d % 9)).map(|t| d * 10 + t).collect())
        .collect();
    let mut whole = PackedWriter::create(dir.path().join("whole"), TokenDtype::Uint16, 7).unwrap();
    for doc in &docs {
        whole.add_document(doc).unwrap();
    }
    let whole = whole.finish(TailPolicy::Pad { pad_id: 0 }).unwrap();
    for cut in [0, 1, 13, 29] {
        let mut first =
            PackedWriter::create(dir.path().join(format!("a{cut}")), TokenDtype::Uint16, 7)
                .unwrap();
        for doc in &docs[..cut] {
            first.add_document(doc).unwrap();
        }
        let (window, offsets) = first.carry();
        let (window, offsets) = (window.to_vec(), offsets.to_vec());
        let counts = first.num_documents();
        let first = first.finish(TailPolicy::Drop).unwrap();
        let mut second = PackedWriter::resume(
            dir.path().join(format!("b{cut}")),
            TokenDtype::Uint16,
            7,
            (&window, &offsets),
            counts,
        )
        .unwrap();
        for doc in &docs[cut..] {
            second.add_document(doc).unwrap();
        }
        let second = second.finish(TailPolicy::Pad { pad_id: 0 }).unwrap();
        assert_eq!(
            first.num_windows + second.num_windows,
            whole.num_windows,
            "cut {cut}"
        );
        assert_eq!(second.num_documents, whole.num_documents);
        let read = |name: &str| {
            let p = PackedDataset::open(dir.path().join(name)).unwrap();
            (0..p.num_windows())
                .map(|w| {
                    (
                        p.window(w).unwrap().tokens.to_i64_vec(),
                        p.window(w).unwrap().cu_seqlens.to_vec(),
                    )
                })
                .collect::<Vec<_>>()
        };
        let mut joined = read(&format!("a{cut}"));
        joined.extend(read(&format!("b{cut}")));
        assert_eq!(joined, read("whole"), "cut {cut}");
    }
    assert!(
        PackedWriter::resume(
            dir.path().join("bad"),
            TokenDtype::Uint16,
            7,
            (&[1, 2], &[1]),
            (0, 0)
        )
        .is_err()
    );
}

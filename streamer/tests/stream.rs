//! The stream's invariants: packing never drops, duplicates or reorders a token inside an epoch, windows
//! are exactly `seq_len` with valid `cu_seqlens`, samples are a pure function of (spec, index), ranks'
//! slices form the same global batches for every world size, and mixture shares hold per global batch.

use std::collections::HashSet;

use flame_formats::TokenDtype;
use flame_formats::megatron::IndexedDatasetBuilder;
use flame_streamer::source::Documents;
use flame_streamer::spec::{DatasetSpec, JobSpec, Order};
use flame_streamer::stream::Stream;
use proptest::prelude::*;

fn spec(seq_len: u32, context_len: u32, weights: &[f64], global_batch: u32) -> JobSpec {
    JobSpec {
        seed: 42,
        seq_len,
        context_len: Some(context_len),
        varlen: true,
        micro_batch_size: 1,
        global_batch_size: global_batch,
        order: Order::Flame,
        split: None,
        split_name: "train".into(),
        num_samples: None,
        epochs: None,
        tokenizer: None,
        bos: None,
        append_eod: false,
        streaming: false,
        datasets: weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| DatasetSpec::prepared(format!("mem/{i}"), weight))
            .collect(),
    }
}

/// Documents whose tokens are unique across all datasets: dataset `d`'s token `t` is `d << 24 | t`.
fn documents(dataset: u32, lengths: &[u32]) -> Box<dyn Documents> {
    let mut next = dataset << 24;
    let docs: Vec<Vec<u32>> = lengths
        .iter()
        .map(|&len| {
            let doc = (next..next + len).collect();
            next += len;
            doc
        })
        .collect();
    Box::new(docs)
}

fn check_window(sample: &flame_streamer::stream::Sample, seq_len: u32, context_len: u32) {
    assert_eq!(
        sample.tokens.len(),
        seq_len as usize,
        "sample {}",
        sample.index
    );
    let cu = &sample.cu_seqlens;
    assert_eq!((cu[0], *cu.last().unwrap()), (0, seq_len));
    assert!(
        cu.windows(2)
            .all(|w| w[0] < w[1] && w[1] - w[0] <= context_len),
        "{cu:?}"
    );
    // A boundary sits wherever consecutive tokens are not consecutive ids (a new document starts).
    for (i, pair) in sample.tokens.windows(2).enumerate() {
        if pair[1] != pair[0] + 1 {
            assert!(
                cu.contains(&(i as u32 + 1)),
                "no boundary at {} in {cu:?}",
                i + 1
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn an_epoch_serves_every_token_once_but_a_short_tail(
        lengths in prop::collection::vec(0u32..300, 1..2500),
        seq_len in 8u32..200,
        context_divisor in 1u32..4,
    ) {
        let total: u64 = lengths.iter().map(|&l| u64::from(l)).sum();
        prop_assume!(total >= u64::from(seq_len));
        let context_len = (seq_len / context_divisor).max(1);
        // One dataset and batches of one window: sample k is window k of the dataset's stream.
        let stream = Stream::from_documents(spec(seq_len, context_len, &[1.0], 1), vec![documents(0, &lengths)]).unwrap();
        let windows = stream.windows_per_epoch()[0];
        prop_assert_eq!(windows, total / u64::from(seq_len));
        let mut seen = HashSet::new();
        for k in 0..windows {
            let sample = stream.sample(k).unwrap();
            check_window(&sample, seq_len, context_len);
            for t in sample.tokens {
                prop_assert!(seen.insert(t), "token {} served twice in epoch 0", t);
            }
        }
        prop_assert!(total - (seen.len() as u64) < u64::from(seq_len));
        // The next epoch serves the same tokens again, in another order.
        let next: HashSet<u32> = (windows..2 * windows).flat_map(|k| stream.sample(k).unwrap().tokens).collect();
        prop_assert_eq!(next.len() as u64, windows * u64::from(seq_len));
    }
}

#[test]
fn samples_are_a_pure_function_of_spec_and_index() {
    let lengths: Vec<u32> = (0..5000).map(|i| (i * 7919) % 900 + 1).collect();
    let make = || {
        Stream::from_documents(
            spec(256, 128, &[0.6, 0.4], 16),
            vec![documents(0, &lengths), documents(1, &lengths[..2000])],
        )
        .unwrap()
    };
    let (a, b) = (make(), make());
    let forward: Vec<_> = (0..400).map(|k| a.sample(k).unwrap()).collect();
    // Resume anywhere, in any order, on a fresh stream: the same samples.
    for k in (0..400).rev().step_by(7) {
        assert_eq!(b.sample(k).unwrap(), forward[k as usize]);
    }
    assert_eq!(make().sample(100_000).unwrap(), a.sample(100_000).unwrap());
    let mut other = spec(256, 128, &[0.6, 0.4], 16);
    other.seed = 7;
    let c = Stream::from_documents(
        other,
        vec![documents(0, &lengths), documents(1, &lengths[..2000])],
    )
    .unwrap();
    assert_ne!(c.sample(0).unwrap().tokens, forward[0].tokens);
}

#[test]
fn ranks_read_the_same_global_batches_for_every_world_size() {
    let lengths: Vec<u32> = (0..3000).map(|i| (i * 104_729) % 700 + 1).collect();
    let mut job = spec(128, 128, &[1.0, 2.0], 32);
    job.micro_batch_size = 2;
    let stream =
        Stream::from_documents(job, vec![documents(0, &lengths), documents(1, &lengths)]).unwrap();
    for step in [0u64, 1, 57] {
        let mut batches = Vec::new();
        for world in [1u32, 2, 4, 8] {
            let micro_steps = 32 / (2 * u64::from(world));
            let mut indices = Vec::new();
            for micro in 0..micro_steps {
                for rank in 0..world {
                    indices.extend(
                        stream
                            .micro_batch_indices(step, micro, rank, world)
                            .unwrap(),
                    );
                }
            }
            indices.sort_unstable();
            batches.push(indices);
        }
        let expected: Vec<u64> = (step * 32..(step + 1) * 32).collect();
        assert!(
            batches.iter().all(|b| *b == expected),
            "step {step}: {batches:?}"
        );
    }
    assert!(
        stream.micro_batch_indices(0, 0, 0, 3).is_err(),
        "32 is not a multiple of 2 × 3"
    );
    assert!(stream.micro_batch_indices(0, 0, 4, 4).is_err());
    assert!(stream.micro_batch_indices(0, 8, 0, 2).is_err());
}

#[test]
fn every_global_batch_holds_each_dataset_within_one_window_of_its_weight() {
    let weights = [0.55, 0.3, 0.15];
    let lengths: Vec<u32> = (0..4000).map(|i| (i * 31) % 500 + 1).collect();
    // Dataset 1 has long documents, dataset 2 short ones: per-document mixing would skew toward 1.
    let long: Vec<u32> = lengths.iter().map(|l| l * 4).collect();
    let short: Vec<u32> = lengths.iter().map(|l| l / 4 + 1).collect();
    let stream = Stream::from_documents(
        spec(64, 64, &weights, 20),
        vec![
            documents(0, &lengths),
            documents(1, &long),
            documents(2, &short),
        ],
    )
    .unwrap();
    for batch in 0..200u64 {
        let mut counts = [0u32; 3];
        for k in batch * 20..(batch + 1) * 20 {
            let sample = stream.sample(k).unwrap();
            assert_eq!(
                sample.tokens[0] >> 24,
                sample.dataset as u32,
                "tokens come from the dataset drawn"
            );
            counts[sample.dataset] += 1;
        }
        for (d, &c) in counts.iter().enumerate() {
            let target = weights[d] * 20.0;
            assert!(
                (f64::from(c) - target).abs() < 1.0,
                "batch {batch}: dataset {d} has {c} windows, target {target}"
            );
        }
    }
}

#[test]
fn datasets_too_small_for_one_window_are_refused_at_creation() {
    let err = Stream::from_documents(
        spec(100, 100, &[1.0, 1.0], 4),
        vec![documents(0, &[500]), documents(1, &[30, 40])],
    )
    .unwrap_err();
    assert!(err.to_string().contains("fewer than one window"), "{err}");
    let err =
        Stream::from_documents(spec(100, 100, &[1.0], 4), vec![documents(0, &[])]).unwrap_err();
    assert!(err.to_string().contains("0 documents"), "{err}");
}

#[test]
fn a_megatron_prefix_on_disk_is_served_with_its_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("corpus");
    let mut builder = IndexedDatasetBuilder::create(&prefix, TokenDtype::Uint16).unwrap();
    let mut expected = Vec::new();
    for d in 0..300u32 {
        let doc: Vec<u32> = (0..=(d % 50)).map(|t| (d * 100 + t) % 60_000).collect();
        builder.add_item(&doc).unwrap();
        builder.end_document().unwrap();
        expected.push(doc);
    }
    builder.finalize().unwrap();
    let mut job = spec(32, 32, &[1.0], 4);
    job.datasets[0].path = prefix.to_string_lossy().into_owned();
    job.split = Some("90,10,0".into());
    let stream = Stream::open(job.clone()).unwrap();
    let in_memory =
        Stream::from_documents(job.clone(), vec![Box::new(expected[..270].to_vec())]).unwrap();
    for k in 0..50 {
        assert_eq!(stream.sample(k).unwrap(), in_memory.sample(k).unwrap());
    }
    job.split_name = "test".into();
    assert!(
        Stream::open(job)
            .unwrap_err()
            .to_string()
            .contains("test split")
    );
}

#[test]
fn pre_packed_windows_are_served_whole_with_their_stored_boundaries() {
    use flame_formats::packed::{PackedDataset, PackedWriter, TailPolicy};
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("packed");
    let mut writer = PackedWriter::create(&prefix, TokenDtype::Uint16, 64).unwrap();
    for d in 0..400u32 {
        let doc: Vec<u32> = (0..=(d * 37) % 150)
            .map(|t| (d * 151 + t) % 60_000)
            .collect();
        writer.add_document(&doc).unwrap();
    }
    writer.finish(TailPolicy::Drop).unwrap();
    let packed = PackedDataset::open(&prefix).unwrap();
    let windows: std::collections::HashMap<Vec<u32>, Vec<u32>> = (0..packed.num_windows())
        .map(|i| {
            let w = packed.window(i).unwrap();
            let tokens = w
                .tokens
                .to_i64_vec()
                .iter()
                .map(|&t| u32::try_from(t).unwrap())
                .collect();
            (
                tokens,
                w.cu_seqlens
                    .iter()
                    .map(|&c| u32::try_from(c).unwrap())
                    .collect(),
            )
        })
        .collect();
    let mut job = spec(64, 64, &[1.0], 4);
    job.datasets[0].path = prefix.to_string_lossy().into_owned();
    let stream = Stream::open(job.clone()).unwrap();
    assert_eq!(stream.windows_per_epoch(), [packed.num_windows()]);
    let mut seen = HashSet::new();
    // The batches wholly inside epoch 0 (the one across its end mixes in a window of epoch 1).
    let in_epoch = packed.num_windows() - packed.num_windows() % 4;
    for k in 0..in_epoch {
        let sample = stream.sample(k).unwrap();
        let stored = windows.get(&sample.tokens).expect("a stored window, whole");
        assert_eq!(&sample.cu_seqlens, stored, "sample {k}");
        assert!(seen.insert(sample.tokens), "sample {k} repeats a window");
    }
    // context_len cuts the stored sequences further, as it does packed documents.
    job.context_len = Some(16);
    let sample = Stream::open(job.clone()).unwrap().sample(0).unwrap();
    let stored = &windows[&sample.tokens];
    assert!(stored.iter().all(|c| sample.cu_seqlens.contains(c)));
    assert!(sample.cu_seqlens.windows(2).all(|w| w[1] - w[0] <= 16));
    // Windows of another length are not re-cut silently.
    job.seq_len = 32;
    job.context_len = None;
    let err = Stream::open(job).unwrap_err().to_string();
    assert!(err.contains("packed into windows of 64"), "{err}");
}

#[test]
fn a_job_of_epochs_ends_after_that_many_passes_over_the_tokens() {
    let lengths = [[100u32; 40], [30u32; 40]];
    let mut job = spec(50, 50, &[0.5, 0.5], 4);
    job.epochs = Some(2);
    let stream = Stream::from_documents(
        job.clone(),
        vec![documents(0, &lengths[0]), documents(1, &lengths[1])],
    )
    .unwrap();
    // 80 + 24 windows per epoch, twice.
    assert_eq!(stream.num_samples(), Some(208));
    assert!(stream.sample(207).is_ok());
    assert!(
        stream
            .sample(208)
            .unwrap_err()
            .to_string()
            .contains("past the job's 208")
    );
    job.num_samples = Some(10);
    assert!(
        Stream::from_documents(
            job,
            vec![documents(0, &lengths[0]), documents(1, &lengths[1])]
        )
        .is_err()
    );
}

/// Writes `documents` (each a list of sequences) as one Megatron shard at `prefix`.
fn write_shard(prefix: &std::path::Path, documents: &[Vec<Vec<u32>>]) {
    let mut builder = IndexedDatasetBuilder::create(prefix, TokenDtype::Uint16).unwrap();
    for sequences in documents {
        for sequence in sequences {
            builder.add_item(sequence).unwrap();
        }
        builder.end_document().unwrap();
    }
    builder.finalize().unwrap();
}

/// Issue 16: flame-prep writes empty texts as empty documents. Shards with zero-length sequences,
/// documents without sequences, and a shard of nothing else, are served in both orders with every
/// token once per epoch (but the tail each order drops) and `cu_seqlens` without zero-length entries:
/// an empty document adds no tokens and no boundary. (Megatron's order over zero-length sequences is
/// megatron-core's too: `tests/megatron.rs` writes some.)
#[test]
fn empty_documents_are_served_in_both_orders_without_losing_or_repeating_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir(&corpus).unwrap();
    let mut next = 1u32;
    let mut take = |n: u32| {
        let tokens: Vec<u32> = (next..next + n).collect();
        next += n;
        tokens
    };
    let mut shard = |k: u32| -> Vec<Vec<Vec<u32>>> {
        (0..200u32)
            .map(|d| match (d + k) % 6 {
                0 => vec![],                                  // a document without sequences
                1 => vec![vec![]],                            // a zero-length sequence
                2 => vec![take(d % 23 + 1), vec![], take(5)], // an empty sequence between two
                _ => vec![take(d % 31 + 1)],
            })
            .collect()
    };
    let (first, last) = (shard(0), shard(3));
    write_shard(&corpus.join("part_0"), &first);
    write_shard(&corpus.join("part_1"), &[vec![], vec![vec![]], vec![]]);
    write_shard(&corpus.join("part_2"), &last);
    let total = u64::from(next - 1);
    let seq_len = 16u32;
    for order in [Order::Flame, Order::Megatron] {
        let mut job = spec(seq_len, seq_len, &[1.0], 1);
        job.datasets[0].path = corpus.to_string_lossy().into_owned();
        job.order = order;
        // One epoch of Megatron's windows of seq_len + 1 tokens, which overlap by one.
        job.num_samples = (order == Order::Megatron).then_some((total - 1) / u64::from(seq_len));
        let stream = Stream::open(job).unwrap();
        let samples = match order {
            Order::Flame => stream.windows_per_epoch()[0],
            Order::Megatron => stream.num_samples().unwrap(),
        };
        let mut seen = HashSet::new();
        for k in 0..samples {
            let sample = stream.sample(k).unwrap();
            let cu = &sample.cu_seqlens;
            assert_eq!((cu[0], *cu.last().unwrap()), (0, seq_len), "{order:?} {k}");
            assert!(cu.windows(2).all(|w| w[0] < w[1]), "{order:?} {k}: {cu:?}");
            // Megatron's last token is the next sample's first: its label, not an input.
            for &token in &sample.tokens[..seq_len as usize] {
                assert!(seen.insert(token), "{order:?}: token {token} served twice");
            }
        }
        assert!(
            seen.iter().all(|&t| (1..=total).contains(&u64::from(t)))
                && total - (seen.len() as u64) < u64::from(seq_len),
            "{order:?}: {} of {total} tokens served",
            seen.len()
        );
    }
    // The same documents packed ahead of time by flame-prep's packed writer.
    let packed = dir.path().join("packed");
    let mut writer =
        flame_formats::PackedWriter::create(&packed, TokenDtype::Uint16, seq_len).unwrap();
    let mut tokens = 0;
    for document in first.iter().chain(&last) {
        let document: Vec<u32> = document.concat();
        tokens += document.len() as u64;
        writer.add_document(&document).unwrap();
    }
    writer.finish(flame_formats::TailPolicy::Drop).unwrap();
    let mut job = spec(seq_len, seq_len, &[1.0], 1);
    job.datasets[0].path = packed.to_string_lossy().into_owned();
    let stream = Stream::open(job).unwrap();
    let mut seen = HashSet::new();
    for k in 0..stream.windows_per_epoch()[0] {
        let sample = stream.sample(k).unwrap();
        assert!(
            sample.cu_seqlens.windows(2).all(|w| w[0] < w[1]),
            "{:?}",
            sample.cu_seqlens
        );
        assert!(
            sample.tokens.iter().all(|&t| seen.insert(t)),
            "packed window {k}"
        );
    }
    assert!(tokens - (seen.len() as u64) < u64::from(seq_len));
}

//! `order = "megatron"` against the real megatron-core: the same datasets, split, seed, `seq_len` and
//! samples give the same dataset and the same tokens for every sample, in the same order
//! (`tools/interop/megatron_order_oracle.py` runs megatron-core's `BlendedMegatronDatasetBuilder` and
//! `GPTDataset` from the test venv).

use std::path::Path;
use std::process::Command;

use flame_formats::TokenDtype;
use flame_formats::megatron::IndexedDatasetBuilder;
use flame_streamer::error::Error;
use flame_streamer::spec::{DatasetSpec, JobSpec, Order};
use flame_streamer::stream::Stream;
use serde_json::{Value, json};
use sha2::Digest;

use crate::util::{python, repo_root};

/// Three datasets shaped like `../shared/reference/megatron_check.py`'s: one that needs a second,
/// separately shuffled epoch, one of tiny documents that needs dozens of epochs, one of long documents;
/// empty documents included.
fn write_datasets(dir: &Path) -> Vec<String> {
    let mut state = 7u64;
    let mut next = move |n: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % n
    };
    [(3000u32, 120u64), (4000, 6), (5000, 300)]
        .iter()
        .enumerate()
        .map(|(k, &(documents, mean))| {
            let prefix = dir.join(format!("ds{k}_text_document"));
            let mut builder = IndexedDatasetBuilder::create(&prefix, TokenDtype::Uint16).unwrap();
            for d in 0..documents {
                let len = if d % 97 == 0 { 0 } else { 1 + next(2 * mean) };
                let mut doc: Vec<u32> = (0..len).map(|_| next(50_000) as u32).collect();
                if let Some(last) = doc.last_mut() {
                    *last = 50_256;
                }
                builder.add_item(&doc).unwrap();
                builder.end_document().unwrap();
            }
            builder.finalize().unwrap();
            prefix.to_str().unwrap().to_string()
        })
        .collect()
}

fn spec(
    prefixes: &[String],
    weights: &[f64],
    split_name: &str,
    seq_len: u32,
    seed: u64,
    n: u64,
) -> JobSpec {
    JobSpec {
        seed,
        seq_len,
        context_len: None,
        varlen: true,
        micro_batch_size: 1,
        global_batch_size: 1,
        order: Order::Megatron,
        split: Some("969,30,1".into()),
        split_name: split_name.into(),
        num_samples: Some(n),
        epochs: None,
        tokenizer: None,
        bos: None,
        append_eod: false,
        streaming: false,
        datasets: prefixes
            .iter()
            .zip(weights)
            .map(|(p, &weight)| DatasetSpec::prepared(p.clone(), weight))
            .collect(),
    }
}

fn oracle(dir: &Path, spec: &JobSpec, blended: bool, full: usize) -> Value {
    let n = spec.num_samples.unwrap();
    let job = json!({
        "prefixes": spec.datasets.iter().map(|d| d.path.clone()).collect::<Vec<_>>(),
        "weights": blended.then(|| spec.datasets.iter().map(|d| d.weight).collect::<Vec<_>>()),
        "split": spec.split, "split_name": spec.split_name, "seq_len": spec.seq_len,
        "seed": spec.seed, "num_samples": n, "samples": (0..n).collect::<Vec<_>>(), "hash_from": full,
    });
    let path = dir.join("oracle-job.json");
    std::fs::write(&path, job.to_string()).unwrap();
    let output = Command::new(python())
        .arg(repo_root().join("tools/interop/megatron_order_oracle.py"))
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn text_sha256(tokens: &[u32]) -> String {
    let text: Vec<String> = tokens.iter().map(u32::to_string).collect();
    hex::encode(sha2::Sha256::digest(text.join(",").as_bytes()))
}

/// Every sample of `spec` equals megatron-core's: dataset, and tokens (the first `full` compared id by
/// id, the rest by hash).
fn assert_same_as_megatron_core(dir: &Path, spec: &JobSpec, blended: bool) {
    let full = 200;
    let expected = oracle(dir, spec, blended, full);
    let stream = Stream::open(spec.clone()).unwrap();
    assert_eq!(stream.tokens_per_sample(), spec.seq_len + 1);
    let samples = expected["samples"].as_array().unwrap();
    assert_eq!(samples.len() as u64, spec.num_samples.unwrap());
    for (k, want) in samples.iter().enumerate() {
        let got = stream.sample(k as u64).unwrap();
        assert_eq!(
            got.dataset as u64,
            want["dataset"].as_u64().unwrap(),
            "sample {k}"
        );
        assert_eq!(got.tokens.len() as u32, spec.seq_len + 1, "sample {k}");
        if k < full {
            let text: Vec<u32> = want["text"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(got.tokens, text, "sample {k}");
        } else {
            assert_eq!(
                text_sha256(&got.tokens),
                want["sha256"].as_str().unwrap(),
                "sample {k}"
            );
        }
        let cu = &got.cu_seqlens;
        assert!(
            cu.first() == Some(&0) && cu.last() == Some(&spec.seq_len),
            "{cu:?}"
        );
        assert!(cu.windows(2).all(|w| w[0] < w[1]), "{cu:?}");
    }
}

#[test]
fn the_weighted_blend_is_megatron_cores_sample_for_sample() {
    let dir = tempfile::tempdir().unwrap();
    let prefixes = write_datasets(dir.path());
    let weights = [0.3, 0.6, 0.1];
    // Train: dataset 0 needs a second epoch shuffled apart, dataset 1 dozens of epochs.
    assert_same_as_megatron_core(
        dir.path(),
        &spec(&prefixes, &weights, "train", 64, 1234, 20_000),
        true,
    );
    // Valid and test ranges, another seed and length.
    assert_same_as_megatron_core(
        dir.path(),
        &spec(&prefixes, &weights, "valid", 100, 7, 300),
        true,
    );
    assert_same_as_megatron_core(
        dir.path(),
        &spec(&prefixes, &weights, "test", 64, 1234, 40),
        true,
    );
}

#[test]
fn a_single_prefix_is_megatron_cores_plain_gpt_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let prefixes = write_datasets(dir.path());
    assert_same_as_megatron_core(
        dir.path(),
        &spec(&prefixes[2..], &[1.0], "train", 128, 42, 5_000),
        false,
    );
}

#[test]
fn an_empty_split_is_an_error_where_megatron_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("tiny");
    let mut builder = IndexedDatasetBuilder::create(&prefix, TokenDtype::Uint16).unwrap();
    for d in 0..10u32 {
        builder.add_item(&[d, d, d]).unwrap();
        builder.end_document().unwrap();
    }
    builder.finalize().unwrap();
    // "969,30,1" of 10 sequences leaves the test split empty: megatron-core loops forever there.
    let prefixes = [prefix.to_str().unwrap().to_string()];
    let err = Stream::open(spec(&prefixes, &[1.0], "test", 4, 1, 10)).unwrap_err();
    assert!(matches!(err, Error::TooSmall { .. }), "{err}");
    assert!(err.to_string().contains("tiny"), "{err}");
    // Megatron's indices are sized by the samples trained on.
    let mut unsized_spec = spec(&prefixes, &[1.0], "train", 4, 1, 10);
    unsized_spec.num_samples = None;
    assert!(Stream::open(unsized_spec).is_err());
}

//! Jobs that stream raw text with tokenization online (`streaming = true`): mixed with prepared datasets,
//! the same global batches for every world size, and a fresh server resumed from a checkpoint's cursors
//! serves what an uninterrupted one would, without replaying the stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use flame_streamer::online::{Cursor, Encode, Producer, RawSource};
use flame_streamer::spec::{DatasetSpec, JobSpec};
use flame_streamer::stream::{Dataset, Stream};

/// Ids are the characters, offset so the online dataset's tokens never equal the prepared one's; counts
/// the documents it encodes.
struct Chars(Arc<AtomicU64>);

impl Encode for Chars {
    fn encode(&self, text: &str, out: &mut Vec<u32>) -> anyhow::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        out.clear();
        out.extend(text.chars().map(|c| u32::from(c) + (1 << 24)));
        Ok(())
    }
}

fn files() -> Vec<Vec<String>> {
    (0..3)
        .map(|f| {
            (0..3000)
                .map(|r| format!("document {r} of file {f}."))
                .collect()
        })
        .collect()
}

fn raw(encoded: &Arc<AtomicU64>) -> Arc<RawSource> {
    Arc::new(RawSource {
        files: Box::new(files()),
        encoder: Box::new(Chars(Arc::clone(encoded))),
        names: (0..3).map(|f| format!("part-{f}.jsonl")).collect(),
        cursor_log: None,
    })
}

fn job() -> JobSpec {
    let mut spec = JobSpec::from_toml(
        r#"
        seed = 3
        seq_len = 64
        context_len = 32
        micro_batch_size = 2
        global_batch_size = 8
        tokenizer = "chars"
        streaming = true
        [[datasets]]
        dataset = "raw/*.jsonl"
        weight = 0.7
        [[datasets]]
        path = "prepared"
        weight = 0.3
        "#,
    )
    .unwrap();
    spec.datasets[1] = DatasetSpec::prepared("prepared", 0.3);
    spec
}

fn stream(encoded: &Arc<AtomicU64>) -> Stream {
    let prepared: Vec<Vec<u32>> = (0..500u32)
        .map(|d| (0..40 + d % 50).map(|t| d << 8 | t).collect())
        .collect();
    Stream::from_datasets(
        job(),
        vec![
            Dataset::Online(raw(encoded)),
            Dataset::Prepared(Box::new(prepared)),
        ],
    )
    .unwrap()
}

#[test]
fn online_windows_are_the_producers_and_mix_with_prepared_data() {
    let encoded = Arc::new(AtomicU64::new(0));
    let stream = stream(&encoded);
    let mut producer = Producer::new(raw(&encoded), (64, seed_of_dataset(0)), Cursor::default());
    let mut online = Vec::new();
    for k in 0..800 {
        let sample = stream.sample(k).unwrap();
        assert_eq!(sample.tokens.len(), 64);
        assert_eq!(*sample.cu_seqlens.last().unwrap(), 64);
        assert!(
            sample
                .cu_seqlens
                .windows(2)
                .all(|w| w[0] < w[1] && w[1] - w[0] <= 32),
            "{:?}",
            sample.cu_seqlens
        );
        if sample.dataset == 0 {
            online.push(sample.tokens);
        } else {
            assert!(sample.tokens.iter().all(|&t| t < 1 << 24));
        }
    }
    // 100 whole global batches read the online dataset's first windows, each once, shuffled in a batch.
    assert!(
        (540..=580).contains(&online.len()),
        "{} of 800 samples online at weight 0.7",
        online.len()
    );
    let mut expected: Vec<Vec<u32>> = (0..online.len())
        .map(|_| producer.next_window().unwrap().tokens)
        .collect();
    online.sort();
    expected.sort();
    assert_eq!(online, expected);
}

/// The seed `Stream` gives dataset `i` (as it does for prepared datasets).
fn seed_of_dataset(i: u64) -> u64 {
    let mut state = 3 ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    flame_formats::permutation::splitmix64(&mut state)
}

#[test]
fn every_world_size_reads_the_same_global_batches() {
    let encoded = Arc::new(AtomicU64::new(0));
    let batches = |world: u32| -> Vec<Vec<u32>> {
        let stream = stream(&encoded);
        (0..12u64)
            .map(|step| {
                let mut tokens = Vec::new();
                for micro_step in 0..u64::from(4 / world) {
                    for rank in 0..world {
                        for sample in stream.micro_batch(step, micro_step, rank, world).unwrap() {
                            tokens.extend(sample.tokens);
                        }
                    }
                }
                tokens
            })
            .collect()
    };
    let one = batches(1);
    assert_eq!(batches(2), one);
    assert_eq!(batches(4), one);
}

#[test]
fn a_fresh_server_resumes_from_a_checkpoints_cursors_without_replaying() {
    let encoded = Arc::new(AtomicU64::new(0));
    let first = stream(&encoded);
    let step = 900;
    for s in 0..step + 6 {
        first.micro_batch(s, 0, 0, 1).unwrap();
    }
    let expected: Vec<_> = (step..step + 6)
        .map(|s| first.micro_batch(s, 0, 0, 1).unwrap())
        .collect();
    let cursors = first.cursors(step);
    assert_eq!(cursors.len(), 1, "one online dataset");

    let encoded_after = Arc::new(AtomicU64::new(0));
    let fresh = stream(&encoded_after);
    fresh.add_cursors(&cursors);
    let resumed: Vec<_> = (step..step + 6)
        .map(|s| fresh.micro_batch(s, 0, 0, 1).unwrap())
        .collect();
    assert_eq!(resumed, expected);
    let documents = encoded_after.load(Ordering::Relaxed);
    let before = encoded.load(Ordering::Relaxed);
    assert!(
        documents <= 2 * 1024,
        "{documents} documents encoded to resume (the first server encoded {before})"
    );
    assert!(
        before > 5 * documents,
        "the test must reach far enough into the stream to tell"
    );
}

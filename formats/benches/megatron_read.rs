//! Reading a Megatron dataset: a sequential scan of every sequence (tokens/s, bytes/s) beside the
//! ceiling of the same bytes summed as one flat slice, and random sequence lookups per second, with and
//! without reading the sequence's first token (a likely cache and TLB miss in a multi-GB file).
//!
//! `cargo bench -p flame-formats --bench megatron_read`; `FLAME_BENCH_GIB` sets the dataset size
//! (default 2 GiB of uint16 tokens, written once to a temporary directory before timing).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flame_formats::{IndexedDataset, IndexedDatasetBuilder, TokenDtype};

/// splitmix64: deterministic lengths and lookup order without a dependency.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn build(dir: &std::path::Path) -> IndexedDataset {
    let gib: f64 = std::env::var("FLAME_BENCH_GIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2.0);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let target_tokens = (gib * f64::from(1u32 << 30) / 2.0) as u64;
    let prefix = dir.join("bench");
    let mut builder = IndexedDatasetBuilder::create(&prefix, TokenDtype::Uint16).expect("create");
    let mut state = 7;
    let chunk: Vec<u32> = (0..8192u32).map(|t| t % 50_000).collect();
    while builder.num_tokens() < target_tokens {
        // Document lengths 1..2048, mean ~1000 tokens, like web text under a BPE tokenizer.
        let len = usize::try_from(1 + splitmix(&mut state) % 2047).expect("small");
        builder.add_item(&chunk[..len]).expect("add");
        builder.end_document().expect("end");
    }
    builder.finalize().expect("finalize");
    IndexedDataset::open(&prefix).expect("open")
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let dataset = build(dir.path());
    let num_sequences = dataset.num_sequences();
    let num_bytes = dataset.bin_bytes().len() as u64;

    let mut scan = c.benchmark_group("scan");
    scan.throughput(Throughput::Bytes(num_bytes))
        .sample_size(10);
    scan.bench_function("ceiling: one flat slice", |b| {
        let flat: &[u16] = bytemuck::cast_slice(dataset.bin_bytes());
        b.iter(|| black_box(flat.iter().map(|&t| u64::from(t)).sum::<u64>()));
    });
    scan.bench_function("every sequence through the index", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for i in 0..num_sequences {
                sum += dataset
                    .sequence_as::<u16>(i)
                    .expect("valid")
                    .iter()
                    .map(|&t| u64::from(t))
                    .sum::<u64>();
            }
            black_box(sum)
        });
    });
    scan.finish();

    let mut state = 11;
    let lookups: Vec<u64> = (0..1_000_000)
        .map(|_| splitmix(&mut state) % num_sequences)
        .collect();
    let mut random = c.benchmark_group("random");
    random.throughput(Throughput::Elements(lookups.len() as u64));
    random.bench_function("sequence lookup (index only)", |b| {
        b.iter(|| {
            let mut sum = 0usize;
            for &i in &lookups {
                sum += dataset.sequence_as::<u16>(i).expect("valid").len();
            }
            black_box(sum)
        });
    });
    random.bench_function("sequence lookup + first token", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for &i in &lookups {
                sum += u64::from(dataset.sequence_as::<u16>(i).expect("valid")[0]);
            }
            black_box(sum)
        });
    });
    random.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! The chunked token-mixing ops over random document layouts (proptest): chunking round-trips with
//! zero padding and chunks that start at their document's first token, and no document's output
//! depends on another document's inputs. (Chunked against token-by-token is tested in
//! `src/kernels/{gla,delta_rule}.rs`.)

use flame_trainer::kernels::{ChunkLayout, chunk_delta_rule, chunk_gla};
use proptest::prelude::*;
use proptest::sample::Index;
use tch::{Device, Kind, Tensor};

/// `cu_seqlens` of 1–3 samples of 1–90 tokens, each cut at up to 5 random points (repeated cuts
/// make empty documents), and a chunk length.
fn layouts() -> impl Strategy<Value = (Vec<Vec<u32>>, usize, usize)> {
    (
        1u32..=90,
        1usize..=3,
        prop::sample::select(vec![1usize, 4, 16, 64]),
    )
        .prop_flat_map(|(seq_len, batch, chunk_len)| {
            let cuts = prop::collection::vec(prop::collection::vec(0..=seq_len, 0..6), batch);
            (cuts, Just(seq_len), Just(chunk_len))
        })
        .prop_map(|(cuts, seq_len, chunk_len)| {
            let cu_seqlens = cuts
                .into_iter()
                .map(|mut cu| {
                    cu.extend([0, seq_len]);
                    cu.sort_unstable();
                    cu
                })
                .collect();
            (cu_seqlens, seq_len as usize, chunk_len)
        })
}

/// `[B, T, 1, 1]` float64 of `value(sample, document, position in the document)` per token.
fn per_token(
    cu_seqlens: &[Vec<u32>],
    seq_len: usize,
    value: impl Fn(usize, usize, u32) -> f64,
) -> Tensor {
    let mut values = Vec::with_capacity(cu_seqlens.len() * seq_len);
    for (sample, cu) in cu_seqlens.iter().enumerate() {
        for (document, pair) in cu.windows(2).enumerate() {
            values.extend((0..pair[1] - pair[0]).map(|offset| value(sample, document, offset)));
        }
    }
    let (b, t) = dims(cu_seqlens, seq_len);
    Tensor::from_slice(&values).view([b, t, 1, 1])
}

/// `(B, T)` of `cu_seqlens.len()` samples of `seq_len` tokens.
fn dims(cu_seqlens: &[Vec<u32>], seq_len: usize) -> (i64, i64) {
    (
        i64::try_from(cu_seqlens.len()).unwrap(),
        i64::try_from(seq_len).unwrap(),
    )
}

/// Runs libtorch's intra-op work on the calling thread: thousands of tiny ops, which MKL's thread
/// fan-out made 5–10× slower on CI's 2 shared cores (other tests in the binary only change speed).
fn single_threaded() {
    tch::set_num_threads(1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn chunking_round_trips_pads_with_zeros_and_starts_chunks_at_documents(
        (cu_seqlens, seq_len, chunk_len) in layouts(),
    ) {
        single_threaded();
        let layout = ChunkLayout::new(&cu_seqlens, seq_len, chunk_len, Device::Cpu);
        let (b, t) = dims(&cu_seqlens, seq_len);
        let x = Tensor::randn([b, t, 2, 3], (Kind::Double, Device::Cpu)) + 10.0;
        let chunks = layout.to_chunks(&x);
        prop_assert!(layout.from_chunks(&chunks).equal(&x));
        let (m, c) = (layout.num_chunks(), layout.chunk_len());
        prop_assert_eq!(chunks.size(), [m, 2, c, 3]);
        let valid = layout.valid_rows().view([m, 1, c, 1]);
        prop_assert!(!chunks.masked_select(&valid.logical_not()).ne(0.0).any().is_nonzero());
        prop_assert_eq!(valid.sum(Kind::Int64).int64_value(&[]), b * t);

        // Row i of a document's chunk j holds its token j·C + i, and one chunk holds one document.
        let position = layout.to_chunks(&per_token(&cu_seqlens, seq_len, |_, _, at| f64::from(at))).reshape([m, c]);
        let row = Tensor::arange(c, (Kind::Double, Device::Cpu));
        let c_float = f64::from(u32::try_from(c).unwrap());
        let expected = ((&position / c_float).floor() * c_float + row).masked_fill(&valid.view([m, c]).logical_not(), 0.0);
        prop_assert!(position.equal(&expected));
        let document = per_token(&cu_seqlens, seq_len, |sample, document, _| {
            f64::from(u32::try_from(sample * 100 + document).unwrap())
        });
        let document = layout.to_chunks(&document).reshape([m, c]);
        let first = document.narrow(1, 0, 1);
        prop_assert!(document.eq_tensor(&first).logical_or(&valid.view([m, c]).logical_not()).all().int64_value(&[]) == 1);

        // The wavefront takes as many steps as the longest document has chunks.
        let longest = cu_seqlens.iter().flat_map(|cu| cu.windows(2).map(|pair| (pair[1] - pair[0]) as usize)).max().unwrap_or(0);
        prop_assert_eq!(layout.num_steps(), longest.div_ceil(chunk_len));
    }

    #[test]
    fn no_document_s_output_depends_on_another_document(
        (cu_seqlens, seq_len, chunk_len) in layouts(),
        which in any::<Index>(),
        seed in 0i64..1_000_000,
    ) {
        single_threaded();
        let documents: Vec<(usize, usize)> = cu_seqlens
            .iter()
            .enumerate()
            .flat_map(|(sample, cu)| {
                cu.windows(2).enumerate().filter(|(_, pair)| pair[1] > pair[0]).map(move |(document, _)| (sample, document))
            })
            .collect();
        let changed = *which.get(&documents);
        let inside = per_token(&cu_seqlens, seq_len, |sample, document, _| {
            f64::from(u8::from((sample, document) == changed))
        })
        .ne(0.0);

        let layout = ChunkLayout::new(&cu_seqlens, seq_len, chunk_len, Device::Cpu);
        tch::manual_seed(seed);
        let (b, t) = dims(&cu_seqlens, seq_len);
        let randn = |d: i64| Tensor::randn([b, t, 2, d], (Kind::Double, Device::Cpu));
        let unit = |x: Tensor| &x / x.norm_scalaropt_dim(2.0, [-1], true);
        // [q, k, v, GLA's g, L2-normalised q and k, beta, Gated DeltaNet's g]
        let inputs = || [
            randn(4), randn(4), randn(3), -randn(4).exp(),
            unit(randn(4)), unit(randn(4)), randn(1).sigmoid(), -randn(1).exp(),
        ];
        let before = inputs();
        let other = inputs();
        let after: Vec<Tensor> = before.iter().zip(&other).map(|(x, y)| y.where_self(&inside, x)).collect();
        let outputs = |x: &[Tensor]| {
            let (beta, g) = (x[6].squeeze_dim(-1), x[7].squeeze_dim(-1));
            [
                chunk_gla(&x[0], &x[1], &x[2], &x[3], 0.5, &layout),
                chunk_delta_rule(&x[4], &x[5], &x[2], &beta, None, 0.5, &layout),
                chunk_delta_rule(&x[4], &x[5], &x[2], &beta, Some(&g), 0.5, &layout),
            ]
        };
        let outside = inside.logical_not();
        for (o, p) in outputs(&before).iter().zip(&outputs(&after)) {
            prop_assert!(o.masked_select(&outside).equal(&p.masked_select(&outside)));
            prop_assert!(!o.masked_select(&inside).equal(&p.masked_select(&inside)));
        }
    }
}

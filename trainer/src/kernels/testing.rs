//! What the kernel tests share: the cases (shapes, chunk lengths, document layouts), their seeded
//! inputs, and the comparison of a chunked op with its token-by-token reference, outputs and
//! gradients, in float64.

use tch::{Device, Kind, Tensor};

use super::ChunkLayout;

/// Largest relative error (max |chunked − reference| / max |reference|, per tensor) the tests accept.
const TOLERANCE: f64 = 1e-9;

/// Runs libtorch's intra-op work on the calling thread: these tests are thousands of tiny ops, and
/// fanning each out to MKL's threads made them 5–10× slower on CI's 2 shared cores (other tests in the
/// binary only change speed).
pub fn single_threaded() {
    tch::set_num_threads(1);
}

/// One comparison: `B = 2` samples of `T = 150` tokens (several chunks, a ragged last one).
#[derive(Debug)]
pub struct Case {
    pub heads: i64,
    pub dk: i64,
    pub dv: i64,
    pub chunk_len: usize,
    pub cu_seqlens: Vec<Vec<u32>>,
    pub seed: i64,
}

const BATCH: i64 = 2;
const SEQ_LEN: u32 = 150;

impl Case {
    /// Chunks of 64 and 16 × one and two heads × four layouts: whole windows, documents of 1, 64,
    /// 85 / 128, 1, 21 tokens (exact multiples of both chunk lengths), and two random layouts.
    pub fn all() -> Vec<Self> {
        let mut cases = Vec::new();
        for chunk_len in [64, 16] {
            for heads in [1i64, 2] {
                let layouts = [
                    vec![vec![0, SEQ_LEN]; 2],
                    vec![vec![0, 1, 65, SEQ_LEN], vec![0, 128, 129, SEQ_LEN]],
                    random_documents(7 + heads.unsigned_abs(), chunk_len),
                    random_documents(100 + chunk_len as u64, chunk_len),
                ];
                for cu_seqlens in layouts {
                    let seed = i64::try_from(cases.len()).unwrap();
                    cases.push(Self {
                        heads,
                        dk: 8,
                        dv: 12,
                        chunk_len,
                        cu_seqlens,
                        seed,
                    });
                }
            }
        }
        cases
    }

    /// Chunks of 64, two heads, documents of 1, 64, 85 / 128, 1, 21 tokens.
    pub fn with_documents() -> Self {
        Self::all()
            .into_iter()
            .find(|case| case.chunk_len == 64 && case.heads == 2 && case.cu_seqlens[0].len() == 4)
            .expect("Case::all has it")
    }

    pub fn layout(&self) -> ChunkLayout {
        ChunkLayout::new(
            &self.cu_seqlens,
            SEQ_LEN as usize,
            self.chunk_len,
            Device::Cpu,
        )
    }

    #[allow(clippy::cast_precision_loss)]
    pub fn scale(&self) -> f64 {
        (self.dk as f64).powf(-0.5)
    }

    fn randn(&self, last: &[i64]) -> Tensor {
        let mut size = vec![BATCH, i64::from(SEQ_LEN), self.heads];
        size.extend_from_slice(last);
        Tensor::randn(size, (Kind::Double, Device::Cpu))
    }

    /// Runs `chunked` and `reference` on `inputs` and the backward of the sum of their outputs times
    /// one random tensor; asserts that outputs and every input's gradient agree within [`TOLERANCE`]
    /// and returns the largest relative error.
    pub fn compare(
        &self,
        inputs: &[Tensor],
        chunked: impl Fn(&[Tensor]) -> Tensor,
        reference: impl Fn(&[Tensor]) -> Tensor,
    ) -> f64 {
        let leaves: Vec<Tensor> = inputs
            .iter()
            .map(|x| x.detach().set_requires_grad(true))
            .collect();
        let (fast, slow) = (chunked(&leaves), reference(&leaves));
        let weights = Tensor::randn_like(&slow);
        let gradients = |o: &Tensor| {
            let loss = (o * &weights).sum(Kind::Double);
            Tensor::run_backward(&[loss], &leaves, false, false)
        };
        let (fast_grads, slow_grads) = (gradients(&fast), gradients(&slow));
        let mut worst = 0.0f64;
        let pairs = std::iter::once((&fast, &slow)).chain(fast_grads.iter().zip(&slow_grads));
        for (what, (a, b)) in pairs.enumerate() {
            let scale = b.abs().max().double_value(&[]);
            assert!(scale > 0.0, "{self:?}: tensor {what} of the reference is 0");
            let error = (a - b).abs().max().double_value(&[]) / scale;
            assert!(
                error < TOLERANCE,
                "{self:?}: tensor {what} (0 = output, then the gradients) is off by {error:.2e}"
            );
            worst = worst.max(error);
        }
        worst
    }
}

/// Relative error of a float32 result against its float64 twin: max |difference| / max |float64|.
pub fn float32_error(single: &Tensor, double: &Tensor) -> f64 {
    assert_eq!(single.kind(), Kind::Float);
    let scale = double.abs().max().double_value(&[]);
    (single.to_kind(Kind::Double) - double)
        .abs()
        .max()
        .double_value(&[])
        / scale
}

/// `q, k, v` with `dk, dk, dv` channels, standard normal.
pub fn random_inputs(case: &Case) -> [Tensor; 3] {
    tch::manual_seed(case.seed);
    [
        case.randn(&[case.dk]),
        case.randn(&[case.dk]),
        case.randn(&[case.dv]),
    ]
}

/// `q, k` L2-normalised, `v`, and `beta` after a sigmoid, as the delta rule takes them.
pub fn delta_rule_inputs(case: &Case) -> [Tensor; 4] {
    let [q, k, v] = random_inputs(case);
    let unit = |x: Tensor| &x / x.norm_scalaropt_dim(2.0, [-1], true);
    let beta = case.randn(&[]).sigmoid();
    [unit(q), unit(k), v, beta]
}

/// GLA's log decays `[B, T, H, dk]`: each channel its own rate, from e^−6 (a memory of hundreds of
/// tokens) up to the floor of −20 a step, where 64 steps sum below −ln(f64::MAX) and `e^{−G}` would
/// overflow.
pub fn gla_gates(case: &Case) -> Tensor {
    let channels = case.heads * case.dk;
    log_decays(case, &[case.dk], channels).view([BATCH, i64::from(SEQ_LEN), case.heads, case.dk])
}

/// Gated DeltaNet's log decays `[B, T, H]`: each sample and head its own rate, as [`gla_gates`].
pub fn head_gates(case: &Case) -> Tensor {
    log_decays(case, &[], BATCH * case.heads)
}

/// `−exp(rate + noise)` floored at −20, the rates spread evenly over [−6, 3] across `rates` of the
/// trailing dims (tokens vary by noise of spread 0.5).
fn log_decays(case: &Case, last: &[i64], rates: i64) -> Tensor {
    let noise = case.randn(last) * 0.5;
    let rate = Tensor::linspace(-6.0, 3.0, rates, (Kind::Double, Device::Cpu));
    let rate = if last.is_empty() {
        // One rate per (sample, head): dims 0 and 2 of [B, T, H].
        rate.view([BATCH, 1, case.heads])
    } else {
        rate.view([1, 1, case.heads, case.dk])
    };
    let g = (-(noise + rate).exp()).clamp_min(-20.0);
    if case.chunk_len == 64 {
        // The case proves what it claims: some chunk's decay would overflow factorised naively.
        let strongest = g
            .narrow(1, 0, 64)
            .sum_dim_intlist(1, false, Kind::Double)
            .min();
        assert!(strongest.double_value(&[]) < -f64::MAX.ln());
    }
    g
}

/// Two samples of random documents: lengths of 1, one or two chunks, or 1 to 2.5 chunks, from a
/// seeded splitmix64.
fn random_documents(seed: u64, chunk_len: usize) -> Vec<Vec<u32>> {
    let mut state = seed;
    let mut next = move |n: u64| {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    };
    let chunk = chunk_len as u64;
    (0..BATCH)
        .map(|_| {
            let mut cu = vec![0u32];
            let mut end = 0u64;
            while end < u64::from(SEQ_LEN) {
                let len = match next(4) {
                    0 => 1,
                    1 => chunk,
                    2 => 2 * chunk,
                    _ => 1 + next(5 * chunk / 2),
                };
                end = (end + len).min(u64::from(SEQ_LEN));
                cu.push(u32::try_from(end).unwrap());
            }
            cu
        })
        .collect()
}

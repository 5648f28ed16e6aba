//! The token mixing on CUDA: fla-core 0.6.0's own Triton kernels ([`super::cubin`]), launched in the
//! order and with the buffers fla's Python wrappers use, as libtorch autograd nodes
//! ([`crate::shim::kernels::Function`]). [`delta_rule`] holds DeltaNet's op, [`gated_delta_rule`]
//! Gated DeltaNet's, [`gla`] GLA's; `common` the launches the delta rules share (the L2 norm, the state
//! and output passes) and the argument helpers. [`cross_entropy`] is every model's loss, the
//! transformer's and GPT-2's too.
//!
//! fla's kernels take a batch flattened to one row of `T` tokens (`[1, T, H, D]`, contiguous, bf16)
//! with the documents' boundaries ([`Varlen`]); states reset at every document start.

mod common;
pub mod conv;
pub mod cross_entropy;
pub mod delta_rule;
pub mod gated_delta_rule;
pub mod gla;
pub mod norm;
pub mod swiglu;

use serde_json::{Value, json};
use tch::{Device, Kind, Tensor};

use super::cubin::{Arg, Kernels, Variant};
use crate::config::{GateActivation, Mixer, ModelConfig};

/// A batch's documents as fla's varlen kernels take them, made on the host once per batch.
#[derive(Debug)]
pub struct Varlen {
    /// `[N + 1]` int32: the documents' boundaries in the flattened batch (empty documents left out).
    pub cu_seqlens: Tensor,
    /// `[NT, 2]` int32: (document, chunk of the document) of every chunk (fla's
    /// `prepare_chunk_indices`).
    pub chunk_indices: Tensor,
    /// `[N + 1]` int64: each document's first chunk (fla's `prepare_chunk_offsets`).
    pub chunk_offsets: Tensor,
}

impl Varlen {
    /// The documents of `cu_seqlens.len()` samples of `seq_len` tokens each (the trainer's
    /// [`Inputs`](crate::models::Inputs) convention), in chunks of `chunk_len`, on `device`.
    pub fn new(cu_seqlens: &[Vec<u32>], seq_len: usize, chunk_len: usize, device: Device) -> Self {
        let mut boundaries = vec![0i32];
        let (mut indices, mut offsets) = (Vec::new(), vec![0i64]);
        for (sample, cu) in cu_seqlens.iter().enumerate() {
            let base = sample * seq_len;
            for pair in cu.windows(2) {
                let len = (pair[1] - pair[0]) as usize;
                if len == 0 {
                    continue;
                }
                let document = i32::try_from(boundaries.len() - 1).expect("documents fit i32");
                let chunks = i32::try_from(len.div_ceil(chunk_len)).expect("chunks fit i32");
                indices.extend((0..chunks).flat_map(|j| [document, j]));
                offsets.push(offsets.last().expect("starts at 0") + i64::from(chunks));
                boundaries.push(i32::try_from(base + pair[1] as usize).expect("tokens fit i32"));
            }
        }
        let chunks = i64::try_from(indices.len() / 2).expect("fits");
        Self {
            cu_seqlens: Tensor::from_slice(&boundaries).to_device(device),
            chunk_indices: Tensor::from_slice(&indices)
                .view([chunks, 2])
                .to_device(device),
            chunk_offsets: Tensor::from_slice(&offsets).to_device(device),
        }
    }
}

/// Whether `kernels` has every kernel `config` runs on them (the token mixing of a linear model, every
/// model's loss and residual norms); `Err` says what it lacks.
pub fn check(kernels: &'static Kernels, config: &ModelConfig) -> Result<(), String> {
    cross_entropy::check(kernels, i64::from(config.vocab_size))?;
    let rms = config.gpt2().is_none();
    super::residual_norm::check(kernels, i64::from(config.hidden_size), rms)?;
    if config.mixer.is_linear() {
        swiglu::check(kernels, i64::from(config.intermediate_size))?;
    }
    match &config.mixer {
        Mixer::DeltaRule(delta) => {
            delta_rule::check(kernels, delta)?;
            if let Some(taps) = delta.short_conv {
                for width in delta.conv_widths() {
                    conv::check(kernels, i64::from(width), i64::from(taps))?;
                }
            }
            match delta.output_gate {
                Some(activation) => norm::check(kernels, i64::from(delta.head_v_dim), activation),
                None => Ok(()),
            }
        }
        Mixer::Gla(gla) => {
            gla::check(kernels, gla)?;
            if let Some(taps) = gla.short_conv {
                for width in [gla.key_dim, gla.value_dim] {
                    conv::check(kernels, i64::from(width), i64::from(taps))?;
                }
            }
            if gla.use_output_gate && gla.fused_gate_norm {
                let d = i64::from(gla.value_dim / gla.num_heads);
                norm::check(kernels, d, GateActivation::Swish)?;
            }
            Ok(())
        }
        Mixer::Attention(_) | Mixer::Gpt2(_) => Ok(()),
    }
}

/// `x` as fla's kernels take it: bf16, contiguous, one row (`[1, B·T, …]`).
fn flat(x: &Tensor) -> Tensor {
    let mut shape = x.size();
    let rows = shape.remove(0) * shape[0];
    shape[0] = rows;
    shape.insert(0, 1);
    x.to_kind(Kind::BFloat16)
        .contiguous()
        .view(shape.as_slice())
}

pub(crate) fn cdiv(a: i64, b: i64) -> i64 {
    (a + b - 1) / b
}

/// The smallest power of two at least `x` (Triton's `next_power_of_2`).
fn next_power_of_2(x: i64) -> i64 {
    let x = u64::try_from(x.max(1)).expect("positive");
    i64::try_from(x.next_power_of_two()).expect("fits")
}

/// An i32 kernel argument (Triton's `T`).
pub(crate) fn int(x: i64) -> Result<Arg<'static>, String> {
    i32::try_from(x)
        .map(Arg::I32)
        .map_err(|_| format!("{x} does not fit the kernels' int32"))
}

/// The sizes every kernel of an op is specialised on, or launched over.
#[derive(Debug)]
pub(super) struct Shape {
    /// Tokens in the flattened batch (`T`).
    pub tokens: i64,
    /// Heads (`H`, and `HV`: flame's layers have as many value heads).
    pub heads: i64,
    /// Key width (`K`).
    pub k: i64,
    /// Value width (`V`).
    pub v: i64,
    /// Documents (`N`).
    pub documents: i64,
    /// Chunks over all documents (`NT`).
    pub chunks: i64,
}

impl Shape {
    /// The shape of an op on `k` `[1, T, H, K]` and `v` `[1, T, H, V]` over `varlen`'s documents
    /// (`cu_seqlens`, `chunk_indices`, `chunk_offsets`).
    pub fn of(k: &Tensor, v: &Tensor, varlen: &[Tensor]) -> Self {
        let (ks, vs) = (k.size(), v.size());
        Self {
            tokens: ks[1],
            heads: ks[2],
            k: ks[3],
            v: vs[3],
            documents: varlen[0].size()[0] - 1,
            chunks: varlen[1].size()[0],
        }
    }

    /// The shape of a layer of `heads` heads, keys of `k` and values of `v`, for looking kernels up
    /// (no tokens).
    pub fn of_layer(heads: u32, k: u32, v: u32) -> Self {
        Self {
            tokens: 0,
            heads: i64::from(heads),
            k: i64::from(k),
            v: i64::from(v),
            documents: 0,
            chunks: 0,
        }
    }

    /// The one variant of `kernel` for these `H`, `K`, `V` and the further constexprs `more`.
    pub fn find(
        &self,
        kernels: &'static Kernels,
        kernel: &str,
        more: &[(&'static str, Value)],
    ) -> Result<Variant<'static>, String> {
        let mut spec = vec![
            ("H", json!(self.heads)),
            ("K", json!(self.k)),
            ("V", json!(self.v)),
        ];
        spec.extend_from_slice(more);
        kernels.find(kernel, &spec)
    }
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind};

    use super::Varlen;

    #[test]
    fn varlen_flattens_the_samples_and_indexes_the_chunks_as_fla_does() {
        // Two samples of 100 tokens: documents of 1, 63 and 36 tokens, then an empty one and 100.
        let varlen = Varlen::new(
            &[vec![0, 1, 64, 100], vec![0, 0, 100]],
            100,
            64,
            Device::Cpu,
        );
        assert_eq!(
            Vec::<i32>::try_from(&varlen.cu_seqlens).unwrap(),
            [0, 1, 64, 100, 200]
        );
        let indices = Vec::<i32>::try_from(&varlen.chunk_indices.view([-1])).unwrap();
        assert_eq!(indices, [0, 0, 1, 0, 2, 0, 3, 0, 3, 1]);
        assert_eq!(varlen.chunk_indices.kind(), Kind::Int);
        assert_eq!(
            Vec::<i64>::try_from(&varlen.chunk_offsets).unwrap(),
            [0, 1, 2, 3, 5]
        );
    }
}

//! The token-mixing ops of the linear-attention models, one file per kernel family: [`gla`] (gated
//! linear attention) and [`delta_rule`] (DeltaNet and Gated DeltaNet), each its chunked op beside its
//! token-by-token reference. [`layout`] cuts a batch's documents into the chunks they share
//! ([`ChunkLayout`]) and runs their inter-chunk state pass as a wavefront.
//!
//! All inputs are `[B, T, H, D]` like fla's (not head-first), with each sample's documents given by
//! its `cu_seqlens`; states reset at every document start. The chunked ops here are libtorch ops:
//! the path every CPU test takes (their gradients come from autograd). On CUDA the models run [`fla`]
//! instead, fla-core's own Triton kernels compiled ahead of time ([`cubin`]), where the kernel build
//! has their shapes (`--model.kernels`, which says which path a run takes and why). [`residual_norm`]
//! is every model's residual add and norm fused on CUDA, flame's own Triton kernel in the same build.
//!
//! ```
//! use flame_trainer::kernels::{ChunkLayout, chunk_gla};
//! use tch::{Device, Kind, Tensor};
//!
//! // Two samples of 100 tokens: three documents, then one.
//! let layout = ChunkLayout::new(&[vec![0, 1, 64, 100], vec![0, 100]], 100, 64, Device::Cpu);
//! let x = |d: i64| Tensor::randn([2, 100, 4, d], (Kind::Float, Device::Cpu));
//! let g = x(16).sigmoid().log() / 16.0;
//! let o = chunk_gla(&x(16), &x(16), &x(32), &g, 0.25, &layout);
//! assert_eq!(o.size(), [2, 100, 4, 32]);
//! ```

pub mod cubin;
pub mod delta_rule;
pub mod fla;
pub mod gla;
pub mod layout;
pub mod residual_norm;
#[cfg(test)]
mod testing;

pub use delta_rule::{chunk_delta_rule, recurrent_delta_rule};
pub use gla::{chunk_gla, recurrent_gla};
pub use layout::ChunkLayout;

use tch::Kind;

/// The kind the ops, norms and gates compute in: float64 stays float64, every other kind (bf16 under
/// autocast) runs in float32 (fla's kernels accumulate in fp32 too).
pub fn compute_kind(kind: Kind) -> Kind {
    if kind == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

//! What `tools/interop/hf_parity.py` compares with Hugging Face `transformers`: this crate's fp32 logits
//! on fixed tokens, for two whole windows and for one window of two packed documents.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::models::{CausalLm, Inputs, Model};

/// Writes `tokens` (`[2, 24]`), `whole` (their logits, `[2, 24, vocab]`) and `packed` (the first
/// window's logits as two documents of 10 and 14 tokens) to `path` as safetensors. The model must be
/// on the CPU and have a vocabulary of at least 1000.
pub fn write_logits(model: &CausalLm, path: &Path) -> anyhow::Result<()> {
    let tokens: Vec<u32> = (0..48u32).map(|i| (i * 379 + 17) % 1000).collect();
    let (whole, packed) = tch::no_grad(|| {
        (
            model.forward(&Inputs::new(
                &tokens,
                24,
                &[vec![0, 24], vec![0, 24]],
                Device::Cpu,
            )),
            model.forward(&Inputs::new(
                &tokens[..24],
                24,
                &[vec![0, 10, 24]],
                Device::Cpu,
            )),
        )
    });
    let ids =
        Tensor::from_slice(&tokens.iter().map(|&t| i64::from(t)).collect::<Vec<_>>()).view([2, 24]);
    Tensor::write_safetensors(
        &[
            ("tokens", ids),
            ("whole", whole.to_kind(Kind::Float)),
            ("packed", packed.to_kind(Kind::Float)),
        ],
        path,
    )?;
    Ok(())
}

//! The Hugging Face export: the weights under their `transformers` names, `config.json`, the tokenizer.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tch::{Device, nn};

use crate::models::Model;

/// Writes `model.safetensors`, the model's `config.json` and the tokenizer files (from `tokenizer`, a
/// directory or a `tokenizer.json`) into `dir`, for `transformers.AutoModelForCausalLM`.
pub fn export_hf(
    dir: &Path,
    vs: &nn::VarStore,
    model: &dyn Model,
    tokenizer: Option<&Path>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let named: Vec<(String, tch::Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(k, t)| (k, t.to_device(Device::Cpu).contiguous()))
        .collect();
    tch::Tensor::write_safetensors(&named, dir.join("model.safetensors"))?;
    let hf = model.hf_config();
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&hf)?)?;
    if let Some(tokenizer) = tokenizer {
        let files: Vec<PathBuf> = if tokenizer.is_dir() {
            [
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
                "tokenizer.model",
            ]
            .iter()
            .map(|f| tokenizer.join(f))
            .filter(|p| p.exists())
            .collect()
        } else {
            vec![tokenizer.to_path_buf()]
        };
        for file in files {
            let name = file.file_name().context("tokenizer file name")?;
            std::fs::copy(&file, dir.join(name))
                .with_context(|| format!("copy {}", file.display()))?;
        }
    }
    Ok(())
}

//! The Hugging Face export: the weights under their `transformers` names, `config.json`, the tokenizer.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tch::{Device, nn};

use crate::models::Model;

/// Where the export's tokenizer files come from, checked before training starts: `path` as it is when
/// it exists (a directory holding a `tokenizer.json` or `tokenizer.model`, or a file), else a hub model
/// id whose tokenizer files are downloaded into the hub cache (`HF_HOME`, `HF_ENDPOINT`, `HF_TOKEN`,
/// `HF_HUB_OFFLINE` honoured, as flame-prep's `--tokenizer`).
///
/// # Errors
/// When `path` is neither an existing tokenizer nor a hub model with tokenizer files.
pub fn resolve_tokenizer(path: &Path) -> anyhow::Result<PathBuf> {
    let named = || format!("--model.tokenizer_path {}", path.display());
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if path.is_dir() {
        anyhow::ensure!(
            ["tokenizer.json", "tokenizer.model"]
                .iter()
                .any(|f| path.join(f).is_file()),
            "{}: the directory has no tokenizer.json or tokenizer.model",
            named()
        );
        return Ok(path.to_path_buf());
    }
    let text = path.to_str().with_context(named)?;
    match flame_preprocess::source::hub::hub_id(text).with_context(named)? {
        Some(id) => flame_preprocess::source::hub::tokenizer_dir(&id).with_context(named),
        None => anyhow::bail!("{}: no such file or directory", named()),
    }
}

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
            flame_preprocess::source::hub::TOKENIZER_FILES
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

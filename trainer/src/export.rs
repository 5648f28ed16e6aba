//! The Hugging Face export: the weights under their `transformers` names, `config.json`, the tokenizer;
//! and the other way, a Hugging Face checkpoint's weights as a run's starting point.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tch::{Device, Tensor, nn};

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
            has_tokenizer(path),
            "{}: the directory has no tokenizer.json or tokenizer.model",
            named()
        );
        return Ok(path.to_path_buf());
    }
    let text = path.to_str().with_context(named)?;
    match flame_preprocess::source::hub::model_id(text).with_context(named)? {
        Some(id) => flame_preprocess::source::hub::tokenizer_dir(&id).with_context(named),
        None => anyhow::bail!("{}: no such file or directory", named()),
    }
}

/// Whether the directory `dir` holds a tokenizer (`tokenizer.json` or `tokenizer.model`).
pub fn has_tokenizer(dir: &Path) -> bool {
    ["tokenizer.json", "tokenizer.model"]
        .iter()
        .any(|f| dir.join(f).is_file())
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

/// Every tensor of the Hugging Face checkpoint in `dir` by name, with the file it came from: its
/// `model.safetensors`, or the shards its `model.safetensors.index.json` lists.
///
/// # Errors
/// An unreadable index or file, naming it.
pub fn read_checkpoint(dir: &Path) -> anyhow::Result<HashMap<String, (Tensor, PathBuf)>> {
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<PathBuf> = if index.exists() {
        let text = std::fs::read_to_string(&index).with_context(|| index.display().to_string())?;
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| index.display().to_string())?;
        let map = json["weight_map"]
            .as_object()
            .with_context(|| format!("{}: no weight_map", index.display()))?;
        let mut shards: Vec<PathBuf> = map
            .values()
            .filter_map(|f| f.as_str().map(|f| dir.join(f)))
            .collect();
        shards.sort();
        shards.dedup();
        shards
    } else {
        vec![dir.join("model.safetensors")]
    };
    let mut weights = HashMap::new();
    for file in &files {
        for (name, t) in Tensor::read_safetensors(file)
            .with_context(|| format!("{}: reading the weights", file.display()))?
        {
            weights.insert(name, (t, file.clone()));
        }
    }
    Ok(weights)
}

/// Loads the weights of the Hugging Face checkpoint in `dir` into `vs`, by name (flame-train's
/// parameters have the `transformers` names of Llama/Mistral, and of fla's own models): its
/// `model.safetensors`, or the shards its `model.safetensors.index.json` lists. Tensors are converted
/// to the parameters' dtype. Returns how many parameters it set.
///
/// # Errors
/// A parameter the checkpoint lacks or holds in another shape, a weight of the checkpoint the model has
/// no place for (rotary tables aside), or an unreadable file; each names the file and the tensor.
pub fn load_hf_weights(dir: &Path, vs: &nn::VarStore) -> anyhow::Result<usize> {
    let mut weights = read_checkpoint(dir)?;
    let mut variables = vs.variables();
    let mut set = 0;
    tch::no_grad(|| -> anyhow::Result<()> {
        for (name, param) in &mut variables {
            let (t, file) = weights
                .remove(name)
                .with_context(|| format!("{}: no {name} in the checkpoint", dir.display()))?;
            anyhow::ensure!(
                t.size() == param.size(),
                "{}: {name} is {:?}, the model's is {:?}",
                file.display(),
                t.size(),
                param.size()
            );
            param.copy_(&t.to_kind(param.kind()).to_device(param.device()));
            set += 1;
        }
        Ok(())
    })?;
    // Older checkpoints keep RoPE's tables, which flame-train computes.
    weights.retain(|name, _| !name.ends_with("rotary_emb.inv_freq"));
    if let Some(name) = weights.keys().min() {
        anyhow::bail!(
            "{}: {} weights the model has no place for, {name} first (another architecture or config?)",
            dir.display(),
            weights.len()
        );
    }
    Ok(set)
}

//! `flame-train convert init-from-llama`: a model of any flame config (GLA, DeltaNet, Gated DeltaNet, the
//! transformer) initialised from a Llama or Mistral checkpoint, as fla's `utils/convert_from_llama.py`
//! does for continual pretraining: each weight whose role and shape the checkpoint has (embeddings,
//! norms, MLPs, the attention projections where the shapes agree) is copied, every other keeps fla's
//! initialisation, and the report says which is which. The result is a Hugging Face checkpoint in the
//! model's own format, for `--checkpoint.initial_load_path`. `flame-train convert checkpoint-to-hf`:
//! a training checkpoint as a Hugging Face one, on whichever node holds it.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use tch::{Device, Tensor, nn};

use crate::config::{Mixer, ModelConfig};
use crate::export::{export_hf, has_tokenizer, read_checkpoint};

/// `flame-train convert ...`.
#[derive(Debug, Parser)]
#[command(name = "flame-train convert")]
pub enum Convert {
    /// Initialises the model of `--model.config` from a Llama or Mistral checkpoint (fla's
    /// `convert_from_llama.py`), writing a Hugging Face checkpoint to `--output`.
    #[command(name = "init-from-llama")]
    InitFromLlama(InitFromLlama),
    /// Writes a training checkpoint (`<dump_folder>/checkpoint/step-N`) as a Hugging Face checkpoint
    /// (flame's `convert_dcp_to_hf.py`), on any machine that holds that one directory.
    #[command(name = "checkpoint-to-hf")]
    CheckpointToHf(CheckpointToHf),
}

/// The arguments of `checkpoint-to-hf`.
#[derive(Debug, clap::Args)]
pub struct CheckpointToHf {
    /// The checkpoint: a `step-N` directory (rank 0 writes every weight into it, whatever the number
    /// of ranks, so it is whole on the node that holds it).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The run's model config.
    #[arg(long = "model.config")]
    pub model_config: PathBuf,
    /// The directory to write; it must not exist.
    #[arg(long)]
    pub output: PathBuf,
    /// Tokenizer files to put beside the weights (a directory, a file or a hub model id).
    #[arg(long = "model.tokenizer_path")]
    pub tokenizer_path: Option<PathBuf>,
}

/// The arguments of `init-from-llama`.
#[derive(Debug, clap::Args)]
pub struct InitFromLlama {
    /// The Llama or Mistral checkpoint: a directory with `config.json` and `model.safetensors` (or
    /// shards with their index).
    #[arg(long)]
    pub from: PathBuf,
    /// The model to initialise (one of flame's configs).
    #[arg(long = "model.config")]
    pub model_config: PathBuf,
    /// The directory to write; it must not exist.
    #[arg(long)]
    pub output: PathBuf,
    /// Seed of the initialisation of the weights that are not copied.
    #[arg(long, default_value_t = 42)]
    pub seed: i64,
}

/// Runs `flame-train convert ARGS...` (`argv` without the program and `convert`), printing the report.
///
/// # Errors
/// As [`init_from_llama`], or bad arguments.
pub fn main(argv: &[String]) -> anyhow::Result<()> {
    let command = std::iter::once("flame-train convert".to_string()).chain(argv.iter().cloned());
    match Convert::try_parse_from(command) {
        Ok(Convert::InitFromLlama(args)) => {
            for line in init_from_llama(&args)? {
                println!("{line}");
            }
            Ok(())
        }
        Ok(Convert::CheckpointToHf(args)) => {
            let weights = checkpoint_to_hf(&args)?;
            println!(
                "{}: {weights} weights from {}",
                args.output.display(),
                args.checkpoint.display()
            );
            Ok(())
        }
        Err(e) => e.exit(),
    }
}

/// What became of one of the model's weights.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Copied,
    /// The first `rows` rows copied (a vocabulary of another size).
    CopiedRows {
        rows: i64,
        of: i64,
    },
    /// fla's initialisation kept, for the reason given.
    Kept(String),
}

/// Initialises the model of `args.model_config` from the checkpoint `args.from` and writes it to
/// `args.output` (weights, the model's `config.json`, the checkpoint's tokenizer files if it has them),
/// first into a temporary directory that is renamed into place. Returns the report: one line per
/// weight of the model, with `layers.*` for all layers alike.
///
/// # Errors
/// An output that exists, a checkpoint that is not a Llama or Mistral one, or an unreadable file.
pub fn init_from_llama(args: &InitFromLlama) -> anyhow::Result<Vec<String>> {
    ensure_new(&args.output)?;
    let source = ModelConfig::load(&args.from.join("config.json"))?;
    let Mixer::Attention(source_attention) = &source.mixer else {
        anyhow::bail!(
            "{}: a {} checkpoint; init-from-llama reads Llama or Mistral ones",
            args.from.display(),
            source.model_type
        );
    };
    let mut config = ModelConfig::load(&args.model_config)?;
    let mut report = Vec::new();
    if let Mixer::Attention(a) = &mut config.mixer
        && a.rope_theta.to_bits() != source_attention.rope_theta.to_bits()
    {
        report.push(format!(
            "rope_theta {} (the checkpoint's; the config has {})",
            source_attention.rope_theta, a.rope_theta
        ));
        a.rope_theta = source_attention.rope_theta;
    }
    tch::manual_seed(args.seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = crate::models::build(&vs.root(), &config, false);
    let mut weights = read_checkpoint(&args.from)?;
    let mut used = HashSet::new();
    let mut outcomes: BTreeMap<(String, Outcome), usize> = BTreeMap::new();
    let (mut copied, mut total) = (0i64, 0i64);
    tch::no_grad(|| {
        for (name, mut param) in vs.variables() {
            let (outcome, from) = copy_role(&name, &mut param, &weights);
            let elements: i64 = param.size().iter().product();
            total += elements;
            copied += match outcome {
                Outcome::Copied => elements,
                Outcome::CopiedRows { rows, .. } => elements / param.size()[0] * rows,
                Outcome::Kept(_) => 0,
            };
            used.extend(from);
            *outcomes.entry((any_layer(&name), outcome)).or_default() += 1;
        }
    });
    report.insert(
        0,
        format!(
            "{}: {copied} of the model's {total} parameters from {}",
            args.output.display(),
            args.from.display()
        ),
    );
    weights.retain(|name, _| !used.contains(name) && !name.ends_with("rotary_emb.inv_freq"));
    for ((name, outcome), count) in &outcomes {
        let times = if name.contains("layers.*") {
            format!(" ({count} layers)")
        } else {
            String::new()
        };
        report.push(match outcome {
            Outcome::Copied => format!("copied  {name}{times}"),
            Outcome::CopiedRows { rows, of } => {
                format!("copied  {name}{times}: its first {rows} rows of {of}")
            }
            Outcome::Kept(why) => format!("kept    {name}{times}: fla's initialisation, {why}"),
        });
    }
    let unused: BTreeMap<String, usize> = weights.keys().fold(BTreeMap::new(), |mut m, n| {
        *m.entry(any_layer(n)).or_default() += 1;
        m
    });
    for (name, count) in unused {
        report.push(format!("unused  {name} ({count} in the checkpoint)"));
    }
    let tokenizer = has_tokenizer(&args.from).then_some(args.from.as_path());
    write(&args.output, &vs, model.as_ref(), tokenizer)?;
    Ok(report)
}

/// Writes the checkpoint `args.checkpoint` as a Hugging Face checkpoint in `args.output` (the weights,
/// the model's `config.json`, the tokenizer files), the same files as the run's own export at that
/// step; returns how many weights it wrote.
///
/// # Errors
/// An output that exists, a checkpoint whose weights are not the config's model (named), an unreadable
/// file or tokenizer.
pub fn checkpoint_to_hf(args: &CheckpointToHf) -> anyhow::Result<usize> {
    ensure_new(&args.output)?;
    let config = ModelConfig::load(&args.model_config)?;
    let tokenizer = args
        .tokenizer_path
        .as_deref()
        .map(crate::export::resolve_tokenizer)
        .transpose()?;
    let vs = nn::VarStore::new(Device::Cpu);
    let model = crate::models::build(&vs.root(), &config, false);
    let weights = crate::export::load_hf_weights(&args.checkpoint, &vs)?;
    write(&args.output, &vs, model.as_ref(), tokenizer.as_deref())?;
    Ok(weights)
}

fn ensure_new(output: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        !output.exists(),
        "--output {}: exists; flame-train writes a new directory",
        output.display()
    );
    Ok(())
}

/// Copies into `param` (the model's weight `name`) the checkpoint's weight of the same role where the
/// shapes allow; returns what happened and the checkpoint name it read, if any.
fn copy_role(
    name: &str,
    param: &mut Tensor,
    weights: &std::collections::HashMap<String, (Tensor, PathBuf)>,
) -> (Outcome, Option<String>) {
    let theirs = llama_name(name);
    // A checkpoint with tied embeddings has no output layer of its own: it is the embedding.
    let found = weights
        .get(&theirs)
        .map(|w| (theirs.clone(), w))
        .or_else(|| {
            (name == "lm_head.weight")
                .then(|| "model.embed_tokens.weight".to_string())
                .and_then(|n| weights.get(&n).map(|w| (n, w)))
        });
    let Some((from, (t, _))) = found else {
        return (
            Outcome::Kept(format!("the checkpoint has no {}", any_layer(&theirs))),
            None,
        );
    };
    let (ours, its) = (param.size(), t.size());
    let vocabulary = name == "lm_head.weight" || name.ends_with("embeddings.weight");
    if ours == its {
        param.copy_(&t.to_kind(param.kind()));
        (Outcome::Copied, Some(from))
    } else if vocabulary && ours.len() == 2 && ours[1] == its[1] {
        let rows = ours[0].min(its[0]);
        param
            .narrow(0, 0, rows)
            .copy_(&t.narrow(0, 0, rows).to_kind(param.kind()));
        (Outcome::CopiedRows { rows, of: its[0] }, Some(from))
    } else {
        (
            Outcome::Kept(format!(
                "shape {ours:?}, the checkpoint's {} {its:?}",
                any_layer(&from)
            )),
            None,
        )
    }
}

/// The Llama/Mistral (`transformers`) name of the weight that plays the role of `name` (fla's names;
/// flame-train's transformer already has Llama's).
fn llama_name(name: &str) -> String {
    const RENAMED: &[(&str, &str)] = &[
        ("model.embeddings.", "model.embed_tokens."),
        (".attn_norm.", ".input_layernorm."),
        (".mlp_norm.", ".post_attention_layernorm."),
        (".attn.", ".self_attn."),
    ];
    RENAMED.iter().fold(name.to_string(), |n, (ours, theirs)| {
        n.replace(ours, theirs)
    })
}

/// `name` with its layer number replaced by `*`.
fn any_layer(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    let mut out: Vec<&str> = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let numbered = i > 0 && parts[i - 1] == "layers" && part.parse::<u32>().is_ok();
        out.push(if numbered { "*" } else { part });
    }
    out.join(".")
}

/// Writes the export (weights, `config.json`, `tokenizer`'s files) into a temporary directory beside
/// `output`, then publishes it (renamed into place, the parent fsynced): a half-written output never
/// exists under its name.
fn write(
    output: &Path,
    vs: &nn::VarStore,
    model: &dyn crate::models::Model,
    tokenizer: Option<&Path>,
) -> anyhow::Result<()> {
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| parent.display().to_string())?;
    let partial = tempfile::Builder::new()
        .prefix(".flame-convert-")
        .tempdir_in(&parent)
        .with_context(|| parent.display().to_string())?;
    export_hf(partial.path(), vs, model, tokenizer)?;
    flame_formats::publish(partial.path(), output)?;
    // Renamed into place: nothing is left for the guard to remove.
    let _ = partial.keep();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_map_to_llamas_names() {
        for (ours, theirs) in [
            ("model.embeddings.weight", "model.embed_tokens.weight"),
            (
                "model.layers.3.attn_norm.weight",
                "model.layers.3.input_layernorm.weight",
            ),
            (
                "model.layers.3.mlp_norm.weight",
                "model.layers.3.post_attention_layernorm.weight",
            ),
            (
                "model.layers.3.attn.q_proj.weight",
                "model.layers.3.self_attn.q_proj.weight",
            ),
            (
                "model.layers.3.mlp.gate_proj.weight",
                "model.layers.3.mlp.gate_proj.weight",
            ),
            (
                "model.layers.0.self_attn.k_proj.weight",
                "model.layers.0.self_attn.k_proj.weight",
            ),
            ("lm_head.weight", "lm_head.weight"),
        ] {
            assert_eq!(llama_name(ours), theirs);
        }
        assert_eq!(
            any_layer("model.layers.12.attn.g_norm.weight"),
            "model.layers.*.attn.g_norm.weight"
        );
    }
}

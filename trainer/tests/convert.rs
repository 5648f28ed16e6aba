//! `flame-train convert init-from-llama` (issue 20): a GLA model initialised from a Llama checkpoint that
//! `transformers` wrote copies each weight whose role and shape the checkpoint has, keeps fla's
//! initialisation for the others, says which, loads strictly into fla, and a run starts from it.

use std::collections::HashMap;
use std::path::Path;

use crate::train::{from_checkpoint, setup};
use crate::util::{python, repo, succeeds, transformers_checkpoints};

use flame_trainer::convert::{InitFromLlama, init_from_llama};
use flame_trainer::train::run;
use tch::Tensor;

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

#[test]
fn a_gla_model_starts_from_a_llama_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let cases = transformers_checkpoints(&dir.path().join("cases"));
    let llama = cases.join("llama/hf");
    let config = dir.path().join("gla.json");
    // Llama's width, depth, vocabulary and MLP; GLA's keys are half as wide as its values.
    std::fs::write(
        &config,
        r#"{"model_type": "gla", "hidden_size": 32, "num_hidden_layers": 2, "num_heads": 4,
            "vocab_size": 32000, "intermediate_size": 64, "expand_k": 0.5, "expand_v": 1}"#,
    )
    .unwrap();
    let output = dir.path().join("gla");
    let convert = |output: &Path, from: &Path| {
        init_from_llama(&InitFromLlama {
            from: from.to_path_buf(),
            model_config: config.clone(),
            output: output.to_path_buf(),
            seed: 42,
        })
    };
    let report = convert(&output, &llama).unwrap();
    for line in [
        "copied  model.embeddings.weight",
        "copied  lm_head.weight",
        "copied  model.norm.weight",
        "copied  model.layers.*.attn_norm.weight (2 layers)",
        "copied  model.layers.*.mlp_norm.weight (2 layers)",
        "copied  model.layers.*.attn.v_proj.weight (2 layers)",
        "copied  model.layers.*.attn.o_proj.weight (2 layers)",
        "copied  model.layers.*.mlp.down_proj.weight (2 layers)",
        "kept    model.layers.*.attn.q_proj.weight (2 layers): fla's initialisation, shape [16, 32], \
         the checkpoint's model.layers.*.self_attn.q_proj.weight [32, 32]",
        "kept    model.layers.*.attn.gk_proj.0.weight (2 layers): fla's initialisation, the checkpoint \
         has no model.layers.*.self_attn.gk_proj.0.weight",
        "unused  model.layers.*.self_attn.q_proj.weight (2 in the checkpoint)",
    ] {
        assert!(
            report.iter().any(|l| l == line),
            "{line}\nnot in\n{report:#?}"
        );
    }
    // The weights themselves: Llama's where copied (its tied embedding is also GLA's output layer).
    let (ours, theirs) = (
        tensors(&output.join("model.safetensors")),
        tensors(&llama.join("model.safetensors")),
    );
    let embedding = &theirs["model.embed_tokens.weight"];
    assert!(ours["model.embeddings.weight"].equal(embedding));
    assert!(ours["lm_head.weight"].equal(embedding));
    assert!(
        ours["model.layers.1.mlp.up_proj.weight"]
            .equal(&theirs["model.layers.1.mlp.up_proj.weight"])
    );
    assert!(
        ours["model.layers.0.attn.v_proj.weight"]
            .equal(&theirs["model.layers.0.self_attn.v_proj.weight"])
    );
    // fla builds the same model from the output and loads its weights strictly.
    succeeds(
        std::process::Command::new(python())
            .arg(repo().join("tools/interop/fla_load.py"))
            .arg("check")
            .arg(&output),
    );
    // A run starts from it, its config.json giving the model.
    let (endpoint, job, _) = setup(dir.path(), 64);
    let a = from_checkpoint(&endpoint, &job, &dir.path().join("run"), &output, 2);
    assert_eq!(run(&a).unwrap().losses.len(), 2);
    // Refused: an output that exists, and a checkpoint that is not a Llama or Mistral one.
    let err = convert(&output, &llama).unwrap_err().to_string();
    assert!(err.contains("exists"), "{err}");
    let err = convert(&dir.path().join("again"), &output)
        .unwrap_err()
        .to_string();
    assert!(err.contains("a gla checkpoint"), "{err}");
    assert!(!dir.path().join("again").exists());
}

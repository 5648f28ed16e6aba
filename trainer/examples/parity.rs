//! Writes what `tools/interop/hf_parity.py` compares with Hugging Face `transformers`: for two small
//! random models (GQA with untied embeddings, MHA with tied ones), the Hugging Face export and this
//! crate's logits on fixed tokens, whole windows and a window of two packed documents.
//!
//! Usage: `parity OUT_DIR` → `OUT_DIR/{gqa,tied}/` with `hf/` and `logits.safetensors`.

use flame_trainer::config::ModelConfig;
use flame_trainer::models::CausalLm;
use flame_trainer::parity::write_logits;
use flame_trainer::train::export_hf;
use tch::{Device, Tensor, nn};

fn main() -> anyhow::Result<()> {
    let out = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "parity".into()));
    for (name, extra) in [
        ("gqa", r#""num_kv_heads": 2, "tie_word_embeddings": false"#),
        (
            "tied",
            r#""tie_word_embeddings": true, "rope_theta": 500000.0"#,
        ),
    ] {
        let config = ModelConfig::from_json(&format!(
            r#"{{"model_type": "transformer", "hidden_size": 64, "num_hidden_layers": 2, "num_heads": 4,
                "vocab_size": 1000, "intermediate_size": 160, "norm_eps": 1e-5, {extra}}}"#
        ))?;
        tch::manual_seed(11);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = CausalLm::new(&vs.root(), &config);
        // Norm weights away from one, so that they count.
        tch::no_grad(|| {
            for (key, mut t) in vs.variables() {
                if key.ends_with("norm.weight") {
                    let _ = t.g_add_(&(Tensor::randn_like(&t) * 0.1));
                }
            }
        });
        let dir = out.join(name);
        export_hf(&dir.join("hf"), &vs, &model, None)?;
        write_logits(&model, &dir.join("logits.safetensors"))?;
    }
    println!("{}", out.display());
    Ok(())
}

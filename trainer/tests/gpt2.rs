//! Issue 24: GPT-2 (`model_type: "gpt2"`) on the CPU: the export is a `GPT2LMHeadModel` checkpoint with
//! flame-train's logits, a checkpoint `transformers` wrote loads with its own logits, and a shrunk
//! `configs/gpt2-small.json` trains from flame-stream (varlen: positions restart at every document) with
//! a falling loss and an exact resume; a run longer than the learned positions is refused; the README's
//! OpenWebText recipe runs against a local hub.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use flame_trainer::config::ModelConfig;
use flame_trainer::export::load_hf_weights;
use flame_trainer::models::{CausalLm, Model};
use flame_trainer::parity::write_logits;
use flame_trainer::train::{export_hf, run};
use tch::{Device, nn};

use crate::train::{args, logged_losses, setup, trains_and_resumes_exactly};
use crate::util::{command, hf_parity, repo, shared, transformers_checkpoints};

/// `configs/gpt2-small.json`, shrunk: the same keys, small widths, two layers.
fn shrunk(vocab_size: u32, n_positions: u32) -> String {
    let text = std::fs::read_to_string(repo().join("configs/gpt2-small.json")).unwrap();
    let mut keys: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    let small = serde_json::json!({
        "n_embd": 32, "n_layer": 2, "n_head": 4, "vocab_size": vocab_size, "n_positions": n_positions,
    });
    for (key, value) in small.as_object().unwrap() {
        keys.insert(key.clone(), value.clone());
    }
    serde_json::to_string(&keys).unwrap()
}

fn names(vs: &nn::VarStore) -> BTreeSet<String> {
    vs.variables().into_keys().collect()
}

/// Every weight random (biases and LayerNorms included, which start at zero and one), exported: the
/// export has the parameter names `transformers` writes for the same shape (its own checkpoint's), and
/// `GPT2LMHeadModel` loads it with flame-train's logits within 1e-5 (fp32). The checkpoint transformers
/// wrote loads into flame-train and gives transformers' logits within 1e-5 too.
#[test]
fn the_export_is_gpt2lmheadmodels_and_its_checkpoints_load_with_equal_logits() {
    let dir = tempfile::tempdir().unwrap();
    let config = ModelConfig::from_json(&shrunk(1000, 128)).unwrap();
    tch::manual_seed(5);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = CausalLm::new(&vs.root(), &config);
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            let offset = if name.contains(".ln_") && name.ends_with(".weight") {
                1.0
            } else {
                0.0
            };
            t.copy_(&(tch::Tensor::randn_like(&t) * 0.2 + offset));
        }
    });
    let ours = dir.path().join("ours");
    export_hf(&ours.join("hf"), &vs, &model, None).unwrap();
    let hf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ours.join("hf/config.json")).unwrap()).unwrap();
    assert_eq!(hf["architectures"][0], "GPT2LMHeadModel");
    assert_eq!(hf["model_type"], "gpt2");
    write_logits(&model, &ours.join("logits.safetensors")).unwrap();

    // transformers' own checkpoint of the same shape: the same names, and it loads with its logits.
    let cases = transformers_checkpoints(&dir.path().join("cases"));
    let theirs = cases.join("gpt2");
    let their_config = ModelConfig::load(&theirs.join("hf/config.json")).unwrap();
    let their_vs = nn::VarStore::new(Device::Cpu);
    let their_model = CausalLm::new(&their_vs.root(), &their_config);
    assert_eq!(names(&their_vs), names(&vs));
    let loaded = load_hf_weights(&theirs.join("hf"), &their_vs).unwrap();
    assert_eq!(loaded, their_vs.variables().len());
    write_logits(&their_model, &theirs.join("logits.safetensors")).unwrap();

    let stdout = hf_parity(&[&ours, &theirs], Some("1e-5"));
    assert!(
        stdout.contains("ours:") && stdout.contains("gpt2:"),
        "{stdout}"
    );
}

/// Data parallelism reduces a gradient once the backward segment that completes it is done: GPT-2's
/// output layer and final LayerNorm (weight and bias) in segment 0, block `i` of 2 in `2 − i`, the token
/// and position embeddings last (3).
#[test]
fn every_gpt2_parameter_is_in_the_backward_segment_that_completes_it() {
    let config = ModelConfig::from_json(&shrunk(1000, 128)).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let model = CausalLm::new(&vs.root(), &config);
    for name in names(&vs) {
        let expected = match name.as_str() {
            "transformer.ln_f.weight" | "transformer.ln_f.bias" => 0,
            "transformer.wte.weight" | "transformer.wpe.weight" => 3,
            _ if name.starts_with("transformer.h.0.") => 2,
            _ if name.starts_with("transformer.h.1.") => 1,
            _ => panic!("{name}: not a GPT-2 parameter of this shape"),
        };
        assert_eq!(model.segment_of(&name), Some(expected), "{name}");
    }
    assert_eq!(model.segment_of("lm_head.weight"), Some(0));
    assert_eq!(model.segment_of("transformer.h.2.ln_1.weight"), None);
    assert_eq!(model.segment_of("model.norm.weight"), None);
}

#[test]
fn gpt2_trains_from_flame_stream_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (endpoint, job, _) = setup(dir.path(), 128);
    let config = dir.path().join("gpt2.json");
    std::fs::write(&config, shrunk(32000, 128)).unwrap();
    trains_and_resumes_exactly(&endpoint, &job, &config, &dir.path().join("run"), "gpt2");

    // 64 learned positions cannot cover 128-token samples.
    let short = dir.path().join("short.json");
    std::fs::write(&short, shrunk(32000, 64)).unwrap();
    let refused = run(&args(
        &endpoint,
        &job,
        &short,
        &dir.path().join("refused"),
        &["--training.steps", "1", "--training.seq_len", "128"],
    ));
    let err = format!("{:#}", refused.unwrap_err());
    assert!(
        err.contains("64 learned positions") && err.contains("seq_len 128"),
        "{err}"
    );
}

/// An OpenWebText-shaped parquet file (`Skylion007/openwebtext`'s `plain_text/` files: one `text`
/// column) of the texts of a shared jsonl corpus.
fn openwebtext_shaped(corpus: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(shared().join("data/corpus/jsonl").join(corpus)).unwrap();
    let texts: Vec<String> = text
        .lines()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            record["text"].as_str().unwrap().to_owned()
        })
        .collect();
    flame_e2e::parquet_of_texts(&texts)
}

/// The flame-prep binary built beside flame-train (the workspace's test run builds both; a run of this
/// package's tests alone builds it here).
fn flame_prep() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_flame-train")).with_file_name("flame-prep");
    if !path.is_file() {
        let status = std::process::Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "-p",
                "flame-preprocess",
                "--bin",
                "flame-prep",
            ])
            .status()
            .unwrap();
        assert!(
            status.success() && path.is_file(),
            "cargo build flame-prep: {status}"
        );
    }
    path
}

/// How many documents the flame-prep output `prepared` holds, each checked to end with `eod`.
fn documents_ending_with(prepared: &Path, eod: i64) -> usize {
    let corpus = flame_formats::Corpus::open(prepared).unwrap();
    let mut documents = 0;
    for shard in corpus.shards() {
        let flame_formats::Shard::Megatron(dataset) = shard else {
            panic!("flame-prep writes documents by default");
        };
        for d in 0..dataset.num_documents() {
            let ids = dataset.document(d).unwrap().to_i64_vec();
            assert_eq!(ids.last(), Some(&eod), "document {d}");
            documents += 1;
        }
    }
    documents
}

/// A local hub serving an OpenWebText-shaped `Skylion007/openwebtext` (two `plain_text/` parquet files,
/// its card's one config) and GPT-2's tokenizer (`openai-community/gpt2`).
fn openwebtext_hub() -> flame_e2e::fake_hub::FakeHub {
    use flame_e2e::fake_hub::{FakeHub, Repos};
    let card = "---\nconfigs:\n- config_name: plain_text\n  data_files:\n  - split: train\n    path: \
                plain_text/train-*\n  default: true\n---\n# OpenWebText (a test's)\n";
    let tokenizer = shared().join("data/tokenizers/gpt2/tokenizer.json");
    let repos: Repos = [
        (
            "datasets/Skylion007/openwebtext".to_string(),
            vec![
                ("README.md".to_string(), card.as_bytes().to_vec()),
                (
                    "plain_text/train-00000-of-00002.parquet".to_string(),
                    openwebtext_shaped("en-moby-dick.jsonl"),
                ),
                (
                    "plain_text/train-00001-of-00002.parquet".to_string(),
                    openwebtext_shaped("en-jargon-devil.jsonl"),
                ),
            ],
        ),
        (
            "openai-community/gpt2".to_string(),
            vec![(
                "tokenizer.json".to_string(),
                std::fs::read(tokenizer).unwrap(),
            )],
        ),
    ]
    .into_iter()
    .collect();
    FakeHub::start(repos)
}

/// The two commands of the README's GPT-2 recipe (its `sh` block with `--dataset openwebtext`), each
/// split into words.
fn readme_recipe() -> [Vec<String>; 2] {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let at = readme
        .find("--dataset openwebtext --tokenizer gpt2")
        .unwrap();
    let start = readme[..at].rfind("```sh\n").unwrap() + "```sh\n".len();
    let end = start + readme[start..].find("```").unwrap();
    let commands: Vec<Vec<String>> = readme[start..end]
        .replace("\\\n", " ")
        .lines()
        .map(|line| line.split_whitespace().map(ToString::to_string).collect())
        .collect();
    commands.try_into().unwrap()
}

/// Issue 24: flash-attention's GPT-2 recipe, the README's two commands as written, against a local hub
/// serving an OpenWebText-shaped `Skylion007/openwebtext` and GPT-2's tokenizer: `flame-prep --dataset
/// openwebtext --tokenizer gpt2 --append-eod` (every document then ends with GPT-2's `<|endoftext|>`,
/// 50256), then flame-train on that output with GPT-2 (shrunk, the CPU's sizes appended), whose loss falls.
#[test]
fn the_openwebtext_recipe_runs_from_a_hub() {
    let dir = tempfile::tempdir().unwrap();
    let hub = openwebtext_hub();
    let home = dir.path().join("hf-home");
    let env = [
        ("HF_ENDPOINT", hub.endpoint()),
        ("HF_HOME", home.display().to_string()),
        ("HF_HUB_OFFLINE", "0".to_string()),
    ];
    let data = dir.path().join("data");
    let prepared = data.join("openwebtext/default/train");
    let config = dir.path().join("gpt2.json");
    std::fs::write(&config, shrunk(50264, 128)).unwrap();
    let dump = dir.path().join("run");
    // The README's paths, here; its model, shrunk.
    let here = |word: String| match word.as_str() {
        "data" => data.display().to_string(),
        "data/openwebtext/default/train" => prepared.display().to_string(),
        "configs/gpt2-small.json" => config.display().to_string(),
        _ => word,
    };
    let [prep, train] = readme_recipe().map(|c| c.into_iter().map(here).collect::<Vec<_>>());
    assert_eq!(prep[0], "target/release/flame-prep");
    let out = std::process::Command::new(flame_prep())
        .args(&prep[1..])
        .envs(env.iter().map(|(k, v)| (k, v.as_str())))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let documents = documents_ending_with(&prepared, 50256);
    assert!(documents > 2, "{documents} documents");

    let mut argv = train;
    assert_eq!(argv[0], "target/release/flame-train");
    let cpu = "--job.dump_folder DUMP --training.device cpu --training.batch_size 2 \
               --training.seq_len 128 --training.gradient_accumulation_steps 1 --training.steps 30 \
               --optimizer.lr 3e-3 --lr_scheduler.warmup_steps 2 --metrics.log_freq 1";
    argv.extend(
        cpu.replace("DUMP", &dump.display().to_string())
            .split_whitespace()
            .map(ToString::to_string),
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = command(&argv, &env).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let losses: Vec<f64> = logged_losses(&dump).iter().map(|l| l.1).collect();
    assert_eq!(losses.len(), 30, "{losses:?}");
    let (first, last) = (
        losses[..3].iter().sum::<f64>() / 3.0,
        losses[27..].iter().sum::<f64>() / 3.0,
    );
    assert!(last < first - 1.0, "loss {first:.3} -> {last:.3}");
    // The export is GPT-2's, with GPT-2's tokenizer beside it.
    let exported: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dump.join("hf/config.json")).unwrap()).unwrap();
    assert_eq!(exported["architectures"][0], "GPT2LMHeadModel");
    assert!(dump.join("hf/tokenizer.json").is_file());
}

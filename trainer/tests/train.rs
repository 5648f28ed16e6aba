//! flame-train on CPU, fed by a live flame-stream serving real tokenized text (the bundled Mistral
//! fixture, from ../shared/data): the loss falls, a resumed run reproduces the uninterrupted one bit for
//! bit, the export loads in `transformers` with flame-train's logits, and bad setups fail before any step.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};

use clap::Parser;
use flame_streamer::server::{Endpoint, ServerConfig, serve};
use flame_trainer::config::ModelConfig;
use flame_trainer::model::Transformer;
use flame_trainer::parity::write_logits;
use flame_trainer::train::{Args, run};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A served job over the fixture, a tiny model config, and the arguments of a run in `dir`.
fn setup(dir: &Path, seq_len: u32) -> (Endpoint, PathBuf, PathBuf) {
    let socket = dir.join("stream.sock");
    let endpoints = serve(&ServerConfig {
        listen: vec![Endpoint::Unix(socket)],
        token: None,
        max_connections: 16,
        prefetch_depth: 2,
        ..ServerConfig::default()
    })
    .unwrap()
    .endpoints;
    let job = dir.join("job.toml");
    std::fs::write(
        &job,
        format!(
            "seed = 3\nseq_len = {seq_len}\nmicro_batch_size = 2\nglobal_batch_size = 4\n[[datasets]]\npath = \"{}\"\n",
            repo().join("tests/data/golden-mistral").display()
        ),
    )
    .unwrap();
    let config = dir.join("tiny.json");
    std::fs::write(
        &config,
        r#"{"model_type": "transformer", "hidden_size": 32, "num_hidden_layers": 2, "num_heads": 4,
            "num_kv_heads": 2, "vocab_size": 32000, "intermediate_size": 64}"#,
    )
    .unwrap();
    (endpoints[0].clone(), job, config)
}

fn args(endpoint: &Endpoint, job: &Path, config: &Path, dump: &Path, extra: &[&str]) -> Args {
    Args::try_parse_from(argv(endpoint, job, config, dump, extra)).unwrap()
}

fn argv(
    endpoint: &Endpoint,
    job: &Path,
    config: &Path,
    dump: &Path,
    extra: &[&str],
) -> Vec<String> {
    let mut argv: Vec<String> = [
        "flame-train",
        "--model.config",
        config.to_str().unwrap(),
        "--data-endpoint",
        &endpoint.to_string(),
        "--data-job",
        job.to_str().unwrap(),
        "--job.dump_folder",
        dump.to_str().unwrap(),
        "--training.device",
        "cpu",
        "--training.batch_size",
        "2",
        "--training.gradient_accumulation_steps",
        "2",
        "--training.seq_len",
        "64",
        "--training.varlen",
        "--optimizer.lr",
        "3e-3",
        "--lr_scheduler.warmup_steps",
        "2",
        "--metrics.log_freq",
        "5",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    argv.extend(extra.iter().map(ToString::to_string));
    argv
}

#[test]
fn the_loss_falls_and_the_export_is_a_llama_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (endpoint, job, config) = setup(dir.path(), 64);
    let dump = dir.path().join("run");
    let summary = run(&args(
        &endpoint,
        &job,
        &config,
        &dump,
        &["--training.steps", "40"],
    ))
    .unwrap();
    let losses: Vec<f64> = summary.losses.iter().map(|l| l.1).collect();
    let (first, last) = (
        losses[..3].iter().sum::<f64>() / 3.0,
        losses[37..].iter().sum::<f64>() / 3.0,
    );
    assert!(last < first - 1.0, "loss {first:.3} -> {last:.3}");
    let hf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(summary.export.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(hf["architectures"][0], "LlamaForCausalLM");
    assert_eq!(hf["num_key_value_heads"], 2);
    let tensors = tch::Tensor::read_safetensors(summary.export.join("model.safetensors")).unwrap();
    let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    for name in [
        "model.embed_tokens.weight",
        "model.layers.1.self_attn.k_proj.weight",
        "model.norm.weight",
        "lm_head.weight",
    ] {
        assert!(names.contains(&name), "{name} not in {names:?}");
    }
    let metrics = std::fs::read_to_string(dump.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 9, "steps 1, 5, 10, …, 40");
    assert!(metrics.contains("data_loading_pct"));
    // transformers loads the export and computes flame-train's logits from it.
    let trained = tch::nn::VarStore::new(tch::Device::Cpu);
    let model = Transformer::new(&trained.root(), &ModelConfig::load(&config).unwrap());
    let mut trained = trained;
    trained
        .load(summary.export.join("model.safetensors"))
        .unwrap();
    write_logits(&model, &dump.join("logits.safetensors")).unwrap();
    let output = std::process::Command::new(python())
        .arg(repo().join("tools/interop/hf_parity.py"))
        .arg(&dump)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("ok"),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The interop venv's interpreter (tools/setup-python.sh: torch and transformers on the CPU).
fn python() -> PathBuf {
    let output = std::process::Command::new("bash")
        .arg(repo().join("tools/setup-python.sh"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

#[test]
fn a_resumed_run_reproduces_the_uninterrupted_losses_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let (endpoint, job, config) = setup(dir.path(), 64);
    let whole = run(&args(
        &endpoint,
        &job,
        &config,
        &dir.path().join("a"),
        &["--training.steps", "8", "--checkpoint.interval", "4"],
    ))
    .unwrap();
    let dump = dir.path().join("b");
    let flags = [
        "--training.steps",
        "8",
        "--checkpoint.interval",
        "4",
        "--checkpoint.keep_latest_k",
        "2",
    ];
    run(&args(&endpoint, &job, &config, &dump, &flags)).unwrap();
    let mut resumed_flags = flags.to_vec();
    resumed_flags.extend(["--checkpoint.load_step", "4"]);
    let resumed = run(&args(&endpoint, &job, &config, &dump, &resumed_flags)).unwrap();
    assert_eq!(resumed.losses.first().unwrap().0, 5);
    assert_eq!(
        resumed.losses,
        whole.losses[4..],
        "steps 5..8 after resuming at 4"
    );
    // -1 resumes from the latest: step 8, the end, so nothing is left to do.
    resumed_flags.pop();
    resumed_flags.push("-1");
    assert!(
        run(&args(&endpoint, &job, &config, &dump, &resumed_flags))
            .unwrap()
            .losses
            .is_empty()
    );
}

#[test]
fn bad_setups_fail_before_any_step_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (endpoint, job, config) = setup(dir.path(), 32);
    let dump = dir.path().join("run");
    let steps = ["--training.steps", "2"];
    // The data job serves 32-token samples; the run trains 64.
    let err = run(&args(&endpoint, &job, &config, &dump, &steps))
        .unwrap_err()
        .to_string();
    assert!(err.contains("seq_len 32"), "{err}");
    assert!(!dump.join("checkpoint").exists());
    // Nothing listens there.
    let nowhere = Endpoint::Unix(dir.path().join("nobody.sock"));
    let mut a = args(&nowhere, &job, &config, &dump, &steps);
    a.seq_len = 32;
    let err = format!("{:#}", run(&a).unwrap_err());
    assert!(err.contains("nobody.sock"), "{err}");
    // A vocabulary smaller than the stream's ids.
    std::fs::write(&config, r#"{"model_type": "transformer", "hidden_size": 32, "num_hidden_layers": 1, "num_heads": 4, "vocab_size": 100}"#).unwrap();
    let mut a = args(&endpoint, &job, &config, &dump, &steps);
    a.seq_len = 32;
    let err = run(&a).unwrap_err().to_string();
    assert!(
        err.contains("outside the model's vocabulary of 100"),
        "{err}"
    );
    // A corrupt checkpoint.
    let ckpt = dump.join("checkpoint/step-1");
    std::fs::create_dir_all(&ckpt).unwrap();
    std::fs::write(ckpt.join("train_state.json"), "{not json").unwrap();
    let mut a = args(
        &endpoint,
        &job,
        &config,
        &dump,
        &["--training.steps", "2", "--checkpoint.load_step", "1"],
    );
    a.seq_len = 32;
    let err = format!("{:#}", run(&a).unwrap_err());
    assert!(
        err.contains("step-1") && err.contains("train_state.json"),
        "{err}"
    );
}

#[test]
fn a_config_file_supplies_the_flags_and_the_command_line_overrides_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("train.toml");
    std::fs::write(
        &file,
        r#"
        data-endpoint = "unix:///tmp/from-file.sock"
        data-job = "job.toml"
        [model]
        config = "configs/transformer_340M.json"
        name = "transformer"          # torchtitan's, not ours: skipped
        [optimizer]
        lr = 3e-4
        eps = 1e-15
        [lr_scheduler]
        decay_type = "cosine"
        [training]
        steps = 100
        varlen = true
        seq_len = 4096
        [checkpoint]
        enable_checkpoint = false
        "#,
    )
    .unwrap();
    let argv = |extra: &[&str]| {
        let mut v = vec![
            "flame-train".to_string(),
            "--job.config_file".into(),
            file.display().to_string(),
        ];
        v.extend(extra.iter().map(ToString::to_string));
        v
    };
    let args = Args::parse_with_config_file(argv(&[])).unwrap();
    assert_eq!(
        (args.steps, args.seq_len, args.lr, args.eps),
        (100, 4096, 3e-4, 1e-15)
    );
    assert!(args.varlen && !args.enable_checkpoint);
    assert_eq!(
        args.model_config,
        PathBuf::from("configs/transformer_340M.json")
    );
    assert_eq!(args.decay_type, flame_trainer::schedule::DecayType::Cosine);
    let args = Args::parse_with_config_file(argv(&["--training.steps", "7"])).unwrap();
    assert_eq!(args.steps, 7, "the command line wins");
    std::fs::write(&file, "[training]\nsteps = \"many\"\n").unwrap();
    assert!(Args::parse_with_config_file(argv(&["--model.config", "x.json"])).is_err());
}

/// The losses flame-train logged in `dump/metrics.jsonl`, by step.
fn logged_losses(dump: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(dump.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            (row["step"].as_u64().unwrap(), row["loss"].as_f64().unwrap())
        })
        .collect()
}

fn assert_close(a: &[(u64, f64)], b: &[(u64, f64)], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: {a:?} vs {b:?}");
    for ((step_a, x), (step_b, y)) in a.iter().zip(b) {
        assert_eq!(step_a, step_b, "{what}");
        assert!(
            (x - y).abs() <= 1e-5 * x.abs(),
            "{what}: step {step_a}: {x} vs {y}"
        );
    }
}

#[test]
fn two_ranks_train_as_one_with_accumulation_and_checkpoints_resume_across_world_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let (endpoint, job, config) = setup(dir.path(), 64);
    let flags = [
        "--training.steps",
        "10",
        "--checkpoint.interval",
        "5",
        "--metrics.log_freq",
        "1",
    ];
    // Two processes on the CPU (flame-train --nproc-per-node 2), each 2 samples a step: gradients
    // averaged over the rendezvous's connections.
    let two = dir.path().join("two");
    let mut two_flags = flags.to_vec();
    two_flags.extend([
        "--training.gradient_accumulation_steps",
        "1",
        "--nproc-per-node",
        "2",
    ]);
    launch(&argv(&endpoint, &job, &config, &two, &two_flags));
    // One process, accumulating the same 4 samples over 2 micro-batches.
    let one = run(&args(
        &endpoint,
        &job,
        &config,
        &dir.path().join("one"),
        &flags,
    ))
    .unwrap();
    assert_close(
        &logged_losses(&two),
        &one.losses,
        "2 ranks vs 1 rank with accumulation",
    );
    // The 2-rank checkpoint of step 5 resumes on 1 rank with the same data.
    let resumed = dir.path().join("resumed");
    copy_dir(
        &two.join("checkpoint/step-5"),
        &resumed.join("checkpoint/step-5"),
    );
    let mut resume_flags = flags.to_vec();
    resume_flags.extend(["--checkpoint.load_step", "-1"]);
    let after = run(&args(&endpoint, &job, &config, &resumed, &resume_flags)).unwrap();
    assert_close(
        &after.losses,
        &logged_losses(&two)[5..],
        "resumed on 1 rank",
    );
    // And the reverse: the 1-rank checkpoint of step 5 resumes on 2 ranks.
    let widened = dir.path().join("widened");
    copy_dir(
        &dir.path().join("one/checkpoint/step-5"),
        &widened.join("checkpoint/step-5"),
    );
    let mut widen_flags = two_flags.clone();
    widen_flags.extend(["--checkpoint.load_step", "5"]);
    launch(&argv(&endpoint, &job, &config, &widened, &widen_flags));
    assert_close(
        &logged_losses(&widened),
        &one.losses[5..],
        "resumed on 2 ranks",
    );
}

/// Runs the flame-train binary with `argv` (whose first element is the program name), outside any
/// launcher's environment, and checks that it succeeds.
fn launch(argv: &[String]) {
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_flame-train"))
        .args(&argv[1..])
        .env_remove("RANK")
        .env_remove("SLURM_PROCID")
        .status()
        .unwrap();
    assert!(status.success(), "flame-train {:?}: {status}", &argv[1..]);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

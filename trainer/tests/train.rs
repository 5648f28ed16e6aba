//! flame-train on CPU, fed by a live flame-stream serving real tokenized text (the bundled Mistral
//! fixture, from ../shared/data): the loss falls, a resumed run reproduces the uninterrupted one bit for
//! bit, the export loads in `transformers` with flame-train's logits, and bad setups fail before any step.

use std::path::{Path, PathBuf};

use crate::util::{
    command, copy_dir, hf_parity, launch, names_in, repo, shared, transformers_checkpoints,
};

use clap::Parser;
use flame_streamer::server::{Endpoint, ServerConfig, serve};
use flame_trainer::config::ModelConfig;
use flame_trainer::models::CausalLm;
use flame_trainer::parity::write_logits;
use flame_trainer::train::{Args, run};

/// A served job over the fixture, a tiny model config, and the arguments of a run in `dir`.
pub fn setup(dir: &Path, seq_len: u32) -> (Endpoint, PathBuf, PathBuf) {
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

/// Trains `config` on `job` for 24 steps of 128 tokens in `dump`, checkpointing every 12 steps (plus
/// `extra`): asserts that the loss falls by more than 0.5 and that a run resumed at step 12 logs the
/// uninterrupted run's losses bit for bit (`what` names the case in failures).
pub fn trains_and_resumes_exactly(
    endpoint: &Endpoint,
    job: &Path,
    config: &Path,
    dump: &Path,
    what: &str,
) {
    let flags = [
        "--training.steps",
        "24",
        "--training.seq_len",
        "128",
        "--checkpoint.interval",
        "12",
    ];
    let whole = run(&args(endpoint, job, config, dump, &flags)).unwrap();
    let losses: Vec<f64> = whole.losses.iter().map(|l| l.1).collect();
    let (first, last) = (
        losses[..3].iter().sum::<f64>() / 3.0,
        losses[21..].iter().sum::<f64>() / 3.0,
    );
    assert!(last < first - 0.5, "{what}: loss {first:.3} -> {last:.3}");
    let mut resume = flags.to_vec();
    resume.extend(["--checkpoint.load_step", "12"]);
    let resumed = run(&args(endpoint, job, config, dump, &resume)).unwrap();
    assert_eq!(resumed.losses, whole.losses[12..], "{what}: resumed at 12");
}

pub fn args(endpoint: &Endpoint, job: &Path, config: &Path, dump: &Path, extra: &[&str]) -> Args {
    Args::try_parse_from(argv(endpoint, job, config, dump, extra)).unwrap()
}

/// The arguments of a `steps`-step run in `dump` that starts from the Hugging Face checkpoint `from`
/// (`--checkpoint.initial_load_path`), its `config.json` giving the model (no `--model.config`).
pub fn from_checkpoint(
    endpoint: &Endpoint,
    job: &Path,
    dump: &Path,
    from: &Path,
    steps: u64,
) -> Args {
    let (steps, from) = (steps.to_string(), from.display().to_string());
    let flags = [
        "--training.steps",
        steps.as_str(),
        "--checkpoint.initial_load_path",
        from.as_str(),
    ];
    let mut a = args(endpoint, job, Path::new("unused.json"), dump, &flags);
    a.model_config = None;
    a
}

pub fn argv(
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
    let model = CausalLm::new(&trained.root(), &ModelConfig::load(&config).unwrap());
    let mut trained = trained;
    trained
        .load(summary.export.join("model.safetensors"))
        .unwrap();
    write_logits(&model, &dump.join("logits.safetensors")).unwrap();
    hf_parity(&[&dump], None);
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
    // An interval in seconds longer than the run: the last step's checkpoint only.
    let hourly = dir.path().join("hourly");
    let hourly_flags = [
        "--training.steps",
        "8",
        "--checkpoint.interval_type",
        "seconds",
        "--checkpoint.interval",
        "3600",
    ];
    run(&args(&endpoint, &job, &config, &hourly, &hourly_flags)).unwrap();
    assert_eq!(names_in(&hourly.join("checkpoint")), ["step-8"]);
    let dump = dir.path().join("b");
    let flags = [
        "--training.steps",
        "8",
        "--checkpoint.interval",
        "4",
        "--checkpoint.keep_latest_k",
        "2",
        // flame's folder flags: the resumed run finds its checkpoints there too.
        "--checkpoint.folder",
        "ckpt",
        "--metrics.save_tb_folder",
        "board",
    ];
    // This run's own losses are the reference: libtorch's random generator is the process's, and the
    // tests running beside this one may draw from it while a run initialises its weights.
    let uninterrupted = run(&args(&endpoint, &job, &config, &dump, &flags)).unwrap();
    assert_eq!(uninterrupted.losses.len(), whole.losses.len());
    let mut resumed_flags = flags.to_vec();
    resumed_flags.extend(["--checkpoint.load_step", "4"]);
    let resumed = run(&args(&endpoint, &job, &config, &dump, &resumed_flags)).unwrap();
    assert_eq!(resumed.losses.first().unwrap().0, 5);
    assert_eq!(
        resumed.losses,
        uninterrupted.losses[4..],
        "steps 5..8 after resuming at 4"
    );
    assert!(dump.join("ckpt/step-8").is_dir() && !dump.join("checkpoint").exists());
    // A seed checkpoint is step 0 of a fresh run: resuming it trains the uninterrupted run's steps.
    let seeded = dir.path().join("seeded");
    let mut seed_flags = flags.to_vec();
    seed_flags.push("--checkpoint.create_seed_checkpoint");
    assert!(
        run(&args(&endpoint, &job, &config, &seeded, &seed_flags))
            .unwrap()
            .losses
            .is_empty()
    );
    assert!(seeded.join("ckpt/step-0").is_dir());
    // Runs of other seeds would initialise other weights: equal losses show the seed's were loaded.
    let from_seed = |seed: &str| {
        let mut f = flags.to_vec();
        f.extend(["--checkpoint.load_step", "0", "--training.seed", seed]);
        let dump = dir.path().join(format!("from-seed-{seed}"));
        copy_dir(&seeded, &dump);
        run(&args(&endpoint, &job, &config, &dump, &f))
            .unwrap()
            .losses
    };
    let after_seed = from_seed("7");
    assert_eq!(after_seed.len(), 8);
    assert_eq!(after_seed, from_seed("9"), "steps 1..8 from the seed");
    assert!(
        !flame_trainer::tensorboard::read_scalars(&dump.join("board"))
            .unwrap()
            .is_empty()
            && !dump.join("tb").exists()
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

/// torchtitan's profiling flags: every `profile_freq`-th step is traced by libtorch's profiler into a
/// Chrome trace of its operators.
#[test]
fn profiled_steps_leave_chrome_traces() {
    let dir = tempfile::tempdir().unwrap();
    let (endpoint, job, config) = setup(dir.path(), 64);
    let dump = dir.path().join("run");
    let flags = [
        "--training.steps",
        "4",
        "--profiling.enable_profiling",
        "--profiling.profile_freq",
        "2",
        "--profiling.save_traces_folder",
        "traces",
    ];
    run(&args(&endpoint, &job, &config, &dump, &flags)).unwrap();
    assert_eq!(
        names_in(&dump.join("traces")),
        ["iteration_2", "iteration_4"]
    );
    let trace = dump.join("traces/iteration_4/rank0_trace.json");
    let trace: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let names: Vec<&str> = trace["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    // The step's matrix products, forward and backward.
    assert!(
        names
            .iter()
            .any(|n| *n == "aten::mm" || *n == "aten::addmm"),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n.contains("Backward")), "{names:?}");
}

/// torchtitan's `model_weights_only`: the last checkpoint is the weights alone, in `export_dtype`; the
/// earlier ones stay whole, and a run cannot resume from the weights alone.
#[test]
fn the_last_checkpoint_can_be_the_weights_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (endpoint, job, config) = setup(dir.path(), 64);
    let dump = dir.path().join("run");
    let flags = [
        "--training.steps",
        "4",
        "--checkpoint.interval",
        "2",
        "--checkpoint.model_weights_only",
        "--checkpoint.export_dtype",
        "bfloat16",
    ];
    run(&args(&endpoint, &job, &config, &dump, &flags)).unwrap();
    let files = |step: u32| names_in(&dump.join(format!("checkpoint/step-{step}")));
    assert_eq!(
        files(2),
        [
            "model.safetensors",
            "optimizer.safetensors",
            "train_state.json"
        ]
    );
    assert_eq!(files(4), ["model.safetensors"]);
    let weights =
        tch::Tensor::read_safetensors(dump.join("checkpoint/step-4/model.safetensors")).unwrap();
    assert!(!weights.is_empty());
    assert!(weights.iter().all(|(_, t)| t.kind() == tch::Kind::BFloat16));
    let mut resume = flags.to_vec();
    resume.extend(["--checkpoint.load_step", "4"]);
    let err = format!(
        "{:#}",
        run(&args(&endpoint, &job, &config, &dump, &resume)).unwrap_err()
    );
    assert!(
        err.contains("step-4") && err.contains("weights alone"),
        "{err}"
    );
}

/// `named` as a Hugging Face checkpoint of two shards and their `model.safetensors.index.json` in `dir`.
fn write_two_shards(dir: &Path, named: &[(String, tch::Tensor)]) {
    std::fs::create_dir_all(dir).unwrap();
    let mut weight_map = serde_json::Map::new();
    let half = named.len() / 2;
    for (i, part) in [&named[..half], &named[half..]].into_iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        for (name, _) in part {
            weight_map.insert(name.clone(), serde_json::json!(file));
        }
        tch::Tensor::write_safetensors(part, dir.join(&file)).unwrap();
    }
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::json!({ "weight_map": weight_map }).to_string(),
    )
    .unwrap();
}

/// torchtitan's `--checkpoint.initial_load_path`: a fresh run starts from a Hugging Face checkpoint's
/// weights (here flame-train's own export, which `transformers` loads in `the_loss_falls_...`); a
/// checkpoint that lacks a weight or has one too many is refused, naming it.
#[test]
fn a_run_starts_from_a_hugging_face_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (endpoint, job, config) = setup(dir.path(), 64);
    let first = dir.path().join("first");
    run(&args(
        &endpoint,
        &job,
        &config,
        &first,
        &["--training.steps", "3"],
    ))
    .unwrap();
    let hf = first.join("hf");
    let read = |path: &Path| {
        let mut named = tch::Tensor::read_safetensors(path).unwrap();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named
    };
    let exported = read(&hf.join("model.safetensors"));
    // The loaded weights, as a seed checkpoint writes them.
    let second = dir.path().join("second");
    let hf_flag = hf.display().to_string();
    let flags = [
        "--training.steps",
        "3",
        "--checkpoint.initial_load_path",
        hf_flag.as_str(),
        "--checkpoint.create_seed_checkpoint",
    ];
    run(&args(&endpoint, &job, &config, &second, &flags)).unwrap();
    let loaded = read(&second.join("checkpoint/step-0/model.safetensors"));
    // Without --model.config the checkpoint's config.json (the export's Llama config) gives the model.
    let mut no_config = args(
        &endpoint,
        &job,
        &config,
        &dir.path().join("no-config"),
        &flags,
    );
    no_config.model_config = None;
    run(&no_config).unwrap();
    assert_eq!(loaded.len(), exported.len());
    for ((a, x), (b, y)) in loaded.iter().zip(&exported) {
        assert_eq!(a, b);
        assert!(x.equal(y), "{a} differs from the checkpoint's");
    }
    // The same weights in two shards with their index, as large checkpoints come.
    let sharded = dir.path().join("sharded");
    write_two_shards(&sharded, &exported);
    let third = dir.path().join("third");
    let sharded_flag = sharded.display().to_string();
    let mut sharded_flags = flags;
    sharded_flags[3] = sharded_flag.as_str();
    run(&args(&endpoint, &job, &config, &third, &sharded_flags)).unwrap();
    let from_shards = read(&third.join("checkpoint/step-0/model.safetensors"));
    assert!(
        from_shards
            .iter()
            .zip(&loaded)
            .all(|((a, x), (b, y))| a == b && x.equal(y))
    );
    // One weight too few, then one too many.
    let broken = dir.path().join("broken");
    for (i, (edit, said)) in [
        (1usize, "no model.norm.weight in the checkpoint"),
        (2, "weights the model has no place for, extra.weight"),
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::create_dir_all(&broken).unwrap();
        let mut named: Vec<(String, tch::Tensor)> = exported
            .iter()
            .filter(|(n, _)| edit != 1 || n != "model.norm.weight")
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        if edit == 2 {
            named.push((
                "extra.weight".into(),
                tch::Tensor::zeros([2], (tch::Kind::Float, tch::Device::Cpu)),
            ));
        }
        tch::Tensor::write_safetensors(&named, broken.join("model.safetensors")).unwrap();
        let broken_flag = broken.display().to_string();
        let flags = [
            "--training.steps",
            "1",
            "--checkpoint.initial_load_path",
            broken_flag.as_str(),
        ];
        let dump = dir.path().join(format!("refused-{i}"));
        let err = format!(
            "{:#}",
            run(&args(&endpoint, &job, &config, &dump, &flags)).unwrap_err()
        );
        assert!(err.contains(said), "{err}");
    }
}

/// Issue 20: checkpoints that `transformers` itself wrote (`tools/interop/hf_checkpoint.py`: a Mistral
/// with grouped-query attention, its RoPE base in transformers 5's `rope_parameters` and its default
/// 4096-token sliding window; a Llama with tied embeddings) load through their own `config.json` and
/// give transformers' logits in flame-train (`hf_parity.py`, 1e-4, whole windows and packed documents);
/// a run starts from one without `--model.config` and exports it as the Mistral it is; a window shorter
/// than the run's attention span is refused before any step.
#[test]
fn checkpoints_transformers_wrote_give_its_logits_and_train_on() {
    let dir = tempfile::tempdir().unwrap();
    let cases = transformers_checkpoints(&dir.path().join("cases"));
    for case in ["mistral", "llama"] {
        let hf = cases.join(case).join("hf");
        let config = ModelConfig::load(&hf.join("config.json")).unwrap();
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let model = CausalLm::new(&vs.root(), &config);
        flame_trainer::export::load_hf_weights(&hf, &vs).unwrap();
        write_logits(&model, &cases.join(case).join("logits.safetensors")).unwrap();
    }
    let stdout = hf_parity(&[&cases.join("mistral"), &cases.join("llama")], None);
    assert!(
        stdout.contains("mistral:") && stdout.contains("llama:"),
        "{stdout}"
    );
    // Training goes on from the Mistral checkpoint, its config.json giving the model.
    let (endpoint, job, _) = setup(dir.path(), 64);
    let mistral = cases.join("mistral/hf");
    let run_dir = dir.path().join("run");
    let summary = run(&from_checkpoint(&endpoint, &job, &run_dir, &mistral, 2)).unwrap();
    assert_eq!(summary.losses.len(), 2);
    let exported: serde_json::Value =
        serde_json::from_slice(&std::fs::read(summary.export.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(exported["architectures"][0], "MistralForCausalLM");
    assert_eq!(exported["sliding_window"], 4096);
    // The same model with a 32-token window cannot train on 64-token samples.
    let narrow = dir.path().join("narrow");
    copy_dir(&mistral, &narrow);
    let text = std::fs::read_to_string(narrow.join("config.json")).unwrap();
    std::fs::write(
        narrow.join("config.json"),
        text.replace("\"sliding_window\": 4096", "\"sliding_window\": 32"),
    )
    .unwrap();
    let refused = from_checkpoint(&endpoint, &job, &dir.path().join("refused"), &narrow, 1);
    let err = format!("{:#}", run(&refused).unwrap_err());
    assert!(
        err.contains("window_size 32") && err.contains("seq_len 64"),
        "{err}"
    );
}

/// Issue 20: `--model.config` and `--checkpoint.initial_load_path` take hub model ids, as flame's
/// `fla.toml` does (`fla-hub/transformer-1.3B-100B`): fetched from a local hub into `HF_HOME`'s cache,
/// then found there offline; an id neither has is refused naming the flag.
#[test]
fn model_configs_and_checkpoints_come_from_the_hub_by_id() {
    use flame_e2e::fake_hub::{FakeHub, Repos, dead_endpoint};
    let dir = tempfile::tempdir().unwrap();
    let (endpoint, job, config) = setup(dir.path(), 64);
    let cases = transformers_checkpoints(&dir.path().join("cases"));
    let file =
        |path: &Path, name: &str| (name.to_string(), std::fs::read(path.join(name)).unwrap());
    let mistral = cases.join("mistral/hf");
    let repos: Repos = [
        (
            "fla-hub/transformer-tiny".to_string(),
            vec![("config.json".to_string(), std::fs::read(&config).unwrap())],
        ),
        (
            "org/mistral-tiny".to_string(),
            vec![
                file(&mistral, "config.json"),
                file(&mistral, "model.safetensors"),
            ],
        ),
    ]
    .into_iter()
    .collect();
    let hub = FakeHub::start(repos);
    let hf_home = dir.path().join("hf-home");
    let (online, home) = (hub.endpoint(), hf_home.display().to_string());
    let dead = dead_endpoint();
    let train = |name: &str, flags: &[&str], env: &[(&str, &str)]| {
        let mut argv = argv(&endpoint, &job, &config, &dir.path().join(name), flags);
        let at = argv.iter().position(|a| a == "--model.config").unwrap();
        argv.drain(at..at + 2);
        command(&argv, env).output().unwrap()
    };
    let steps = ["--training.steps", "2"];
    let by_id = [&steps[..], &["--model.config", "fla-hub/transformer-tiny"]].concat();
    for (name, env) in [
        (
            "online",
            [("HF_ENDPOINT", online.as_str()), ("HF_HOME", home.as_str())],
        ),
        (
            "offline",
            [("HF_ENDPOINT", dead.as_str()), ("HF_HOME", home.as_str())],
        ),
    ] {
        let mut env = env.to_vec();
        if name == "offline" {
            env.push(("HF_HUB_OFFLINE", "1"));
        }
        let out = train(name, &by_id, &env);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let fetched = |what: &str| {
        let requests = hub.requests.lock().unwrap();
        requests.iter().any(|(url, _)| url.contains(what))
    };
    assert!(fetched("transformer-tiny/resolve/"));
    let load = [
        &steps[..],
        &["--checkpoint.initial_load_path", "org/mistral-tiny"],
    ]
    .concat();
    let env = [("HF_ENDPOINT", online.as_str()), ("HF_HOME", home.as_str())];
    let out = train("mistral", &load, &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exported = std::fs::read_to_string(dir.path().join("mistral/hf/config.json")).unwrap();
    assert!(exported.contains("MistralForCausalLM"), "{exported}");
    assert!(fetched("mistral-tiny/resolve/"));
    let nope = [&steps[..], &["--model.config", "fla-hub/no-such-model"]].concat();
    let out = train("nope", &nope, &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--model.config fla-hub/no-such-model"),
        "{stderr}"
    );
}

/// Issue 20: flame's data flags without `--data-endpoint` or `--data-job`: flame-train runs
/// flame-stream's server in its own process on raw datasets named as flame names them (two local
/// jsonl files through the `json` builder, shares 3:1, the Mistral tokenizer, tokenized while served).
/// The same flags sent to a separate flame-stream give the same losses, bit for bit, and a run started
/// again from its step-3 checkpoint ends with the uninterrupted run's losses.
#[test]
fn datasets_by_name_train_in_process_as_on_a_server_and_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (endpoint, _, config) = setup(dir.path(), 64);
    let corpus = shared().join("data/corpus/jsonl");
    let files = format!(
        "{},{}",
        corpus.join("en-moby-dick.jsonl").display(),
        corpus.join("en-jargon-devil.jsonl").display()
    );
    let tokenizer = shared().join("data/tokenizers/mistral-7b-v0.1/tokenizer.json");
    let endpoint = endpoint.to_string();
    let by_name = |dump: &str, extra: &[&str]| {
        let dump = dir.path().join(dump);
        let mut argv: Vec<String> = [
            "flame-train",
            "--model.config",
            config.to_str().unwrap(),
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
            "--training.steps",
            "6",
            "--checkpoint.interval",
            "3",
            "--metrics.log_freq",
            "1",
            "--lr_scheduler.warmup_steps",
            "2",
            "--training.dataset",
            "json,json",
            "--training.data_files",
            &files,
            "--training.data_probs",
            "0.75,0.25",
            "--model.tokenizer_path",
            tokenizer.to_str().unwrap(),
            "--training.streaming",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        argv.extend(extra.iter().map(ToString::to_string));
        let out = command(&argv, &[]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        (dump, stderr)
    };
    let whole = logged_losses(&by_name("in-process", &[]).0);
    assert_eq!(whole.len(), 6);
    let served = logged_losses(&by_name("served", &["--data-endpoint", &endpoint]).0);
    assert_eq!(served, whole, "in-process service vs flame-stream");
    let resumed = dir.path().join("resumed");
    copy_dir(
        &dir.path().join("in-process/checkpoint/step-3"),
        &resumed.join("checkpoint/step-3"),
    );
    let after = logged_losses(&by_name("resumed", &["--checkpoint.load_step", "-1"]).0);
    assert_eq!(after, whole[3..], "resumed from step 3");
    // Two local ranks share one service, the launcher's: both are handed its socket.
    let (two, said) = by_name(
        "two-ranks",
        &[
            "--nproc-per-node",
            "2",
            "--training.gradient_accumulation_steps",
            "1",
            "--job.print_args",
        ],
    );
    assert_close(
        &logged_losses(&two),
        &whole,
        "2 ranks vs 1 with accumulation",
    );
    // The ranks print their arguments at once, so the lines may interleave: collect every whole
    // socket path (a rank that ran its own service would print none).
    let sockets: std::collections::BTreeSet<&str> = said
        .match_indices("flame-train-data-")
        .filter_map(|(at, _)| {
            let rest = &said[at..];
            let end = rest.find("/data.sock")? + "/data.sock".len();
            rest[..end]
                .chars()
                .all(|c| !c.is_whitespace())
                .then(|| &rest[..end])
        })
        .collect();
    assert_eq!(sockets.len(), 1, "{said}");
}

/// Issue 20: flame's README recipe, flag for flag (`--job.config_file fla.toml`, fineweb-edu's
/// `sample-100BT` streamed, the tokenizer by hub id, `--training.compile`, ...), with a tiny model config
/// and the CPU's sizes appended (3 steps of 512 tokens, documents cut at 128): against a local hub that
/// serves a fineweb-edu-shaped dataset (one real parquet file of the shared corpus) and the tokenizer
/// repository, then once more offline from the caches that run left.
#[test]
fn flames_readme_recipe_runs_from_a_hub_then_offline() {
    use flame_e2e::fake_hub::{FakeHub, Repos, dead_endpoint};
    let dir = tempfile::tempdir().unwrap();
    let (_, _, config) = setup(dir.path(), 64);
    let card = "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: \
                data/*/*\n- config_name: sample-100BT\n  data_files:\n  - split: train\n    path: \
                sample/100BT/*\n---\n";
    let parquet = shared().join("data/corpus/fineweb-edu-schema/data/train-00001-of-00002.parquet");
    let tokenizer = shared().join("data/tokenizers/mistral-7b-v0.1/tokenizer.json");
    let repos: Repos = [
        (
            "datasets/HuggingFaceFW/fineweb-edu".to_string(),
            vec![
                ("README.md".to_string(), card.as_bytes().to_vec()),
                (
                    "sample/100BT/000_00000.parquet".to_string(),
                    std::fs::read(parquet).unwrap(),
                ),
            ],
        ),
        (
            "fla-hub/transformer-1.3B-100B".to_string(),
            vec![(
                "tokenizer.json".to_string(),
                std::fs::read(tokenizer).unwrap(),
            )],
        ),
    ]
    .into_iter()
    .collect();
    let hub = FakeHub::start(repos);
    let fla_toml = shared().join("reference/flame-configs/fla.toml");
    let recipe = |dump: &Path| -> Vec<String> {
        let mut argv = vec![
            "flame-train".to_string(),
            "--job.config_file".into(),
            fla_toml.display().to_string(),
            "--job.dump_folder".into(),
            dump.join("exp/transformer-340M-4K-10B/batch1.seqlen65536.context4096.warmup1024.update1.steps20480.lr3e-4.cosine")
                .display()
                .to_string(),
            "--model.config".into(),
            config.display().to_string(),
        ];
        let flags = "--model.tokenizer_path fla-hub/transformer-1.3B-100B \
            --optimizer.name AdamW --optimizer.eps 1e-15 --optimizer.lr 3e-4 \
            --lr_scheduler.warmup_steps 1024 --lr_scheduler.lr_min 0.1 --lr_scheduler.decay_type cosine \
            --training.batch_size 1 --training.seq_len 65536 --training.context_len 4096 --training.varlen \
            --training.gradient_accumulation_steps 1 --training.steps 20480 --training.max_norm 1.0 \
            --training.skip_nan_inf --training.dataset HuggingFaceFW/fineweb-edu \
            --training.dataset_name sample-100BT --training.dataset_split train --training.streaming \
            --training.num_workers 32 --training.prefetch_factor 2 --training.seed 42 --training.compile \
            --checkpoint.interval 2048 --checkpoint.load_step -1 --checkpoint.keep_latest_k 2 \
            --metrics.log_freq 1 \
            --training.device cpu --training.steps 3 --training.seq_len 512 --training.context_len 128";
        argv.extend(flags.split_whitespace().map(ToString::to_string));
        argv
    };
    let (home, cache) = (dir.path().join("hf-home"), dir.path().join("flame-cache"));
    let (home, cache) = (home.display().to_string(), cache.display().to_string());
    let (online, dead) = (hub.endpoint(), dead_endpoint());
    for (name, endpoint, offline) in [("online", &online, "0"), ("offline", &dead, "1")] {
        let dump = dir.path().join(name);
        let env = [
            ("HF_ENDPOINT", endpoint.as_str()),
            ("HF_HOME", home.as_str()),
            ("HF_HUB_OFFLINE", offline),
            ("FLAME_CACHE", cache.as_str()),
        ];
        let out = command(&recipe(&dump), &env).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {stderr}");
        let run = dump.join("exp/transformer-340M-4K-10B");
        let run = run.join(names_in(&run).remove(0));
        let losses = logged_losses(&run);
        assert_eq!(losses.len(), 3, "{name}: {losses:?}");
        assert!(
            losses.iter().all(|(_, l)| l.is_finite() && *l > 5.0),
            "{name}: {losses:?}"
        );
    }
    let requests = hub.requests.lock().unwrap();
    assert!(
        requests
            .iter()
            .any(|(url, _)| url.contains("000_00000.parquet"))
    );
}

/// Issue 20: `--training.deterministic` (torchtitan's) puts libtorch in deterministic mode, read back
/// from libtorch, with cuBLAS's deterministic workspace set before CUDA could start; two such runs log
/// the same losses bit for bit.
#[test]
fn deterministic_runs_say_so_and_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let (endpoint, job, config) = setup(dir.path(), 64);
    let flags = [
        "--training.steps",
        "3",
        "--metrics.log_freq",
        "1",
        "--training.deterministic",
    ];
    let mut losses = Vec::new();
    for name in ["a", "b"] {
        let dump = dir.path().join(name);
        let argv = argv(&endpoint, &job, &config, &dump, &flags);
        let out = command(&argv, &[])
            .env_remove("CUBLAS_WORKSPACE_CONFIG")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(
            stderr.contains("deterministic algorithms only")
                && stderr.contains("CUBLAS_WORKSPACE_CONFIG=:4096:8"),
            "{stderr}"
        );
        losses.push(logged_losses(&dump));
    }
    assert_eq!(losses[0].len(), 3);
    assert_eq!(losses[0], losses[1]);
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
        name = "transformer"          # torchtitan's: accepted with a note
        [experimental]
        pipeline_parallel_degree = 1  # flame's, at its off value: accepted
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
        Some(PathBuf::from("configs/transformer_340M.json"))
    );
    assert_eq!(args.decay_type, flame_trainer::schedule::DecayType::Cosine);
    let args = Args::parse_with_config_file(argv(&["--training.steps", "7"])).unwrap();
    assert_eq!(args.steps, 7, "the command line wins");
    std::fs::write(&file, "[training]\nsteps = \"many\"\n").unwrap();
    assert!(Args::parse_with_config_file(argv(&["--model.config", "x.json"])).is_err());
    // Nothing is skipped silently: a key neither flame-train nor flame has, and one of flame's at a
    // value flame-train cannot honour, are refused, naming the key.
    for (toml, said) in [
        (
            "[training]\nsteps_per_epoch = 3\n",
            "training.steps_per_epoch",
        ),
        (
            "[training]\ntensor_parallel_degree = 2\n",
            "--training.tensor_parallel_degree 2: flame-train has no tensor parallelism",
        ),
    ] {
        std::fs::write(&file, toml).unwrap();
        let err = Args::parse_with_config_file(argv(&["--model.config", "x.json"])).unwrap_err();
        assert!(format!("{err:#}").contains(said), "{toml}: {err:#}");
    }
}

#[test]
fn flames_bare_booleans_and_old_names_parse() {
    let argv: Vec<String> = [
        "flame-train",
        "--model.config",
        "x.json",
        "--training.varlen",
        "--checkpoint.enable_checkpoint",
        "--training.skip_nan_inf",
        "false",
        "--training.warmup_steps",
        "64",
        "--optimizer.name",
        "AdamW",
        "--training.compile",
        "--job.print_args",
        "--training.steps",
        "1",
        "--data-endpoint",
        "unix:///tmp/flame.sock",
        "--data-job",
        "job.toml",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let args = Args::parse_with_config_file(argv).unwrap();
    assert!(args.varlen && args.enable_checkpoint && !args.skip_nan_inf && args.print_args);
    assert_eq!(args.warmup_steps, 64);
}

/// flame's `train.sh` starts `NGPU` ranks on the host: flame-train reads it for `--nproc-per-node`.
#[test]
fn ngpu_sets_the_local_ranks() {
    use clap::CommandFactory;
    let clap_command = Args::command();
    let nproc = clap_command
        .get_arguments()
        .find(|a| a.get_long() == Some("nproc-per-node"))
        .unwrap();
    assert_eq!(nproc.get_env(), Some(std::ffi::OsStr::new("NGPU")));
    // The binary reads it: a value that is not a count is refused as --nproc-per-node's.
    let argv: Vec<String> = [
        "flame-train",
        "--model.config",
        "x.json",
        "--training.steps",
        "1",
    ]
    .iter()
    .map(ToString::to_string)
    .chain(["--data-endpoint", "unix:///nowhere", "--data-job", "j.toml"].map(String::from))
    .collect();
    let out = command(&argv, &[("NGPU", "eight")]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("eight") && stderr.contains("nproc-per-node"),
        "{stderr}"
    );
}

/// flame's own `fla.toml` (shared/reference/flame-configs) loads, every key answered: its model and
/// tokenizer hub ids, and its dataset by name as the job of one raw hub dataset with its configuration,
/// in the file's batches, seed and (non-varlen) windows.
#[test]
fn flames_fla_toml_loads() {
    let file = shared().join("reference/flame-configs/fla.toml");
    let argv = vec![
        "flame-train".to_string(),
        "--job.config_file".into(),
        file.display().to_string(),
    ];
    let args = Args::parse_with_config_file(argv).unwrap();
    assert_eq!(
        args.model_config.as_deref(),
        Some(Path::new("fla-hub/transformer-1.3B-100B"))
    );
    let job = flame_trainer::named_data::load_job(&args, 8).unwrap();
    assert_eq!(
        (job.seq_len, job.micro_batch_size, job.global_batch_size),
        (2048, 32, 256)
    );
    assert_eq!((job.seed, job.varlen, job.streaming), (42, false, false));
    assert_eq!(
        job.tokenizer.as_deref(),
        Some("fla-hub/transformer-1.3B-100B")
    );
    let dataset = &job.datasets[0];
    assert_eq!(
        dataset.dataset.as_deref(),
        Some("HuggingFaceFW/fineweb-edu")
    );
    assert_eq!(dataset.name.as_deref(), Some("default"));
}

/// The losses flame-train logged in `dump/metrics.jsonl`, by step.
pub fn logged_losses(dump: &Path) -> Vec<(u64, f64)> {
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
    // flame#28: the 2-rank run's last checkpoint, alone on another node, converts to the run's export.
    let node = dir.path().join("node");
    copy_dir(&two.join("checkpoint/step-10"), &node.join("step-10"));
    let converted = node.join("hf");
    let converted_weights =
        flame_trainer::convert::checkpoint_to_hf(&flame_trainer::convert::CheckpointToHf {
            checkpoint: node.join("step-10"),
            model_config: config.clone(),
            output: converted.clone(),
            tokenizer_path: None,
        })
        .unwrap();
    assert_eq!(
        converted_weights,
        3 + 2 * 9,
        "embedding, output, norm, 9 per layer"
    );
    for file in ["config.json", "model.safetensors"] {
        assert_eq!(
            std::fs::read(converted.join(file)).unwrap(),
            std::fs::read(two.join("hf").join(file)).unwrap(),
            "{file}"
        );
    }
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

/// Issue 20: `--comm.train_timeout_seconds`, as torchtitan's. A rank that stalls (`FLAME_TRAIN_STALL_AT`)
/// makes rank 0's next step outlive the timeout, whether rank 0 waits in the step's collectives or, after
/// a checkpoint, for the ranks to meet: rank 0 names the step and the flag and aborts, and the launcher
/// stops the stalled rank. A checkpoint that takes rank 0 three times the timeout trips nobody.
#[test]
fn a_stalled_rank_ends_the_run_after_the_train_timeout_and_a_slow_checkpoint_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let (endpoint, job, config) = setup(dir.path(), 64);
    let flags = [
        "--training.steps",
        "5",
        "--training.gradient_accumulation_steps",
        "1",
        "--nproc-per-node",
        "2",
        // Far above a step of this tiny model, even in a debug build on a loaded machine.
        "--comm.train_timeout_seconds",
        "8",
        "--checkpoint.interval",
        "2",
        "--metrics.log_freq",
        "1",
    ];
    let run_with = |name: &str, stall: &str| {
        let dump = dir.path().join(name);
        let out = command(
            &argv(&endpoint, &job, &config, &dump, &flags),
            &[("FLAME_TRAIN_STALL_AT", stall)],
        )
        .output()
        .unwrap();
        (
            dump,
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Rank 1 stops for two minutes after step 3 (no checkpoint), then after step 2 (checkpointed).
    for (stall, step) in [("1:logged:3:120", 4), ("1:logged:2:120", 3)] {
        let (_, status, stderr) = run_with(&format!("stalled-{step}"), stall);
        assert!(!status.success(), "{stall}: {stderr}");
        let said =
            format!("rank 0: step {step} did not finish within 8 s (--comm.train_timeout_seconds)");
        assert!(stderr.contains(&said), "{stall}: no {said:?} in {stderr}");
    }
    let (slow, status, stderr) = run_with("slow-checkpoint", "0:checkpoint-written:2:24");
    assert!(status.success(), "{stderr}");
    assert_eq!(logged_losses(&slow).len(), 5, "{stderr}");
}

/// Issue 16: a run that checkpoints every step, killed with SIGKILL at each stage of a step (its
/// metrics written, the checkpoint's model file written, every file fsynced but not renamed, renamed)
/// and once from outside at whatever moment the kill lands, resumes each time with
/// `--checkpoint.load_step -1`: it ends with exactly the losses of an uninterrupted run, every step in
/// `metrics.jsonl` and in the TensorBoard files once.
#[test]
fn a_run_killed_at_any_moment_resumes_with_the_uninterrupted_losses_each_step_logged_once() {
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let (endpoint, job, config) = setup(dir.path(), 64);
    let flags = [
        "--training.steps",
        "7",
        "--checkpoint.interval",
        "1",
        "--metrics.log_freq",
        "1",
    ];
    let reference = dir.path().join("reference");
    launch(&argv(&endpoint, &job, &config, &reference, &flags));
    let want = logged_losses(&reference);
    assert_eq!(want.len(), 7);

    let dump = dir.path().join("killed");
    let resume: Vec<&str> = flags
        .iter()
        .copied()
        .chain(["--checkpoint.load_step", "-1"])
        .collect();
    for (i, crash) in [
        "logged:2",
        "checkpoint-model:3",
        "checkpoint-written:3",
        "checkpoint-published:4",
        "logged:5",
    ]
    .into_iter()
    .enumerate()
    {
        let run_flags = if i == 0 { &flags[..] } else { &resume[..] };
        let status = command(
            &argv(&endpoint, &job, &config, &dump, run_flags),
            &[("FLAME_TRAIN_CRASH_AT", crash)],
        )
        .status()
        .unwrap();
        assert_eq!(status.signal(), Some(9), "{crash}: {status}");
    }
    // A kill from outside, as soon as the resumed run has logged a step: wherever it lands.
    let mut child = command(&argv(&endpoint, &job, &config, &dump, &resume), &[])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    for line in stderr.lines() {
        if line.unwrap().starts_with("step:") {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Every checkpoint left behind is whole: it loads.
    launch(&argv(&endpoint, &job, &config, &dump, &resume));

    assert_eq!(
        logged_losses(&dump),
        want,
        "the losses of an uninterrupted run"
    );
    let board = flame_trainer::tensorboard::read_scalars(&dump.join("tb")).unwrap();
    let mut steps: Vec<(u64, f32)> = board
        .iter()
        .map(|(step, values)| {
            let loss = values
                .iter()
                .find(|(tag, _)| tag == "loss_metrics/global_avg_loss")
                .unwrap()
                .1;
            (*step, loss)
        })
        .collect();
    steps.sort_by_key(|s| s.0);
    #[allow(clippy::cast_possible_truncation)]
    let want_board: Vec<(u64, f32)> = want.iter().map(|&(s, l)| (s, l as f32)).collect();
    assert_eq!(steps, want_board, "each step once in tb/");
    let left: Vec<String> = names_in(&dump.join("checkpoint"))
        .into_iter()
        .filter(|n| n.starts_with("step-"))
        .collect();
    assert!(left.contains(&"step-7".to_owned()), "{left:?}");
}

/// Issue 16: megatron-core's order serves samples of `seq_len + 1` tokens; flame-train trains on
/// `[:-1]` with labels `[1:]` (it panicked on the sample length before).
#[test]
fn a_megatron_order_job_trains() {
    let dir = tempfile::tempdir().unwrap();
    let (endpoint, job, config) = setup(dir.path(), 64);
    let text = std::fs::read_to_string(&job).unwrap();
    std::fs::write(
        &job,
        text.replace(
            "seed = 3\n",
            "seed = 3\norder = \"megatron\"\nnum_samples = 120\n",
        ),
    )
    .unwrap();
    let summary = run(&args(
        &endpoint,
        &job,
        &config,
        &dir.path().join("run"),
        &["--training.steps", "30"],
    ))
    .unwrap();
    let losses: Vec<f64> = summary.losses.iter().map(|l| l.1).collect();
    assert_eq!(losses.len(), 30);
    let (first, last) = (
        losses[..3].iter().sum::<f64>() / 3.0,
        losses[27..].iter().sum::<f64>() / 3.0,
    );
    assert!(last < first - 0.5, "loss {first:.3} -> {last:.3}");
}

/// Issue 16: `--data-token` (or `FLAME_STREAM_TOKEN`) reaches a server started with `--token`.
#[test]
fn a_token_protected_server_is_reached_with_the_data_token() {
    let dir = tempfile::tempdir().unwrap();
    let (_, job, config) = setup(dir.path(), 64);
    let endpoint = serve(&ServerConfig {
        listen: vec![Endpoint::Unix(dir.path().join("guarded.sock"))],
        token: Some("s3cret".into()),
        max_connections: 16,
        prefetch_depth: 2,
        ..ServerConfig::default()
    })
    .unwrap()
    .endpoints
    .remove(0);
    let steps = ["--training.steps", "2"];
    let err = format!(
        "{:#}",
        run(&args(
            &endpoint,
            &job,
            &config,
            &dir.path().join("a"),
            &steps
        ))
        .unwrap_err()
    );
    assert!(err.contains("wrong token"), "{err}");
    let mut with_token = steps.to_vec();
    with_token.extend(["--data-token", "s3cret"]);
    let summary = run(&args(
        &endpoint,
        &job,
        &config,
        &dir.path().join("b"),
        &with_token,
    ))
    .unwrap();
    assert_eq!(summary.losses.len(), 2);
    // The server's own variable works too.
    let status = command(
        &argv(&endpoint, &job, &config, &dir.path().join("c"), &steps),
        &[("FLAME_STREAM_TOKEN", "s3cret")],
    )
    .status()
    .unwrap();
    assert!(status.success(), "{status}");
}

/// Issue 16: `--model.tokenizer_path` is resolved before the first step (it was read only by the
/// export, after the last): a missing path fails at once; a hub id comes from the hub cache.
#[test]
fn the_tokenizer_path_is_resolved_before_the_first_step() {
    let dir = tempfile::tempdir().unwrap();
    let (endpoint, job, config) = setup(dir.path(), 64);
    let dump = dir.path().join("run");
    let err = format!(
        "{:#}",
        run(&args(
            &endpoint,
            &job,
            &config,
            &dump,
            &[
                "--training.steps",
                "2",
                "--model.tokenizer_path",
                "./no/such/tokenizer"
            ],
        ))
        .unwrap_err()
    );
    assert!(
        err.contains("--model.tokenizer_path ./no/such/tokenizer"),
        "{err}"
    );
    assert!(!dump.exists(), "nothing ran");
    // A hub model id, offline from a prepared hub cache (HF_HOME/hub/models--ORG--NAME).
    let home = dir.path().join("hf");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo = home.join("hub/models--flame-test--tokenizer");
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let source = shared().join("data/tokenizers/mistral-7b-v0.1");
    for file in ["tokenizer.json", "tokenizer.model"] {
        std::fs::copy(source.join(file), snapshot.join(file)).unwrap();
    }
    let out = command(
        &argv(
            &endpoint,
            &job,
            &config,
            &dump,
            &[
                "--training.steps",
                "2",
                "--model.tokenizer_path",
                "flame-test/tokenizer",
            ],
        ),
        &[("HF_HOME", home.to_str().unwrap()), ("HF_HUB_OFFLINE", "1")],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in ["tokenizer.json", "tokenizer.model"] {
        assert_eq!(
            std::fs::read(dump.join("hf").join(file)).unwrap(),
            std::fs::read(source.join(file)).unwrap(),
            "{file}"
        );
    }
}

/// Issue 16: fla's `qkv_bias` (biases on q, k and v, none on o) is built, and exported as
/// `Qwen2ForCausalLM`, which `transformers` loads with flame-train's logits.
#[test]
fn qkv_biases_export_as_qwen2_with_equal_logits() {
    let dir = tempfile::tempdir().unwrap();
    let config = ModelConfig::from_json(
        r#"{"model_type": "transformer", "hidden_size": 32, "num_hidden_layers": 2, "num_heads": 4,
            "num_kv_heads": 2, "vocab_size": 1000, "intermediate_size": 64, "qkv_bias": true}"#,
    )
    .unwrap();
    tch::manual_seed(11);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let model = CausalLm::new(&vs.root(), &config);
    // Biases start at zero; make them count.
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            if name.rsplit('.').next() == Some("bias") {
                t.copy_(&(tch::Tensor::randn_like(&t) * 0.5));
            }
        }
    });
    let case = dir.path().join("qkv");
    flame_trainer::train::export_hf(&case.join("hf"), &vs, &model, None).unwrap();
    let hf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(case.join("hf/config.json")).unwrap()).unwrap();
    assert_eq!(hf["architectures"][0], "Qwen2ForCausalLM");
    write_logits(&model, &case.join("logits.safetensors")).unwrap();
    hf_parity(&[&case], None);
}

#[test]
fn a_streaming_raw_job_checkpoints_its_cursors_and_resumes_on_a_fresh_server() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, config) = setup(dir.path(), 64);
    let job = dir.path().join("raw.toml");
    std::fs::write(
        &job,
        format!(
            "seed = 3\nseq_len = 64\nmicro_batch_size = 2\nglobal_batch_size = 4\nstreaming = true\ntokenizer = \"{}\"\n[[datasets]]\ndataset = \"{}\"\n",
            shared().join("data/tokenizers/mistral-7b-v0.1/tokenizer.json").display(),
            shared().join("data/corpus/jsonl/en-moby-dick.jsonl").display()
        ),
    )
    .unwrap();
    let server = |name: &str| {
        serve(&ServerConfig {
            listen: vec![Endpoint::Unix(dir.path().join(name))],
            cache_dir: dir.path().join("cache"),
            ..ServerConfig::default()
        })
        .unwrap()
        .endpoints
        .remove(0)
    };
    let first = server("first.sock");
    let flags = [
        "--training.steps",
        "8",
        "--checkpoint.interval",
        "4",
        "--checkpoint.keep_latest_k",
        "2",
    ];
    let whole = run(&args(&first, &job, &config, &dir.path().join("a"), &flags)).unwrap();
    let dump = dir.path().join("b");
    run(&args(&first, &job, &config, &dump, &flags)).unwrap();
    let state = std::fs::read_to_string(dump.join("checkpoint/step-4/train_state.json")).unwrap();
    assert!(state.contains("stream_cursors"), "{state}");
    // Another server, which has never seen the job: the checkpoint's cursors take it to step 4.
    let fresh = server("fresh.sock");
    let mut resumed_flags = flags.to_vec();
    resumed_flags.extend(["--checkpoint.load_step", "4"]);
    let resumed = run(&args(&fresh, &job, &config, &dump, &resumed_flags)).unwrap();
    assert_eq!(
        resumed.losses,
        whole.losses[4..],
        "steps 5..8 after resuming at 4 on a fresh server"
    );
}

//! Issue 17: flame's linear-attention models (GLA, DeltaNet, Gated DeltaNet) on the CPU: shrunk
//! versions of flame's own configs build fla 0.6.0's parameters (the export loads strictly into fla's
//! classes, and fla's own checkpoint into flame-train), documents never see each other, and they train
//! from flame-stream with a falling loss and an exact resume.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flame_trainer::config::ModelConfig;
use flame_trainer::kernels::cubin::Kernels;
use flame_trainer::models::{CausalLm, Checkpointing, Inputs, MixingKernels, Model};
use flame_trainer::train::export_hf;
use tch::{Device, Kind, nn};

use crate::train::{setup, trains_and_resumes_exactly};
use crate::util::{kernels, python, repo};

/// flame's config `name` (`configs/`), shrunk: the same keys, small widths, two layers.
fn shrunk(name: &str) -> String {
    let text = std::fs::read_to_string(repo().join("configs").join(name)).unwrap();
    let mut keys: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    let small = serde_json::json!({
        "hidden_size": 32, "num_hidden_layers": 2, "num_heads": 2, "intermediate_size": 64,
        "vocab_size": 32000,
    });
    for (key, value) in small.as_object().unwrap() {
        keys.insert(key.clone(), value.clone());
    }
    if keys.contains_key("head_dim") {
        keys.insert("head_dim".into(), 8.into());
    }
    serde_json::to_string(&keys).unwrap()
}

/// The three architectures, as flame ships them.
const MODELS: [&str; 3] = [
    "gla_340M.json",
    "delta_net_340M.json",
    "gated_deltanet_340M.json",
];

/// Every parameter's name and shape.
fn shapes(vs: &nn::VarStore) -> BTreeMap<String, Vec<i64>> {
    vs.variables()
        .into_iter()
        .map(|(name, t)| (name, t.size()))
        .collect()
}

#[test]
fn the_export_loads_strictly_into_fla_and_flas_checkpoint_into_flame_train() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases = Vec::new();
    for name in MODELS {
        let config = ModelConfig::from_json(&shrunk(name)).unwrap();
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = CausalLm::new(&vs.root(), &config);
        let case = dir.path().join(name.trim_end_matches(".json"));
        export_hf(&case, &vs, &model, None).unwrap();
        cases.push((case, vs, config));
    }
    let paths: Vec<&Path> = cases.iter().map(|(case, _, _)| case.as_path()).collect();
    for verb in ["check", "write"] {
        let out = std::process::Command::new(python())
            .arg(repo().join("tools/interop/fla_load.py"))
            .arg(verb)
            .args(&paths)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "fla_load.py {verb}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // fla's own initialisation, loaded by flame-train: the same names and shapes, nothing left over.
    for (case, vs, config) in &mut cases {
        let theirs: BTreeMap<String, Vec<i64>> =
            tch::Tensor::read_safetensors(case.join("fla.safetensors"))
                .unwrap()
                .into_iter()
                .map(|(name, t)| (name, t.size()))
                .collect();
        assert_eq!(theirs, shapes(vs), "{}", config.model_type);
        vs.load(case.join("fla.safetensors")).unwrap();
    }
}

/// fla's initialisation, in distribution: matrices and convolution taps N(0, 0.02), norms one, GLA's
/// gate bias zero, Gated DeltaNet's `exp(A_log)` in [0, 16] and `softplus(dt_bias)` in [1e-4, 0.1].
#[test]
fn the_weights_start_as_flas() {
    let config = ModelConfig::from_json(&shrunk("gated_deltanet_340M.json")).unwrap();
    tch::manual_seed(2);
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = CausalLm::new(&vs.root(), &config);
    let vars = vs.variables();
    let get = |name: &str| vars.get(name).unwrap_or_else(|| panic!("{name}"));
    let a = get("model.layers.0.attn.A_log").exp();
    assert!(a.min().double_value(&[]) >= 0.0 && a.max().double_value(&[]) <= 16.0);
    let dt = get("model.layers.0.attn.dt_bias").softplus();
    assert!(dt.min().double_value(&[]) >= 0.99e-4 && dt.max().double_value(&[]) <= 0.1001);
    let std = get("model.layers.1.attn.v_proj.weight")
        .std(true)
        .double_value(&[]);
    assert!((0.015..0.025).contains(&std), "{std}");
    let conv = get("model.layers.1.attn.q_conv1d.weight")
        .std(true)
        .double_value(&[]);
    assert!((0.01..0.03).contains(&conv), "{conv}");
    let norm = get("model.layers.0.attn.o_norm.weight");
    assert!(
        norm.eq(1.0).all().int64_value(&[]) == 1,
        "norms start at one"
    );
    let config = ModelConfig::from_json(&shrunk("gla_340M.json")).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = CausalLm::new(&vs.root(), &config);
    let bias = vs.variables()["model.layers.0.attn.gk_proj.1.bias"]
        .abs()
        .sum(Kind::Float);
    assert!(
        bias.double_value(&[]) == 0.0,
        "GLA's gate bias starts at zero"
    );
}

/// Varlen: states and short convolutions restart at every document, as fla's kernels do with
/// `cu_seqlens`: two documents packed in one window give the logits of each alone.
#[test]
fn no_document_sees_another() {
    for name in MODELS {
        let config = ModelConfig::from_json(&shrunk(name)).unwrap();
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = CausalLm::new(&vs.root(), &config);
        let (a, b): (Vec<u32>, Vec<u32>) = ((1..71).collect(), (300..390).collect());
        let packed: Vec<u32> = a.iter().chain(&b).copied().collect();
        let together = model.forward(&Inputs::new(&packed, 160, &[vec![0, 70, 160]], Device::Cpu));
        let alone = model.forward(&Inputs::new(&b, 90, &[vec![0, 90]], Device::Cpu));
        let diff = (together.narrow(1, 70, 90) - alone)
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 1e-5, "{name}: {diff}");
    }
}

/// The chunked loss and full activation checkpointing give the plain backward's gradients for the
/// linear models too.
#[test]
fn checkpointing_gives_the_plain_gradients() {
    for name in MODELS {
        let config = ModelConfig::from_json(&shrunk(name)).unwrap();
        tch::manual_seed(5);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = CausalLm::new(&vs.root(), &config);
        let tokens: Vec<u32> = (0..200).map(|i| (i * 11 + 5) % 1000).collect();
        let inputs = Inputs::new(&tokens, 100, &[vec![0, 30, 100], vec![0, 100]], Device::Cpu);
        let grads = |mode| {
            for (_, mut t) in vs.variables() {
                t.zero_grad();
            }
            let loss = model
                .forward_backward(&inputs, 1.0, mode, &mut |_| Ok(()))
                .unwrap()
                .double_value(&[]);
            let mut g: Vec<(String, tch::Tensor)> = vs
                .variables()
                .into_iter()
                .map(|(n, t)| (n, t.grad().copy()))
                .collect();
            g.sort_by(|a, b| a.0.cmp(&b.0));
            (loss, g)
        };
        let (plain_loss, plain) = grads(Checkpointing::None);
        let (full_loss, full) = grads(Checkpointing::Full);
        assert!((plain_loss - full_loss).abs() < 1e-6, "{name}");
        for ((n, a), (_, b)) in plain.iter().zip(&full) {
            let diff = (a - b).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "{name} {n}: {diff}");
        }
    }
}

/// A shrunk config of `name` in `dir`.
fn write_config(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, shrunk(name)).unwrap();
    path
}

#[test]
fn each_model_trains_from_flame_stream_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (endpoint, job, _) = setup(dir.path(), 128);
    for name in MODELS {
        let config = write_config(dir.path(), name);
        let dump = dir.path().join(name.trim_end_matches(".json"));
        trains_and_resumes_exactly(&endpoint, &job, &config, &dump, name);
    }
}

/// Each op's random inputs in float64, `[1, t, h, ·]`: q, k, v, the output's gradient `do` and the
/// gates (GLA's log decay `g`; the delta rules' β, and Gated DeltaNet's log decay `g`), q and k
/// L2-normalised for the delta rules as their layers do.
fn op_inputs(
    t: i64,
    h: i64,
    dk: i64,
    dv: i64,
) -> Vec<(&'static str, Vec<(&'static str, tch::Tensor)>)> {
    let f64_ = (Kind::Double, Device::Cpu);
    let l2 = |x: tch::Tensor| &x / x.norm_scalaropt_dim(2, [-1], true);
    ["gla", "delta_rule", "gated_delta_rule"]
        .into_iter()
        .map(|op| {
            let mut x = vec![
                ("q", tch::Tensor::randn([1, t, h, dk], f64_)),
                ("k", tch::Tensor::randn([1, t, h, dk], f64_)),
                ("v", tch::Tensor::randn([1, t, h, dv], f64_)),
                ("do", tch::Tensor::randn([1, t, h, dv], f64_)),
            ];
            if op == "gla" {
                let g = tch::Tensor::randn([1, t, h, dk], f64_).log_sigmoid() / 4.0;
                x.push(("g", g));
            } else {
                x[0].1 = l2(x[0].1.shallow_clone());
                x[1].1 = l2(x[1].1.shallow_clone());
                x.push(("beta", tch::Tensor::rand([1, t, h], f64_)));
                if op == "gated_delta_rule" {
                    x.push(("g", -tch::Tensor::randn([1, t, h], f64_).softplus()));
                }
            }
            (op, x)
        })
        .collect()
}

/// fla's references (`tools/interop/fla_naive.py`) on `inputs` with documents `cu`: each op's output
/// (`OP.o`) and its inputs' gradients (`OP.dq`, …).
fn fla_naive(
    dir: &Path,
    inputs: &[(&str, Vec<(&str, tch::Tensor)>)],
    cu: &[u32],
) -> std::collections::HashMap<String, tch::Tensor> {
    let cu = tch::Tensor::from_slice(&cu.iter().map(|&c| i64::from(c)).collect::<Vec<_>>());
    let mut named: Vec<(String, tch::Tensor)> = Vec::new();
    for (op, x) in inputs {
        for (name, tensor) in x {
            named.push((format!("{op}.{name}"), tensor.shallow_clone()));
        }
        named.push((format!("{op}.cu_seqlens"), cu.copy()));
    }
    let (path_in, path_out) = (dir.join("in.safetensors"), dir.join("out.safetensors"));
    tch::Tensor::write_safetensors(&named, &path_in).unwrap();
    let out = std::process::Command::new(python())
        .arg(repo().join("tools/interop/fla_naive.py"))
        .args([&path_in, &path_out])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    tch::Tensor::read_safetensors(&path_out)
        .unwrap()
        .into_iter()
        .collect()
}

/// Issue 17: the chunked ops equal fla 0.6.0's own pure-PyTorch references (`naive_recurrent_gla`,
/// `delta_rule_recurrence`, `naive_recurrent_gated_delta_rule`, run by `tools/interop/fla_naive.py`
/// one document at a time), outputs and gradients, at fla's widths (dk 64, dv 128) on documents of
/// awkward lengths (1, a whole chunk, several chunks and a ragged end). Ours run in float64; fla's
/// references cast to float32 inside, so they agree to float32's precision (1e-5 relative; the
/// float64 comparison with the recurrence is `kernels`' tests, 1e-9).
#[test]
#[allow(clippy::many_single_char_names)] // the math's names
fn the_chunked_ops_equal_flas_own_references() {
    use flame_trainer::kernels::{ChunkLayout, chunk_delta_rule, chunk_gla};
    let dir = tempfile::tempdir().unwrap();
    tch::manual_seed(23);
    let cu: Vec<u32> = vec![0, 1, 65, 230, 237];
    let t = i64::from(cu[cu.len() - 1]);
    let (h, dk, dv) = (2, 64, 128);
    let inputs = op_inputs(t, h, dk, dv);
    let theirs = fla_naive(dir.path(), &inputs, &cu);
    let layout = ChunkLayout::new(
        std::slice::from_ref(&cu),
        usize::try_from(t).unwrap(),
        64,
        Device::Cpu,
    );
    #[allow(clippy::cast_precision_loss)]
    let scale = (dk as f64).powf(-0.5);
    for (op, x) in inputs {
        let leaves: Vec<(&str, tch::Tensor)> = x
            .iter()
            .filter(|(name, _)| *name != "do")
            .map(|(name, t)| (*name, t.copy().set_requires_grad(true)))
            .collect();
        let get = |name: &str| &leaves.iter().find(|(n, _)| *n == name).unwrap().1;
        let (q, k, v) = (get("q"), get("k"), get("v"));
        let o = match op {
            "gla" => chunk_gla(q, k, v, get("g"), scale, &layout),
            "delta_rule" => chunk_delta_rule(q, k, v, get("beta"), None, scale, &layout),
            _ => chunk_delta_rule(q, k, v, get("beta"), Some(get("g")), scale, &layout),
        };
        let d_o = &x.iter().find(|(n, _)| *n == "do").unwrap().1;
        (&o * d_o).sum(Kind::Double).backward();
        let mut pairs = vec![("o".to_owned(), o.detach())];
        pairs.extend(leaves.iter().map(|(n, t)| (format!("d{n}"), t.grad())));
        for (name, ours) in pairs {
            let reference = &theirs[&format!("{op}.{name}")];
            let err =
                (&ours - reference).norm().double_value(&[]) / reference.norm().double_value(&[]);
            assert!(err < 1e-5, "{op} {name}: relative error {err:e}");
        }
    }
}

/// The kernel build `tools/setup-kernels.sh` makes here (no GPU needed to compile) holds every kernel
/// flame's configs launch (the linear ones' mixing, every one's loss and residual norms), each found by
/// the ops' own lookups.
#[test]
fn the_kernel_build_has_every_kernel_flames_configs_launch() {
    let build: &'static Kernels = Box::leak(Box::new(Kernels::open(&kernels()).unwrap()));
    let mut checked = 0;
    for entry in std::fs::read_dir(repo().join("configs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let config = ModelConfig::load(&path).unwrap();
        flame_trainer::kernels::fla::check(build, &config)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        checked += 1;
    }
    assert_eq!(
        checked, 13,
        "six linear configs, three transformers, four GPT-2s"
    );
}

/// Off CUDA the models run on libtorch ops and say why; asking for the kernels there is an error, not a
/// silent fallback, for the transformer (whose loss and norms would run on them) as for the linear
/// models. `auto` keeps the transformer on libtorch ops anywhere.
#[test]
fn fla_kernels_are_chosen_only_where_they_can_run() {
    let config = ModelConfig::from_json(&shrunk("delta_net_340M.json")).unwrap();
    let (fla, why) = MixingKernels::Auto.resolve(&config, Device::Cpu).unwrap();
    assert!(!fla);
    assert_eq!(why, "libtorch ops (the model is on Cpu)");
    let error = MixingKernels::Fla
        .resolve(&config, Device::Cpu)
        .unwrap_err();
    assert_eq!(error, "--model.kernels fla: the model is on Cpu");
    let transformer = ModelConfig::load(&repo().join("configs/transformer_340M.json")).unwrap();
    assert_eq!(
        MixingKernels::Auto
            .resolve(&transformer, Device::Cpu)
            .unwrap(),
        (
            false,
            "libtorch ops (--model.kernels fla fuses them on CUDA)".to_string()
        )
    );
    let error = MixingKernels::Fla
        .resolve(&transformer, Device::Cpu)
        .unwrap_err();
    assert_eq!(error, "--model.kernels fla: the model is on Cpu");
    assert_eq!(
        MixingKernels::Torch
            .resolve(&transformer, Device::Cpu)
            .unwrap(),
        (false, "libtorch ops".to_string())
    );
}

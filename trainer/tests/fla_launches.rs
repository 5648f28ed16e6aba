//! The fla ops' kernel launches (`flame_trainer::kernels::fla`), held to those of fla's own Python
//! wrappers, on the CPU: the ops run forward and backward on a recording kernel build
//! (`Kernels::open_recording`), which checks every launch's arguments against the manifest and writes
//! the launch down instead of running it (the outputs are garbage, unread), and
//! `tools/kernels/check/trace_ops.py` traces fla 0.6.0's own `chunk_gla`, `chunk_delta_rule` and
//! `chunk_gated_delta_rule` on shape-only tensors for the same shapes and documents, for every config
//! of configs/ that uses the op (the shapes the kernel build is made for). Both sequences must be
//! equal launch for launch: the kernel, its variant (every constexpr and parameter type), the grid,
//! every scalar argument, and every tensor argument's element count and buffer (buffers numbered in
//! order of first use, so the data flow between the launches is compared too). Torch glue (memsets,
//! sums, casts) is not compared. flame's own fused residual norm is held the same way to the launches of
//! `tools/kernels/residual_norm.py`'s wrappers, and its kernels to torch under Triton's interpreter.

// The ops' own names (q, k, v, g, a, b, o; h heads) read better here than longer ones.
#![allow(clippy::many_single_char_names)]

use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use flame_trainer::config::{GateActivation, Mixer, ModelConfig};
use flame_trainer::kernels::cubin::{Kernels, Launch, Param, Recorded};
use flame_trainer::kernels::fla::{
    Varlen, conv, cross_entropy, delta_rule, gated_delta_rule, gla, norm, swiglu,
};
use flame_trainer::kernels::residual_norm;
use serde_json::{Value, json};
use tch::{Device, Kind, Tensor};

use crate::util::{kernel_python, kernels, python, repo, succeeds};

/// Two samples of [`SEQ_LEN`] tokens, their documents' boundaries (the trainer's `cu_seqlens`): a
/// 1-token document, a whole chunk, uneven ones, and an empty one, which `Varlen` leaves out (fla's
/// `cu_seqlens` holds the other five).
const SAMPLES: [&[u32]; 2] = [&[0, 1, 65, 150], &[0, 63, 63, 128, 150]];
/// Tokens per sample.
const SEQ_LEN: i64 = 150;

/// l2norm's `NB`: an autotune bucket of the token count that its kernel body never reads
/// (tools/kernels/README.md); the build holds that of 65536 tokens, fla's trace has these 300's.
const BUCKETS: [&str; 1] = ["NB"];

/// The installed recording build, one for the test process (the ops find it through
/// `Kernels::installed`); holding it keeps other tests' launches out of the record.
fn recording() -> MutexGuard<'static, &'static Kernels> {
    static BUILD: OnceLock<Mutex<&'static Kernels>> = OnceLock::new();
    let build = BUILD
        .get_or_init(|| {
            let build = Kernels::open_recording(&kernels()).unwrap();
            Mutex::new(build.install().unwrap())
        })
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    // Whatever a failed test left.
    build.take_launches().unwrap();
    build
}

/// The mixers of flame's configs (configs/) of `model_type`, by file name: every shape the kernel
/// build is made for.
fn configs(model_type: &str) -> Vec<(String, Mixer)> {
    let mut configs = Vec::new();
    for entry in std::fs::read_dir(repo().join("configs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let config = ModelConfig::load(&path).unwrap();
        if config.model_type == model_type {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            configs.push((name, config.mixer));
        }
    }
    configs.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!configs.is_empty(), "no {model_type} config");
    configs
}

/// A bf16 `[B, T, …]` input of the samples, with a gradient.
fn input(shape: &[i64]) -> Tensor {
    let mut full = vec![i64::try_from(SAMPLES.len()).unwrap(), SEQ_LEN];
    full.extend_from_slice(shape);
    Tensor::randn(full.as_slice(), (Kind::BFloat16, Device::Cpu)).set_requires_grad(true)
}

/// The samples' documents as the ops take them.
fn varlen() -> Varlen {
    let samples: Vec<Vec<u32>> = SAMPLES.iter().map(|cu| cu.to_vec()).collect();
    Varlen::new(&samples, usize::try_from(SEQ_LEN).unwrap(), 64, Device::Cpu)
}

/// The documents' lengths in the flattened batch, empty ones left out, as fla's `cu_seqlens` has
/// them: `1,64,85,…`.
fn documents() -> String {
    let lengths: Vec<String> = SAMPLES
        .iter()
        .flat_map(|cu| cu.windows(2).map(|pair| pair[1] - pair[0]))
        .filter(|&n| n > 0)
        .map(|n| n.to_string())
        .collect();
    lengths.join(",")
}

/// Backpropagates ones through the op's output `o`.
fn backward(o: &Tensor) {
    flame_trainer::shim::backward(o, &o.ones_like()).unwrap();
}

/// fla's launches for `op` (a `tracer.OPS` name) with the shape arguments `shape`, forward then
/// backward, as `trace_ops.py` prints them, each as [`launch`] writes ours (without the phase, with
/// floats as the kernel's fp32 and l2norm's bucket left out).
fn fla(op: &str, shape: &[(&str, String)]) -> Vec<Value> {
    let out = std::process::Command::new(kernel_python())
        .arg(repo().join("tools/kernels/check/trace_ops.py"))
        .arg(kernels())
        .arg(op)
        .arg(documents())
        .args(shape.iter().map(|(name, value)| format!("{name}={value}")))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "trace_ops.py {op}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let launches: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    launches
        .into_iter()
        .map(|mut launch| {
            let mut args = launch["args"].take();
            for arg in args.as_array_mut().unwrap() {
                if arg[1] == "fp32" {
                    // The kernel's fp32, whatever digits the JSON kept.
                    #[allow(clippy::cast_possible_truncation)]
                    let value = arg[2].as_f64().unwrap() as f32;
                    arg[2] = json!(f64::from(value));
                }
            }
            json!({
                "kernel": launch["kernel"],
                "grid": launch["grid"],
                "constexprs": without_buckets(&launch["constexprs"]),
                "args": args,
            })
        })
        .collect()
}

/// `constexprs` without [`BUCKETS`].
fn without_buckets(constexprs: &Value) -> Value {
    let mut constexprs = constexprs.as_object().unwrap().clone();
    for bucket in BUCKETS {
        constexprs.remove(bucket);
    }
    Value::Object(constexprs)
}

/// A recorded launch as `trace_ops.py` prints fla's.
fn launch(launch: &Launch) -> Value {
    let args: Vec<Value> = launch
        .entry
        .args
        .iter()
        .zip(&launch.args)
        .map(|((name, ty), value)| {
            let value = match *value {
                Recorded::Buffer { elements, buffer } => json!([elements, buffer]),
                Recorded::Scalar(Param::I32(v)) => json!(v),
                Recorded::Scalar(Param::I64(v)) => json!(v),
                Recorded::Scalar(Param::F32(v)) => json!(f64::from(v)),
                Recorded::Scalar(Param::Pointer(_)) => unreachable!("pointers are buffers"),
            };
            json!([name, ty, value])
        })
        .collect();
    json!({
        "kernel": launch.entry.kernel,
        "grid": launch.grid,
        "constexprs": without_buckets(&Value::Object(launch.entry.constexprs.clone())),
        "args": args,
    })
}

/// Asserts that the ops' launches are fla's, saying where they part.
fn assert_launches(op: &str, ours: &[Launch], theirs: &[Value]) {
    let ours: Vec<Value> = ours.iter().map(launch).collect();
    if ours == theirs {
        return;
    }
    let line = |launch: Option<&Value>| {
        launch.map_or("-".to_string(), |l| {
            format!("{} {}", l["kernel"].as_str().unwrap(), l["grid"])
        })
    };
    let mut report = format!("{op}: the launches are not fla's (ours | fla's):\n");
    for i in 0..ours.len().max(theirs.len()) {
        let (a, b) = (ours.get(i), theirs.get(i));
        let mark = if a == b { " " } else { "≠" };
        writeln!(report, "{mark} {i:2} {} | {}", line(a), line(b)).unwrap();
    }
    if let Some(i) = (0..ours.len().min(theirs.len())).find(|&i| ours[i] != theirs[i]) {
        writeln!(
            report,
            "first difference, launch {i}:\n ours  {}\n fla's {}",
            ours[i], theirs[i]
        )
        .unwrap();
    }
    panic!("{report}");
}

/// `k^-0.5`, fla's default scale.
fn scale(k: i64) -> f64 {
    #[allow(clippy::cast_precision_loss)] // a head width
    (k as f64).powf(-0.5)
}

#[test]
fn gla_launches_are_flas() {
    for (name, mixer) in configs("gla") {
        let Mixer::Gla(config) = mixer else {
            panic!("{name}: not GLA");
        };
        let h = i64::from(config.num_heads);
        let (k, v) = (
            i64::from(config.key_dim) / h,
            i64::from(config.value_dim) / h,
        );
        let theirs = fla(
            "gla",
            &[
                ("H", h.to_string()),
                ("K", k.to_string()),
                ("V", v.to_string()),
            ],
        );
        let build = recording();
        let (q, kk, vv, g) = (
            input(&[h, k]),
            input(&[h, k]),
            input(&[h, v]),
            input(&[h, k]),
        );
        let o = gla::chunk_gla(&q, &kk, &vv, &g, scale(k), &varlen()).unwrap();
        backward(&o);
        assert_launches(&name, &build.take_launches().unwrap(), &theirs);
    }
}

#[test]
fn delta_net_launches_are_flas() {
    for (name, mixer) in configs("delta_net") {
        let Mixer::DeltaRule(config) = mixer else {
            panic!("{name}: not DeltaNet");
        };
        let h = i64::from(config.num_heads);
        let (k, v) = (i64::from(config.head_k_dim), i64::from(config.head_v_dim));
        let theirs = fla(
            "delta_net",
            &[
                ("H", h.to_string()),
                ("K", k.to_string()),
                ("V", v.to_string()),
            ],
        );
        let build = recording();
        let (q, kk, vv, beta) = (input(&[h, k]), input(&[h, k]), input(&[h, v]), input(&[h]));
        let o = delta_rule::chunk_delta_rule(&q, &kk, &vv, &beta, scale(k), &varlen()).unwrap();
        backward(&o);
        assert_launches(&name, &build.take_launches().unwrap(), &theirs);
    }
}

#[test]
fn gated_deltanet_launches_are_flas() {
    for (name, mixer) in configs("gated_deltanet") {
        let Mixer::DeltaRule(config) = mixer else {
            panic!("{name}: not Gated DeltaNet");
        };
        let h = i64::from(config.num_heads);
        let (k, v) = (i64::from(config.head_k_dim), i64::from(config.head_v_dim));
        let theirs = fla(
            "gated_deltanet",
            &[
                ("H", h.to_string()),
                ("HV", h.to_string()),
                ("K", k.to_string()),
                ("V", v.to_string()),
                ("allow_neg_eigval", config.allow_neg_eigval.to_string()),
            ],
        );
        let build = recording();
        let (q, kk, vv) = (input(&[h, k]), input(&[h, k]), input(&[h, v]));
        let (a, b) = (input(&[h]), input(&[h]));
        let parameter = || Tensor::randn([h], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let (a_log, dt_bias) = (parameter(), parameter());
        let o = gated_delta_rule::chunk_gated_delta_rule(
            &q,
            &kk,
            &vv,
            &a,
            &b,
            &a_log,
            &dt_bias,
            scale(k),
            config.allow_neg_eigval,
            &varlen(),
        )
        .unwrap();
        backward(&o);
        assert_launches(&name, &build.take_launches().unwrap(), &theirs);
    }
}

#[test]
fn gated_norm_launches_are_flas() {
    let mut seen = 0;
    for model_type in ["gla", "delta_net", "gated_deltanet"] {
        for (name, mixer) in configs(model_type) {
            // The layers whose fla counterpart fuses the gate into the norm (FusedRMSNormGated).
            let (h, d, activation) = match mixer {
                Mixer::Gla(c) if c.use_output_gate && c.fused_gate_norm => (
                    c.num_heads,
                    c.value_dim / c.num_heads,
                    GateActivation::Swish,
                ),
                Mixer::DeltaRule(c) => match c.output_gate {
                    Some(activation) => (c.num_heads, c.head_v_dim, activation),
                    None => continue,
                },
                _ => continue,
            };
            let (h, d) = (i64::from(h), i64::from(d));
            let config = ModelConfig::load(&repo().join("configs").join(&name)).unwrap();
            let theirs = fla(
                "gated_norm",
                &[
                    ("H", h.to_string()),
                    ("D", d.to_string()),
                    ("activation", format!("{activation:?}").to_lowercase()),
                    ("eps", config.norm_eps.to_string()),
                ],
            );
            let build = recording();
            let (x, g) = (input(&[h, d]), input(&[h, d]));
            let weight = Tensor::ones([d], (Kind::Float, Device::Cpu)).set_requires_grad(true);
            let y = norm::gated_rms_norm(&x, &g, &weight, config.norm_eps, activation).unwrap();
            backward(&y);
            assert_launches(&name, &build.take_launches().unwrap(), &theirs);
            seen += 1;
        }
    }
    assert!(seen > 0, "no config of configs/ has a gated output norm");
}

#[test]
fn short_conv_launches_are_flas() {
    let mut seen = 0;
    for model_type in ["gla", "delta_net", "gated_deltanet"] {
        for (name, mixer) in configs(model_type) {
            let (widths, taps) = match mixer {
                Mixer::Gla(c) => (vec![c.key_dim, c.value_dim], c.short_conv),
                Mixer::DeltaRule(c) => (c.conv_widths(), c.short_conv),
                Mixer::Attention(_) | Mixer::Gpt2(_) => continue,
            };
            let Some(taps) = taps else { continue };
            for d in widths.into_iter().map(i64::from) {
                let theirs = fla(
                    "short_conv",
                    &[("D", d.to_string()), ("W", taps.to_string())],
                );
                let build = recording();
                let x = input(&[d]);
                let weight = Tensor::randn([d, 1, i64::from(taps)], (Kind::Float, Device::Cpu))
                    .set_requires_grad(true);
                let y = conv::short_conv(&x, &weight, &varlen()).unwrap();
                backward(&y);
                assert_launches(&name, &build.take_launches().unwrap(), &theirs);
                seen += 1;
            }
        }
    }
    assert!(seen > 0, "no config of configs/ has short convolutions");
}

#[test]
fn swiglu_launches_are_flas() {
    let mut widths: Vec<i64> = Vec::new();
    for model_type in ["gla", "delta_net", "gated_deltanet"] {
        for entry in std::fs::read_dir(repo().join("configs")).unwrap() {
            let config = ModelConfig::load(&entry.unwrap().path());
            if let Ok(config) = config
                && config.model_type == model_type
                && !widths.contains(&i64::from(config.intermediate_size))
            {
                widths.push(i64::from(config.intermediate_size));
            }
        }
    }
    assert!(!widths.is_empty(), "no linear-attention config in configs/");
    for d in widths {
        let theirs = fla("swiglu", &[("D", d.to_string())]);
        let build = recording();
        let (gate, up) = (input(&[d]), input(&[d]));
        // The down projection's output width: its matmuls are libtorch's, outside the launches, so
        // any width gives the same launches; a narrow one keeps the CPU's bf16 matmuls short (the
        // 7B config's 4096 × 11008 took two minutes).
        let weight = Tensor::randn([8, d], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let out = swiglu::swiglu_linear(&gate, &up, &weight).unwrap();
        backward(&out);
        assert_launches(
            &format!("swiglu {d}"),
            &build.take_launches().unwrap(),
            &theirs,
        );
    }
}

#[test]
fn cross_entropy_launches_are_flas() {
    let mut vocabs: Vec<i64> = Vec::new();
    for entry in std::fs::read_dir(repo().join("configs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let vocab = i64::from(ModelConfig::load(&path).unwrap().vocab_size);
            if !vocabs.contains(&vocab) {
                vocabs.push(vocab);
            }
        }
    }
    vocabs.sort_unstable();
    // flame's 32000 (fla's default) and GPT-2's padded 50264.
    assert_eq!(vocabs, [32000, 50264]);
    let rows: i64 = SAMPLES.iter().map(|cu| i64::from(cu[cu.len() - 1])).sum();
    for vocab in vocabs {
        let theirs = fla("cross_entropy", &[("V", vocab.to_string())]);
        let build = recording();
        let logits =
            Tensor::randn([rows, vocab], (Kind::BFloat16, Device::Cpu)).set_requires_grad(true);
        let labels = Tensor::randint(vocab, [rows], (Kind::Int64, Device::Cpu));
        let loss = cross_entropy::cross_entropy(&logits, &labels).unwrap();
        backward(&loss);
        assert_launches(
            &format!("cross_entropy {vocab}"),
            &build.take_launches().unwrap(),
            &theirs,
        );
    }
}

/// flame's own fused residual norm (`tools/kernels/residual_norm.py`), held to that file's launches.
#[test]
fn residual_norm_launches_are_its_python_wrappers() {
    let mut norms: Vec<(i64, bool)> = Vec::new();
    for entry in std::fs::read_dir(repo().join("configs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let config = ModelConfig::load(&path).unwrap();
            let norm = (i64::from(config.hidden_size), config.gpt2().is_none());
            if !norms.contains(&norm) {
                norms.push(norm);
            }
        }
    }
    norms.sort_unstable();
    assert_eq!(
        norms.len(),
        7,
        "GPT-2's four widths, three of RMSNorm: {norms:?}"
    );
    for (d, rms) in norms {
        let theirs = fla(
            "residual_norm",
            &[("D", d.to_string()), ("rms", rms.to_string())],
        );
        let build = recording();
        let branch = input(&[d]);
        let residual = input(&[d])
            .to_kind(Kind::Float)
            .detach()
            .set_requires_grad(true);
        let param = || Tensor::randn([d], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let (weight, bias) = (param(), param());
        let (y, h) = residual_norm::residual_norm(
            &branch,
            &residual,
            &weight,
            (!rms).then_some(&bias),
            1e-5,
        )
        .unwrap();
        flame_trainer::shim::backward_many(&[&y, &h], &[&y.ones_like(), &h.ones_like()]).unwrap();
        assert_launches(
            &format!("residual_norm {d} rms={rms}"),
            &build.take_launches().unwrap(),
            &theirs,
        );
    }
}

/// The fused residual norm's kernels compute the add and the norm and their gradients: run by Triton's
/// interpreter on the CPU against torch's autograd in float32 (the script states its tolerances).
#[test]
fn residual_norm_kernels_equal_torchs_add_and_norm() {
    let said = succeeds(
        std::process::Command::new(python())
            .arg(repo().join("tools/kernels/check/residual_norm_interpret.py")),
    );
    assert_eq!(said.lines().count(), 8, "{said}");
}

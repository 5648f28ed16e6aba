//! What `tools/interop/fla_parity.py` compares with fla 0.6.0 on the GPU machine (`tools/gpu/linear.sh`).
//!
//! `linear_parity models OUT_DIR`: for a small random model of each of flame's linear architectures
//! (`gla`, `delta_net`, `gated_deltanet`: flame's configs at width 512 and two layers), the Hugging
//! Face export and this crate's float32 logits on fixed tokens (two whole windows, and one window of
//! three packed documents), computed on the CPU and, where CUDA is present, again on CUDA.
//!
//! `linear_parity ops IN OUT`: the chunked token-mixing ops on the inputs `fla_parity.py ops-gen`
//! wrote (`IN`, safetensors: per op its q, k, v, gates, the output's gradient and `cu_seqlens`), on
//! CUDA in float32: each op's output and its inputs' gradients, to `OUT`; and, where fla's kernels are
//! built (`tools/setup-kernels.sh`) for these inputs' shapes, DeltaNet's and GLA's ops on them
//! (`delta_rule_fla.*`, `gla_fla.*`, bf16) and Gated DeltaNet's, with the layer's raw `a`, `b`, `A_log`
//! and `dt_bias` (`gated_delta_rule_fla.*`).

use std::path::{Path, PathBuf};

use flame_trainer::config::{DeltaRuleConfig, ModelConfig};
use flame_trainer::kernels::fla::Varlen;
use flame_trainer::kernels::{ChunkLayout, chunk_delta_rule, chunk_gla};
use flame_trainer::models::{CHUNK, CausalLm, Inputs, Model};
use flame_trainer::train::export_hf;
use tch::{Device, Kind, Tensor, nn};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("models") => models(Path::new(args.get(2).map_or("parity", String::as_str))),
        Some("ops") if args.len() == 4 => ops(Path::new(&args[2]), Path::new(&args[3])),
        _ => anyhow::bail!("usage: linear_parity models OUT_DIR | linear_parity ops IN OUT"),
    }
}

/// flame's config `name`, at width 512 with two layers.
fn config(name: &str) -> anyhow::Result<ModelConfig> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let text = std::fs::read_to_string(root.join(name))?;
    let mut keys: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)?;
    keys.insert("hidden_size".into(), 512.into());
    keys.insert("num_hidden_layers".into(), 2.into());
    if keys.contains_key("head_dim") {
        keys.insert("num_heads".into(), 2.into());
        keys.insert("head_dim".into(), 128.into());
    }
    Ok(ModelConfig::from_json(&serde_json::to_string(&keys)?)?)
}

fn models(out: &Path) -> anyhow::Result<()> {
    for name in [
        "gla_340M.json",
        "delta_net_340M.json",
        "gated_deltanet_340M.json",
    ] {
        let config = config(name)?;
        tch::manual_seed(17);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let model = CausalLm::new(&vs.root(), &config);
        // Norm weights away from one, so that they count.
        tch::no_grad(|| {
            for (key, mut t) in vs.variables() {
                if key.ends_with("norm.weight") || key.ends_with("norm_swish_gate.weight") {
                    let _ = t.g_add_(&(Tensor::randn_like(&t) * 0.1));
                }
            }
        });
        let dir = out.join(&config.model_type);
        export_hf(&dir.join("hf"), &vs, &model, None)?;
        let tokens: Vec<u32> = (0..400u32).map(|i| (i * 7919 + 13) % 32000).collect();
        let documents = [0u32, 70, 141, 200];
        let logits = |model: &CausalLm, device: Device| {
            tch::no_grad(|| {
                let whole = model.forward(&Inputs::new(
                    &tokens,
                    200,
                    &[vec![0, 200], vec![0, 200]],
                    device,
                ));
                let packed = model.forward(&Inputs::new(
                    &tokens[..200],
                    200,
                    &[documents.to_vec()],
                    device,
                ));
                (whole.to_device(Device::Cpu), packed.to_device(Device::Cpu))
            })
        };
        let (whole, packed) = logits(&model, Device::Cpu);
        let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        let cu: Vec<i32> = documents
            .iter()
            .map(|&c| i32::try_from(c).unwrap_or(0))
            .collect();
        let mut named = vec![
            ("tokens".to_owned(), Tensor::from_slice(&ids).view([2, 200])),
            ("cu_seqlens".to_owned(), Tensor::from_slice(&cu)),
            ("whole".to_owned(), whole),
            ("packed".to_owned(), packed),
        ];
        if tch::Cuda::is_available() {
            vs.set_device(Device::Cuda(0));
            let (whole, packed) = logits(&model, Device::Cuda(0));
            named.push(("whole_cuda".to_owned(), whole));
            named.push(("packed_cuda".to_owned(), packed));
        }
        Tensor::write_safetensors(&named, dir.join("logits.safetensors"))?;
    }
    println!("{}", out.display());
    Ok(())
}

fn ops(input: &Path, output: &Path) -> anyhow::Result<()> {
    let device = if tch::Cuda::is_available() {
        Device::Cuda(0)
    } else {
        Device::Cpu
    };
    let tensors: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(input)?.into_iter().collect();
    let get = |name: &str| -> anyhow::Result<Tensor> {
        let t = tensors
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("{}: no {name}", input.display()))?;
        Ok(t.to_device(device))
    };
    let mut out = Vec::new();
    for op in ["gla", "delta_rule", "gated_delta_rule"] {
        let leaf = |name: &str| -> anyhow::Result<Tensor> {
            Ok(get(&format!("{op}.{name}"))?
                .to_kind(Kind::Float)
                .set_requires_grad(true))
        };
        let (q, k, v) = (leaf("q")?, leaf("k")?, leaf("v")?);
        let cu: Vec<i64> = Vec::try_from(get(&format!("{op}.cu_seqlens"))?.to_device(Device::Cpu))?;
        let cu: Vec<u32> = cu.iter().map(|&c| u32::try_from(c).unwrap_or(0)).collect();
        let seq_len = usize::try_from(q.size()[1])?;
        let layout = ChunkLayout::new(&[cu], seq_len, CHUNK, device);
        #[allow(clippy::cast_precision_loss)]
        let scale = (q.size()[3] as f64).powf(-0.5);
        let mut leaves = vec![
            ("q", q.shallow_clone()),
            ("k", k.shallow_clone()),
            ("v", v.shallow_clone()),
        ];
        let o = if op == "gla" {
            let g = leaf("g")?;
            leaves.push(("g", g.shallow_clone()));
            chunk_gla(&q, &k, &v, &g, scale, &layout)
        } else {
            let beta = leaf("beta")?;
            leaves.push(("beta", beta.shallow_clone()));
            let g = (op == "gated_delta_rule").then(|| leaf("g")).transpose()?;
            if let Some(g) = &g {
                leaves.push(("g", g.shallow_clone()));
            }
            chunk_delta_rule(&q, &k, &v, &beta, g.as_ref(), scale, &layout)
        };
        let d_o = get(&format!("{op}.do"))?.to_kind(Kind::Float);
        (&o * &d_o).sum(Kind::Float).backward();
        out.push((format!("{op}.o"), o.detach().to_device(Device::Cpu)));
        for (name, t) in leaves {
            out.push((format!("{op}.d{name}"), t.grad().to_device(Device::Cpu)));
        }
    }
    match flame_trainer::kernels::cubin::Kernels::installed() {
        Ok(kernels) if device.is_cuda() => {
            for (op, decay) in [("delta_rule", false), ("gated_delta_rule", true)] {
                // A build holds the kernels of configs/' shapes; these inputs' may need their own
                // (tools/kernels/build.py --configs).
                let shape = get(&format!("{op}.v"))?.size();
                let k_dim = get(&format!("{op}.q"))?.size()[3];
                let config = DeltaRuleConfig {
                    num_heads: u32::try_from(shape[2])?,
                    head_k_dim: u32::try_from(k_dim)?,
                    head_v_dim: u32::try_from(shape[3])?,
                    short_conv: None,
                    use_beta: true,
                    allow_neg_eigval: false,
                    output_gate: None,
                    decay,
                };
                if let Err(e) = flame_trainer::kernels::fla::delta_rule::check(kernels, &config) {
                    eprintln!("linear_parity: {op}_fla left out: {e}");
                } else if decay {
                    out.extend(fla_gated_delta_rule(&get, device)?);
                } else {
                    out.extend(fla_delta_rule(&get, device)?);
                }
            }
            out.extend(fla_gla(&get, device)?);
            for name in ["gated_norm_256", "gated_norm_512"] {
                out.extend(fla_gated_norm(&get, name)?);
            }
            out.extend(fla_short_conv(&get, device)?);
            out.extend(fla_swiglu(&get)?);
            out.extend(fla_cross_entropy(&get)?);
            for name in ["residual_norm_768", "residual_norm_1024"] {
                out.extend(residual_norm(&get, name)?);
            }
        }
        Ok(_) => {}
        Err(e) => eprintln!(
            "linear_parity: no fla kernels ({e}): delta_rule_fla, gated_delta_rule_fla, gla_fla left out"
        ),
    }
    Tensor::write_safetensors(&out, output)?;
    println!("{}", output.display());
    Ok(())
}

/// DeltaNet's op on fla's kernels (`delta_rule_fla.*`): the `delta_rule` inputs in bf16, q and k
/// L2-normalised in the kernels, as fla's `chunk_delta_rule(…, use_qk_l2norm_in_kernel=True)`.
fn fla_delta_rule(
    get: &dyn Fn(&str) -> anyhow::Result<Tensor>,
    device: Device,
) -> anyhow::Result<Vec<(String, Tensor)>> {
    let leaf = |name: &str| -> anyhow::Result<Tensor> {
        Ok(get(&format!("delta_rule.{name}"))?
            .to_kind(Kind::BFloat16)
            .set_requires_grad(true))
    };
    let leaves = [
        ("q", leaf("q")?),
        ("k", leaf("k")?),
        ("v", leaf("v")?),
        ("beta", leaf("beta")?),
    ];
    let cu: Vec<i64> = Vec::try_from(get("delta_rule.cu_seqlens")?.to_device(Device::Cpu))?;
    let cu: Vec<u32> = cu.iter().map(|&c| u32::try_from(c).unwrap_or(0)).collect();
    let seq_len = usize::try_from(leaves[0].1.size()[1])?;
    let varlen = Varlen::new(&[cu], seq_len, CHUNK, device);
    #[allow(clippy::cast_precision_loss)]
    let scale = (leaves[0].1.size()[3] as f64).powf(-0.5);
    let [q, k, v, beta] = leaves.each_ref().map(|(_, t)| t);
    let o =
        flame_trainer::kernels::fla::delta_rule::chunk_delta_rule(q, k, v, beta, scale, &varlen)
            .map_err(anyhow::Error::msg)?;
    let d_o = get("delta_rule.do")?.to_kind(Kind::BFloat16);
    (o.to_kind(Kind::Float) * d_o.to_kind(Kind::Float))
        .sum(Kind::Float)
        .backward();
    let mut out = vec![(
        "delta_rule_fla.o".to_string(),
        o.detach().to_kind(Kind::Float).to_device(Device::Cpu),
    )];
    for (name, t) in &leaves {
        out.push((
            format!("delta_rule_fla.d{name}"),
            t.grad().to_kind(Kind::Float).to_device(Device::Cpu),
        ));
    }
    Ok(out)
}

/// Gated DeltaNet's op on fla's kernels (`gated_delta_rule_fla.*`): the `gated_delta_rule` inputs q, k,
/// v in bf16 with the layer's raw inputs `a`, `b` (bf16) and its `A_log`, `dt_bias` (fp32), as fla's
/// `GatedDeltaNet` calls `chunk_gated_delta_rule` (q and k L2-normalised, β = sigmoid(b) and the decay
/// `−exp(A_log) · softplus(a + dt_bias)` in the kernels); the output and all seven gradients.
#[allow(clippy::many_single_char_names)] // fla's names of the op's inputs
fn fla_gated_delta_rule(
    get: &dyn Fn(&str) -> anyhow::Result<Tensor>,
    device: Device,
) -> anyhow::Result<Vec<(String, Tensor)>> {
    let leaf = |name: &str, kind: Kind| -> anyhow::Result<Tensor> {
        Ok(get(&format!("gated_delta_rule.{name}"))?
            .to_kind(kind)
            .set_requires_grad(true))
    };
    let leaves = [
        ("q", leaf("q", Kind::BFloat16)?),
        ("k", leaf("k", Kind::BFloat16)?),
        ("v", leaf("v", Kind::BFloat16)?),
        ("a", leaf("a", Kind::BFloat16)?),
        ("b", leaf("b", Kind::BFloat16)?),
        ("A_log", leaf("A_log", Kind::Float)?),
        ("dt_bias", leaf("dt_bias", Kind::Float)?),
    ];
    let cu: Vec<i64> = Vec::try_from(get("gated_delta_rule.cu_seqlens")?.to_device(Device::Cpu))?;
    let cu: Vec<u32> = cu.iter().map(|&c| u32::try_from(c).unwrap_or(0)).collect();
    let seq_len = usize::try_from(leaves[0].1.size()[1])?;
    let varlen = Varlen::new(&[cu], seq_len, CHUNK, device);
    #[allow(clippy::cast_precision_loss)]
    let scale = (leaves[0].1.size()[3] as f64).powf(-0.5);
    let [q, k, v, a, b, a_log, dt_bias] = leaves.each_ref().map(|(_, t)| t);
    let o = flame_trainer::kernels::fla::gated_delta_rule::chunk_gated_delta_rule(
        q, k, v, a, b, a_log, dt_bias, scale, false, &varlen,
    )
    .map_err(anyhow::Error::msg)?;
    let d_o = get("gated_delta_rule.do")?.to_kind(Kind::BFloat16);
    (o.to_kind(Kind::Float) * d_o.to_kind(Kind::Float))
        .sum(Kind::Float)
        .backward();
    let mut out = vec![(
        "gated_delta_rule_fla.o".to_string(),
        o.detach().to_kind(Kind::Float).to_device(Device::Cpu),
    )];
    for (name, t) in &leaves {
        out.push((
            format!("gated_delta_rule_fla.d{name}"),
            t.grad().to_kind(Kind::Float).to_device(Device::Cpu),
        ));
    }
    Ok(out)
}

/// GLA's op on fla's kernels (`gla_fla.*`): the `gla` inputs in bf16, as fla's
/// `chunk_gla(q, k, v, g, cu_seqlens=…)` takes them from its layer.
fn fla_gla(
    get: &dyn Fn(&str) -> anyhow::Result<Tensor>,
    device: Device,
) -> anyhow::Result<Vec<(String, Tensor)>> {
    let leaf = |name: &str| -> anyhow::Result<Tensor> {
        Ok(get(&format!("gla.{name}"))?
            .to_kind(Kind::BFloat16)
            .set_requires_grad(true))
    };
    let leaves = [
        ("q", leaf("q")?),
        ("k", leaf("k")?),
        ("v", leaf("v")?),
        ("g", leaf("g")?),
    ];
    let cu: Vec<i64> = Vec::try_from(get("gla.cu_seqlens")?.to_device(Device::Cpu))?;
    let cu: Vec<u32> = cu.iter().map(|&c| u32::try_from(c).unwrap_or(0)).collect();
    let seq_len = usize::try_from(leaves[0].1.size()[1])?;
    let varlen = Varlen::new(&[cu], seq_len, CHUNK, device);
    #[allow(clippy::cast_precision_loss)]
    let scale = (leaves[0].1.size()[3] as f64).powf(-0.5);
    let [q, k, v, g] = leaves.each_ref().map(|(_, t)| t);
    let output = flame_trainer::kernels::fla::gla::chunk_gla(q, k, v, g, scale, &varlen)
        .map_err(anyhow::Error::msg)?;
    let d_o = get("gla.do")?.to_kind(Kind::BFloat16);
    (output.to_kind(Kind::Float) * d_o.to_kind(Kind::Float))
        .sum(Kind::Float)
        .backward();
    let mut out = vec![(
        "gla_fla.o".to_string(),
        output.detach().to_kind(Kind::Float).to_device(Device::Cpu),
    )];
    for (name, t) in &leaves {
        out.push((
            format!("gla_fla.d{name}"),
            t.grad().to_kind(Kind::Float).to_device(Device::Cpu),
        ));
    }
    Ok(out)
}

/// The gated output norm on fla's kernel (`NAME.*`: x, g bf16, w fp32, swish, eps 1e-6), its output
/// and gradients for the output gradient `NAME.dy`.
fn fla_gated_norm(
    get: &dyn Fn(&str) -> anyhow::Result<Tensor>,
    name: &str,
) -> anyhow::Result<Vec<(String, Tensor)>> {
    let leaf = |part: &str| -> anyhow::Result<Tensor> {
        Ok(get(&format!("{name}.{part}"))?.set_requires_grad(true))
    };
    let (x, g, w) = (leaf("x")?, leaf("g")?, leaf("w")?);
    let y = flame_trainer::kernels::fla::norm::gated_rms_norm(
        &x,
        &g,
        &w,
        1e-6,
        flame_trainer::config::GateActivation::Swish,
    )
    .map_err(anyhow::Error::msg)?;
    let dy = get(&format!("{name}.dy"))?.to_kind(Kind::Float);
    (y.to_kind(Kind::Float) * dy).sum(Kind::Float).backward();
    let mut out = vec![(format!("{name}.y"), y.detach().to_device(Device::Cpu))];
    for (part, t) in [("x", x), ("g", g), ("w", w)] {
        out.push((format!("{name}.d{part}"), t.grad().to_device(Device::Cpu)));
    }
    Ok(out)
}

/// DeltaNet's short convolution on fla's kernel (`short_conv.*`: x bf16 `[1, T, D]`, w fp32 `[D, W]`,
/// SiLU), its output and gradients for the output gradient `short_conv.dy`.
fn fla_short_conv(
    get: &dyn Fn(&str) -> anyhow::Result<Tensor>,
    device: Device,
) -> anyhow::Result<Vec<(String, Tensor)>> {
    let x = get("short_conv.x")?.set_requires_grad(true);
    let w = get("short_conv.w")?;
    let w = w.unsqueeze(1).set_requires_grad(true);
    let cu: Vec<i64> = Vec::try_from(get("short_conv.cu_seqlens")?.to_device(Device::Cpu))?;
    let cu: Vec<u32> = cu.iter().map(|&c| u32::try_from(c).unwrap_or(0)).collect();
    let varlen = Varlen::new(&[cu], usize::try_from(x.size()[1])?, CHUNK, device);
    let y = flame_trainer::kernels::fla::conv::short_conv(&x, &w, &varlen)
        .map_err(anyhow::Error::msg)?;
    let dy = get("short_conv.dy")?.to_kind(Kind::Float);
    (y.to_kind(Kind::Float) * dy).sum(Kind::Float).backward();
    Ok(vec![
        (
            "short_conv.y".to_string(),
            y.detach().to_device(Device::Cpu),
        ),
        ("short_conv.dx".to_string(), x.grad().to_device(Device::Cpu)),
        (
            "short_conv.dw".to_string(),
            w.grad().squeeze_dim(1).to_device(Device::Cpu),
        ),
    ])
}

/// The MLP's SwiGLU and down projection on fla's kernels (`swiglu.*`: gate, up bf16, w fp32), the
/// output and gradients for the output gradient `swiglu.dout`.
fn fla_swiglu(
    get: &dyn Fn(&str) -> anyhow::Result<Tensor>,
) -> anyhow::Result<Vec<(String, Tensor)>> {
    let leaf = |part: &str| -> anyhow::Result<Tensor> {
        Ok(get(&format!("swiglu.{part}"))?.set_requires_grad(true))
    };
    let (gate, up, w) = (leaf("gate")?, leaf("up")?, leaf("w")?);
    let out = flame_trainer::kernels::fla::swiglu::swiglu_linear(&gate, &up, &w)
        .map_err(anyhow::Error::msg)?;
    let dout = get("swiglu.dout")?.to_kind(Kind::Float);
    (out.to_kind(Kind::Float) * dout)
        .sum(Kind::Float)
        .backward();
    let mut result = vec![(
        "swiglu.out".to_string(),
        out.detach().to_device(Device::Cpu),
    )];
    for (part, t) in [("gate", gate), ("up", up), ("w", w)] {
        result.push((format!("swiglu.d{part}"), t.grad().to_device(Device::Cpu)));
    }
    Ok(result)
}

/// The loss on fla's kernels (`cross_entropy.*`: bf16 logits, int64 labels): each row's loss, and the
/// logits' gradient for the rows' gradients `cross_entropy.dloss`.
fn fla_cross_entropy(
    get: &dyn Fn(&str) -> anyhow::Result<Tensor>,
) -> anyhow::Result<Vec<(String, Tensor)>> {
    let logits = get("cross_entropy.logits")?.set_requires_grad(true);
    // A copy under the node: its backward writes the gradient over the logits it was given.
    let under = logits.copy();
    let loss = flame_trainer::kernels::fla::cross_entropy::cross_entropy(
        &under,
        &get("cross_entropy.labels")?,
    )
    .map_err(anyhow::Error::msg)?;
    (&loss * get("cross_entropy.dloss")?)
        .sum(Kind::Float)
        .backward();
    Ok(vec![
        (
            "cross_entropy.loss".to_string(),
            loss.detach().to_device(Device::Cpu),
        ),
        (
            "cross_entropy.dlogits".to_string(),
            logits.grad().to_device(Device::Cpu),
        ),
    ])
}

/// flame's fused residual norm (`NAME.*`: branch `x` bf16, residual `res` fp32, weight `w` and, for
/// LayerNorm, bias `b`): the norm `y`, the sum `h`, and the inputs' gradients for `dy` and `dres`.
#[allow(clippy::many_single_char_names)] // the names of fla_parity.py's tensors
fn residual_norm(
    get: &dyn Fn(&str) -> anyhow::Result<Tensor>,
    name: &str,
) -> anyhow::Result<Vec<(String, Tensor)>> {
    let leaf = |part: &str| -> anyhow::Result<Tensor> {
        Ok(get(&format!("{name}.{part}"))?.set_requires_grad(true))
    };
    let (x, res, w) = (leaf("x")?, leaf("res")?, leaf("w")?);
    let b = leaf("b").ok();
    let (y, h) =
        flame_trainer::kernels::residual_norm::residual_norm(&x, &res, &w, b.as_ref(), 1e-5)
            .map_err(anyhow::Error::msg)?;
    let (dy, dres) = (get(&format!("{name}.dy"))?, get(&format!("{name}.dres"))?);
    flame_trainer::shim::backward_many(&[&y, &h], &[&dy, &dres]).map_err(anyhow::Error::msg)?;
    let mut result = vec![
        (format!("{name}.y"), y.detach().to_device(Device::Cpu)),
        (format!("{name}.h"), h.detach().to_device(Device::Cpu)),
    ];
    for (part, t) in [("x", Some(x)), ("res", Some(res)), ("w", Some(w)), ("b", b)] {
        if let Some(t) = t {
            result.push((format!("{name}.d{part}"), t.grad().to_device(Device::Cpu)));
        }
    }
    Ok(result)
}

//! The output layer's cross-entropy as fla 0.6.0's fused loss computes it
//! (`fla/modules/fused_cross_entropy/ops.py`, the kernels its `FusedLinearCrossEntropyLoss` runs on each
//! chunk of logits): one kernel reads each row of bf16 logits once for the row's loss and log-sum-exp,
//! in fp32; in the backward pass one more writes the logits' gradient over the logits themselves
//! (`inplace_backward`), so a chunk of `[rows, vocab]` logits costs one bf16 buffer, read twice and
//! written once, where libtorch's loss casts it to fp32 and makes a softmax and a gradient of that size.
//! No label smoothing, scale or softcapping; labels [`IGNORE`] count nothing and get no gradient.
//! A vocabulary wider than 65536 takes fla's split kernels, which the kernel build does not hold.

use serde_json::json;
use tch::{Kind, Tensor};

use super::common::tensor;
use super::{cdiv, int};
use crate::kernels::cubin::{Kernels, Variant};
use crate::models::IGNORE;
use crate::shim::kernels::{self as bridge, Forward, Function};

/// The widest vocabulary one program of fla's forward kernel takes (`BV`'s cap).
const MAX_VOCAB: i64 = 1 << 16;

/// Each row's cross-entropy of `logits` (`[N, V]`, bf16, contiguous) against `labels` (`[N]`, int64),
/// `[N]` float32, 0 where the label is [`IGNORE`]. Its backward pass overwrites `logits` with their
/// gradient: nothing may read them after the backward pass.
///
/// # Errors
/// For shapes or dtypes fla's kernels do not take, or a build without this vocabulary.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor, String> {
    let (size, kind) = (logits.size(), logits.kind());
    if size.len() != 2 || labels.size() != [size[0]] || kind != Kind::BFloat16 {
        return Err(format!(
            "cross_entropy: logits {size:?} ({kind:?}) must be [N, V] bf16 and labels {:?} be [N]",
            labels.size()
        ));
    }
    let labels = labels.to_kind(Kind::Int64).contiguous();
    let mut outputs = bridge::apply(&CROSS_ENTROPY, &[], &[&logits.contiguous(), &labels])?;
    Ok(outputs.remove(0))
}

/// Whether the build has the kernels of the loss over `vocab` classes.
pub fn check(kernels: &'static Kernels, vocab: i64) -> Result<(), String> {
    loss_kernel(kernels, "cross_entropy_fwd_kernel", vocab)?;
    loss_kernel(kernels, "cross_entropy_bwd_kernel", vocab)?;
    Ok(())
}

static CROSS_ENTROPY: Function = Function {
    name: "fla cross_entropy",
    forward,
    backward,
};

/// The variant of `modules.fused_cross_entropy.ops.<name>` for `vocab` classes (one program per row
/// in the forward kernel, no split over the vocabulary) and flame's ignored label.
fn loss_kernel(
    kernels: &'static Kernels,
    name: &str,
    vocab: i64,
) -> Result<Variant<'static>, String> {
    if vocab > MAX_VOCAB {
        return Err(format!(
            "fla's cross-entropy over {vocab} classes splits the vocabulary, which flame-train does not launch (at most {MAX_VOCAB})"
        ));
    }
    let kernel = format!("modules.fused_cross_entropy.ops.{name}");
    let mut spec = vec![("V", json!(vocab)), ("ignore_index", json!(IGNORE))];
    if name == "cross_entropy_fwd_kernel" {
        spec.push(("SPLIT", json!(false)));
    }
    kernels.find(&kernel, &spec)
}

fn forward(_: &[f64], inputs: &[Tensor]) -> Result<Forward, String> {
    let kernels = Kernels::installed()?;
    let [logits, labels] = inputs else {
        return Err("two inputs".into());
    };
    let (rows, vocab) = (logits.size()[0], logits.size()[1]);
    let variant = loss_kernel(kernels, "cross_entropy_fwd_kernel", vocab)?;
    let options = (Kind::Float, logits.device());
    let (loss, lse, z_loss) = (
        Tensor::empty([rows], options),
        Tensor::empty([rows], options),
        Tensor::empty([rows], options),
    );
    variant.launch(
        [rows, 1, 1],
        &[
            ("logits", tensor(logits)),
            ("target", tensor(labels)),
            ("loss", tensor(&loss)),
            ("z_loss", tensor(&z_loss)),
            ("lse", tensor(&lse)),
            ("s_logits", int(vocab)?),
            ("N", int(rows)?),
        ],
    )?;
    Ok(Forward {
        outputs: vec![loss],
        saved: vec![logits.shallow_clone(), labels.shallow_clone(), lse],
    })
}

fn backward(_: &[f64], saved: &[Tensor], grads: &[Tensor]) -> Result<Vec<Option<Tensor>>, String> {
    let kernels = Kernels::installed()?;
    let [logits, labels, lse] = saved else {
        return Err("three saved tensors".into());
    };
    let (rows, vocab) = (logits.size()[0], logits.size()[1]);
    let variant = loss_kernel(kernels, "cross_entropy_bwd_kernel", vocab)?;
    // Each row's gradient, one float each (fla's kernel reads them with stride 1).
    let dloss = grads[0].to_kind(Kind::Float).contiguous();
    variant.launch(
        [rows, cdiv(vocab, variant.constexpr("BV")?), 1],
        &[
            ("logits", tensor(logits)),
            ("target", tensor(labels)),
            ("lse", tensor(lse)),
            ("dloss", tensor(&dloss)),
            ("dlogits", tensor(logits)),
            ("s_logits", int(vocab)?),
            ("s_dlogits", int(vocab)?),
        ],
    )?;
    Ok(vec![Some(logits.shallow_clone()), None])
}

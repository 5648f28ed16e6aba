"""The models of configs/: what each one asks of fla's kernels. The linear-attention models run fla's chunk
ops (heads and head widths, derived from the config JSON exactly as fla 0.6.0's layers derive them;
defaults are its config classes'); every model, the transformer and GPT-2 too, runs fla's fused
cross-entropy over its vocabulary and flame's own fused residual add and norm (residual_norm.py) over its
width."""
import json
import math
import os
from dataclasses import dataclass, field

MODEL_TYPES = ("gla", "delta_net", "gated_deltanet")
# Models without linear attention: only the loss runs on fla's kernels.
OTHER_MODEL_TYPES = ("transformer", "gpt2")
# fla's configs' default vocabulary (and flame's transformer's).
DEFAULT_VOCAB = 32000


@dataclass(frozen=True)
class Model:
    name: str  # the config file's stem, e.g. 'gla_340M'
    op: str | None  # 'gla' | 'delta_net' | 'gated_deltanet' (trace.OPS); None for a model without linear attention
    shape: dict = field(hash=False)  # keyword arguments of the trace function: H, (HV,) K, V (, flags)
    # The layer's other fla kernels, as (trace function, its arguments): the output norm's ('gated_norm': H,
    # D, activation) when fla's layer fuses the gate into it (FusedRMSNormGated), the short convolutions'
    # ('short_conv': D, W) for each distinct width, the MLP's SwiGLU ('swiglu': D), the loss's
    # ('cross_entropy': V), the blocks' residual add and norm ('residual_norm': D, rms).
    extras: tuple = field(default=(), hash=False)


def _width(config, key, default):
    """round(hidden_size * expand), which must be whole (fla's layers assert it)."""
    width = config["hidden_size"] * config.get(key, default)
    if not math.isclose(width, round(width)):
        raise ValueError(f"hidden_size * {key} = {width} is not a whole width")
    return round(width)


def _per_head(total, heads, what):
    if total % heads:
        raise ValueError(f"{what} {total} is not divisible by {heads} heads")
    return total // heads


def gla(config):
    """fla.layers.gla.GatedLinearAttention: key_dim = hidden*expand_k, value_dim = hidden*expand_v, split over
    num_heads (k, v are repeated to num_heads when num_kv_heads groups them, so the kernels see num_heads)."""
    heads = config.get("num_heads") or 4
    return dict(H=heads, K=_per_head(_width(config, "expand_k", 0.5), heads, "key_dim"),
                V=_per_head(_width(config, "expand_v", 1.0), heads, "value_dim"))


def delta_net(config):
    """fla.layers.delta_net.DeltaNet: as GLA with expand_k = expand_v = 1 by default; l2 norm of q and k in
    the kernels when qk_norm == 'l2' (the default)."""
    heads = config.get("num_heads") or 16
    return dict(H=heads, K=_per_head(_width(config, "expand_k", 1.0), heads, "key_dim"),
                V=_per_head(_width(config, "expand_v", 1.0), heads, "value_dim"),
                l2norm=config.get("qk_norm", "l2") == "l2")


def gated_deltanet(config):
    """fla.layers.gated_deltanet.GatedDeltaNet: head_k_dim = head_dim, head_v_dim = head_dim * expand_v,
    num_v_heads (default num_heads) value heads; independent of hidden_size."""
    heads = config.get("num_heads") or 6
    head_dim = config.get("head_dim") or 256
    head_v = head_dim * config.get("expand_v", 2.0)
    if not math.isclose(head_v, round(head_v)):
        raise ValueError(f"head_dim * expand_v = {head_v} is not a whole width")
    v_heads = config.get("num_v_heads") or heads
    if v_heads % heads:
        raise ValueError(f"num_v_heads {v_heads} is not a multiple of num_heads {heads}")
    return dict(H=heads, HV=v_heads, K=head_dim, V=round(head_v),
                allow_neg_eigval=bool(config.get("allow_neg_eigval", False)))


_SHAPES = {"gla": gla, "delta_net": delta_net, "gated_deltanet": gated_deltanet}


def gated_norm(op, config, shape):
    """The layer's FusedRMSNormGated over each value head, if it has one: GLA's with gate_fn 'swish',
    fuse_norm and use_output_gate (each true by default); DeltaNet's and Gated DeltaNet's with use_gate
    (false by default for DeltaNet, true for Gated DeltaNet), whose activation is Gated DeltaNet's
    output_gate_activation (else swish). 'silu' is traced as 'swish': the kernels compute the same for
    both, and flame-train launches 'swish'."""
    if op == "gla":
        fused = (config.get("gate_fn", "swish") == "swish" and config.get("fuse_norm", True)
                 and config.get("use_output_gate", True))
        activation = "swish"
    else:
        fused = config.get("use_gate", op == "gated_deltanet")
        activation = config.get("output_gate_activation", "swish") if op == "gated_deltanet" else "swish"
    if not fused:
        return None
    heads = shape.get("HV", shape["H"])
    return ("gated_norm", dict(H=heads, D=shape["V"], activation="swish" if activation == "silu" else activation))


def short_convs(op, config, shape):
    """The layer's ShortConvolutions, one trace per distinct width: q's and k's over the key heads
    (H·K), v's over the value heads (HV·V), or Gated DeltaNet's three side by side, of conv_size taps
    (default 4), when use_short_conv (default false for GLA, true for DeltaNet and Gated DeltaNet)."""
    if not config.get("use_short_conv", op != "gla"):
        return ()
    taps = config.get("conv_size", 4)
    key, value = shape["H"] * shape["K"], shape.get("HV", shape["H"]) * shape["V"]
    # flame-train convolves Gated DeltaNet's q, k and v side by side, as fla's layer does on whole
    # sequences (_use_fused_qkv_conv): one width, 2·H·K + HV·V.
    widths = [2 * key + value] if op == "gated_deltanet" else sorted({key, value})
    return tuple(("short_conv", dict(D=width, W=taps)) for width in widths)


def mlp(config):
    """The block's GatedMLP, SwiGLU over intermediate_size channels (fla/modules/mlp.py: by default
    int(hidden_size * hidden_ratio * 2/3) rounded up to a multiple of 256, hidden_ratio 4)."""
    width = config.get("intermediate_size")
    if width is None:
        width = int(config["hidden_size"] * (config.get("hidden_ratio") or 4) * 2 / 3)
        width = 256 * ((width + 255) // 256)
    return ("swiglu", dict(D=width))


def loss(config):
    """The output layer's cross-entropy over vocab_size classes: fla's FusedCrossEntropyLoss kernels
    (flame's configs set fuse_cross_entropy), which flame-train runs on chunks of the logits."""
    return ("cross_entropy", dict(V=config.get("vocab_size") or DEFAULT_VOCAB))


def residual_norm(config):
    """The blocks' residual add and pre-norm over the model's width: GPT-2's LayerNorm (n_embd), the
    others' RMSNorm (hidden_size)."""
    if config.get("model_type") == "gpt2":
        return ("residual_norm", dict(D=config.get("n_embd", 768), rms=False))
    return ("residual_norm", dict(D=config["hidden_size"], rms=True))


def load(configs_dir):
    """Every config in configs_dir whose model_type is one of MODEL_TYPES or OTHER_MODEL_TYPES, sorted by
    name."""
    models = []
    for file in sorted(os.listdir(configs_dir)):
        if not file.endswith(".json"):
            continue
        with open(os.path.join(configs_dir, file)) as f:
            config = json.load(f)
        op = config.get("model_type")
        if op in _SHAPES:
            shape = _SHAPES[op](config)
            norm = gated_norm(op, config, shape)
            extras = (((norm,) if norm else ()) + short_convs(op, config, shape)
                      + (mlp(config), loss(config), residual_norm(config)))
            models.append(Model(file[:-len(".json")], op, shape, extras))
        elif op in OTHER_MODEL_TYPES:
            models.append(Model(file[:-len(".json")], None, {}, (loss(config), residual_norm(config))))
    return models

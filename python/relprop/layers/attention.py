"""Attention: multi-head scaled dot-product attention (the core of ``torch.nn.MultiheadAttention``;
its projections are Dense layers)."""
from __future__ import annotations

from .. import ops
from .._validate import as_int, as_scalar
from .base import Layer, TorchModule, cfg_int, register_layer
from .linear import Dense


def _torch_mha(m, ctx):
    """``nn.MultiheadAttention(query, key, value, ...)`` with ``batch_first=True``: the three
    in-projections (Dense on each token), Attention, the out-projection; its value is torch's
    ``(output, None)`` (no attention weights: relprop's graph has one data output per node)."""
    a = ctx.args
    if not m.batch_first:
        raise ctx.error("batch_first=False reads (tokens, batch, features); relprop reads the "
                        "batch first: nn.MultiheadAttention(..., batch_first=True)")
    given = [k for k in ("key_padding_mask", "attn_mask") if a[k] is not None]
    if given or ctx.constant(a["is_causal"], "is_causal"):
        raise ctx.error(f"attention masks ({', '.join(given) or 'is_causal'}) are not supported")
    if m.bias_k is not None or m.add_zero_attn:
        raise ctx.error("add_bias_kv and add_zero_attn are not supported")
    e = m.embed_dim
    if m._qkv_same_embed_dim:
        w = ctx.array(m.in_proj_weight)
        weights = (w[:e], w[e:2 * e], w[2 * e:])
    else:
        weights = tuple(ctx.array(getattr(m, f"{p}_proj_weight")) for p in "qkv")
    b = None if m.in_proj_bias is None else ctx.array(m.in_proj_bias)
    biases = (None,) * 3 if b is None else (b[:e], b[e:2 * e], b[2 * e:])
    out_b = None if m.out_proj.bias is None else ctx.array(m.out_proj.bias)

    def names(suffix):
        return [f"{n}.{suffix}" for n in ctx.names]

    proj = [ctx.add(Dense(w_, b_), [ctx.tensor(a[arg], arg)], names(f"{p}_proj"))
            for w_, b_, arg, p in zip(weights, biases, ("query", "key", "value"), "qkv")]
    core = ctx.add(Attention(m.num_heads), proj, names("attention"))
    return ctx.add(Dense(ctx.array(m.out_proj.weight), out_b), [core], names("out_proj")), None


_MHA_PARAMS = ("query", "key", "value", ("key_padding_mask", None), ("need_weights", True),
               ("attn_mask", None), ("average_attn_weights", True), ("is_causal", False))


@register_layer
class Attention(Layer):
    """Multi-head scaled dot-product attention, the core of ``torch.nn.MultiheadAttention``
    (whose in- and out-projections are Dense layers on each token): three inputs, per sample
    the queries ``q`` (tq, heads * dk), keys ``k`` (tk, heads * dk) and values ``v``
    (tk, heads * dv); per head ``h`` (the columns ``[h d, (h + 1) d)``), ``A = softmax(scale
    Q_h K_h^T)`` over each row and the output's columns ``A V_h`` (tq, heads * dv).  ``scale``
    is ``1 / sqrt(dk)`` (torch's) unless given.

    The attention weights ``A`` are the forward state (gradients and LRP read them).  LRP has
    no default rule here: explain transformers with the composite "attnlrp" (CP-LRP: ``A`` held
    constant, relevance to the values only) or "attnlrp_full" (AttnLRP's softmax and uniform
    product rules)."""

    kind = "attention"
    slots = ("attention",)
    composites = ("attnlrp", "attnlrp_full")
    n_inputs = 3
    backward_reads_input = True
    imports = (TorchModule(("MultiheadAttention",), _torch_mha, params=_MHA_PARAMS),)

    def __init__(self, heads, scale=None):
        self.heads = as_int(heads, "heads", minimum=1)
        self.scale = None if scale is None else as_scalar(scale, "scale")

    @classmethod
    def from_config(cls, cfg, arrays):
        return cls(cfg_int(cfg, "heads"), cfg.get("scale"))

    def config(self):
        cfg = {"heads": self.heads}
        if self.scale is not None:
            cfg["scale"] = self.scale
        return cfg

    def describe(self):
        return f"Attention {self.heads} head{'s' if self.heads > 1 else ''}"

    def output_shape(self, sq, sk, sv):
        h = self.heads
        ok = (len(sq) == len(sk) == len(sv) == 2 and sk[0] == sv[0] and sq[1] == sk[1]
              and sq[1] % h == 0 and sv[1] % h == 0)
        if not ok:
            raise ValueError(f"{self!r} needs queries (tq, {h} * dk), keys (tk, {h} * dk) and "
                             f"values (tk, {h} * dv) per sample, got {tuple(sq)}, {tuple(sk)}, "
                             f"{tuple(sv)}")
        return (sq[0], sv[1])

    def flops(self, in_shapes, out_shape):
        (tq, d), (tk, _), (_, dv) = in_shapes
        return 2 * tq * tk * (d + dv) + 5 * self.heads * tq * tk

    def forward(self, q, k, v):
        return ops.attention_forward(q, k, v, self.heads, self.scale)

    def vjp(self, g, xs, state, relu_mode="gradient", wanted="qkv"):
        """The gradients w.r.t. ``(q, k, v)`` from ``state`` (the attention weights); those not
        ``wanted`` come back as None."""
        q, k, v = xs
        return ops.attention_backward(g, q, k, v, state, self.heads, self.scale, wanted)


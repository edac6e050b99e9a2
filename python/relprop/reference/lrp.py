"""LRP rules written from their formulas (DESIGN.md section 4) on a layer's dense matrix.

Notation: ``M`` (out, in) is the layer as a matrix on one flattened sample, ``b`` (out,) its
bias, ``a`` (n, in) the layer input, ``r`` (n, out) the upper relevance.  Each rule forms the
contributions ``c[n, k, j]`` of input j to output k and the denominators ``d[n, k]``, and returns
``R[n, j] = sum_k c[n, k, j] * r[n, k] / stab(d[n, k])`` (0 where ``stab(d) == 0``).
"""
import numpy as np

from . import ops
from .layers import reduce_to, twin
from .network import as_matrix, forward, frozen_matrices, layer_backward, layer_forward

pos = lambda v: np.maximum(v, 0)  # noqa: E731
neg = lambda v: np.minimum(v, 0)  # noqa: E731


def _redistribute(c, d, r, eps):
    """R_j = sum_k c_kj * r_k / stab(d_k)."""
    return np.einsum("nkj,nk->nj", c, ops.lrp_divide(r, d, eps))


def _c(a, m):
    """Contributions a_j * m_kj as (n, out, in)."""
    return a[:, None, :] * m[None, :, :]


def epsilon(M, b, a, r, epsilon):
    c = _c(a, M)
    return _redistribute(c, c.sum(-1) + b, r, epsilon)


def alpha_beta(M, b, a, r, alpha, beta, stabilizer):
    cp = _c(pos(a), pos(M)) + _c(neg(a), neg(M))  # positive contributions
    cn = _c(pos(a), neg(M)) + _c(neg(a), pos(M))  # negative contributions
    return (alpha * _redistribute(cp, cp.sum(-1) + pos(b), r, stabilizer)
            - beta * _redistribute(cn, cn.sum(-1) + neg(b), r, stabilizer))


def zplus(M, b, a, r, stabilizer):
    return alpha_beta(M, b, a, r, 1.0, 0.0, stabilizer)


def gamma(M, b, a, r, gamma, stabilizer):
    m1, m2 = M + gamma * pos(M), M + gamma * neg(M)
    b1, b2 = b + gamma * pos(b), b + gamma * neg(b)
    z = _c(a, M).sum(-1) + b
    c1 = _c(pos(a), m1) + _c(neg(a), m2)  # shares of outputs with z > 0
    c2 = _c(pos(a), m2) + _c(neg(a), m1)  # shares of outputs with z < 0
    d1 = _c(pos(a), m1).sum(-1) + b1 + _c(neg(a), m2).sum(-1)
    d2 = _c(pos(a), m2).sum(-1) + b2 + _c(neg(a), m1).sum(-1)
    return (_redistribute(c1, d1, np.where(z > 0, r, 0), stabilizer)
            + _redistribute(c2, d2, np.where(z < 0, r, 0), stabilizer))


def zbox(M, b, a, r, low, high, stabilizer):
    low, high = np.broadcast_to(low, a.shape), np.broadcast_to(high, a.shape)
    c = _c(a, M) - _c(low, pos(M)) - _c(high, neg(M))
    d = (_c(a, M).sum(-1) + b - (_c(low, pos(M)).sum(-1) + pos(b))
         - (_c(high, neg(M)).sum(-1) + neg(b)))
    return _redistribute(c, d, r, stabilizer)


def wsquare(M, b, a, r, stabilizer):
    c = np.broadcast_to(M * M, (len(a),) + M.shape)
    return _redistribute(c, c.sum(-1) + b * b, r, stabilizer)


def flat(S, a, r, stabilizer):
    """``S`` is the layer's receptive-field matrix (the layer with every weight 1)."""
    c = np.broadcast_to(S, (len(a),) + S.shape)
    return _redistribute(c, c.sum(-1), r, stabilizer)


RULE_FUNCTIONS = {"Epsilon": epsilon, "ZPlus": zplus, "AlphaBeta": alpha_beta, "Gamma": gamma,
                  "ZBox": zbox, "WSquare": wsquare, "Flat": flat, "Norm": epsilon}


def uniform_softmax(q, k, v, r, heads, scale, stabilizer):
    """AttnLRP's rules inside attention from their definitions, per sample and head: the
    uniform rule on ``O = A V`` (``A_ik`` and ``V_kj`` each take half of ``A_ik V_kj R_ij /
    stab(O_ij)``), the softmax rule on ``A = softmax(S)`` (``R_S = S (R_A - A rowsum(R_A))``),
    the uniform rule on ``S = scale Q K^T`` (``Q_id`` and ``K_jd`` each take half of ``scale
    Q_id K_jd R_S_ij / S_ij``).  Returns ``[R_q, R_k, R_v]``."""
    dk, dv = q.shape[2] // heads, v.shape[2] // heads
    scale = 1 / np.sqrt(dk) if scale is None else scale
    out = [np.zeros_like(t) for t in (q, k, v)]
    for b in range(len(q)):
        for h in range(heads):
            cq, cv = slice(h * dk, (h + 1) * dk), slice(h * dv, (h + 1) * dv)
            Q, K, V = q[b, :, cq], k[b, :, cq], v[b, :, cv]
            S = scale * Q @ K.T
            A = np.exp(S - S.max(1, keepdims=True))
            A /= A.sum(1, keepdims=True)
            s = ops.lrp_divide(r[b, :, cv], A @ V, stabilizer)
            share = A[:, :, None] * V[None] * s[:, None]
            out[2][b, :, cv] = share.sum(0) / 2
            RA = share.sum(2) / 2
            RS = S * (RA - A * RA.sum(1, keepdims=True))
            share = scale * Q[:, None, :] * K[None] * (RS / S)[:, :, None]
            out[0][b, :, cq] = share.sum(1) / 2
            out[1][b, :, cq] = share.sum(0) / 2
    return out


def _bound(v, shape):
    v = np.asarray(v, dtype=np.float64)
    if v.ndim == 1 and len(shape) > 1:
        v = v.reshape((-1,) + (1,) * (len(shape) - 1))
    return np.broadcast_to(v, shape).ravel()


def lrp_node(layer, rule, xs, r):
    """Relevance of each of a node's inputs ``xs`` (a list) from ``r`` under ``rule``: nodes of
    several inputs (Norm on a sum: ``R_i = x_i r / stab(sum_j x_j)``; Pass: the backward pass,
    Concat's slicing), then every single-input layer through :func:`lrp_layer`."""
    name = type(rule).__name__
    if name == "UniformSoftmax":
        return uniform_softmax(*xs, r, layer.heads, layer.scale, rule.stabilizer)
    if name == "CPLRP":  # the attention weights constant: the values' linear map, A^T per head
        s = ops.lrp_divide(r, layer_forward(layer, *xs), rule.stabilizer)
        return [None, None, xs[2] * layer_backward(layer, s, xs)[2]]
    if len(xs) > 1 and name == "Norm":
        s = ops.lrp_divide(r, layer_forward(layer, *xs), rule.stabilizer)
        return [x * s for x in xs]
    if len(xs) > 1 and name == "Pass" or name == "Gradient":
        return layer_backward(layer, r, xs)
    if name == "Product":  # the gate gets nothing, else half each; summed where broadcast
        shares = [np.zeros_like(r) if k == layer.gate else r if layer.gate in (0, 1) else r / 2
                  for k in range(2)]
        return [reduce_to(s, x.shape[1:]) for s, x in zip(shares, xs)]
    if len(xs) != 1:
        raise ValueError(f"reference: no twin for rule {name} on {layer.kind}")
    return [lrp_layer(layer, rule, xs[0], r)]


def lrp_layer(layer, rule, a, r):
    """Relevance of ``layer``'s input ``a`` (n, *shape) from ``r`` (n, *out_shape) under ``rule``
    (a relprop rule object, read through its class name and parameters)."""
    name = type(rule).__name__
    n = len(a)
    if name == "Pass":  # straight through element-wise layers, else as the gradient
        return r if layer.elementwise else layer_backward(layer, r, [a])[0]
    if name == "WinnerTakeAll":
        return layer_backward(layer, r, [a])[0]
    if name == "Identity":  # LXT's: the share a / (a + epsilon) of r, per element
        den = a + rule.epsilon
        return np.where(den != 0, r * a / np.where(den != 0, den, 1), 0)
    a2, r2 = a.reshape(n, -1), r.reshape(n, -1)
    if name == "Norm" and twin(layer).linear is not None:  # per sample: the map at a, and z = y
        c = a2[:, None, :] * frozen_matrices(layer, a)
        z = layer_forward(layer, a).reshape(n, -1)
        return _redistribute(c, z, r2, rule.stabilizer).reshape(a.shape)
    M, b = as_matrix(layer, a.shape[1:], a.dtype)
    if name == "Epsilon":
        R = epsilon(M, b, a2, r2, rule.epsilon)
    elif name == "Norm":
        R = epsilon(M, np.zeros_like(b), a2, r2, rule.stabilizer)
    elif name == "ZPlus":
        R = zplus(M, b, a2, r2, rule.stabilizer)
    elif name == "AlphaBeta":
        R = alpha_beta(M, b, a2, r2, rule.alpha, rule.beta, rule.stabilizer)
    elif name == "Gamma":
        R = gamma(M, b, a2, r2, rule.gamma, rule.stabilizer)
    elif name == "ZBox":
        shape = a.shape[1:]
        R = zbox(M, b, a2, r2, _bound(rule.low, shape), _bound(rule.high, shape), rule.stabilizer)
    elif name == "WSquare":
        R = wsquare(M, b, a2, r2, rule.stabilizer)
    elif name == "Flat":
        S, _ = as_matrix(layer, a.shape[1:], a.dtype, weight=np.ones_like(layer.weight))
        R = flat(S, a2, r2, rule.stabilizer)
    else:
        raise ValueError(f"reference: no twin for rule {name}")
    return R.reshape(a.shape)


def lrp(net, x, r_out, rules, messages=None):
    """Input relevance for output relevance ``r_out`` with one rule per node (in ``net.nodes``
    order); each tensor's relevance is the sum of what its readers send back.

    ``messages``, a dict, receives ``{node name: (relevance of its output, [relevance sent to
    each input])}``, to check conservation node by node."""
    names = [net.input_name] + [node.name for node in net.nodes]
    vals = dict(zip(names, forward(net, x)))
    rel = {net.output: r_out}
    for node, rule in zip(reversed(net.nodes), reversed(rules)):
        r = rel.pop(node.name, None)
        if r is None:  # nothing reached the node (CP-LRP's queries and keys)
            continue
        sent = lrp_node(node.layer, rule, [vals[t] for t in node.inputs], r)
        if messages is not None:
            messages[node.name] = (r, sent)
        for t, rt in zip(node.inputs, sent):
            if rt is not None:
                rel[t] = rel[t] + rt if t in rel else rt
    return rel.get(net.input_name, np.zeros_like(x))


def lrp_conditional(net, x, r_out, rules, masks, exclude_parallel=True, messages=None):
    """Concept-conditional LRP of one condition (DESIGN.md section 2.4), from the definition.

    ``masks``: ``{node name: 0/1 array (C,)}``, multiplied into the relevance arriving at the
    node's output (channels on axis 1) before its rule reads it.  With ``exclude_parallel``
    the conditioned nodes ``c_1, ..., c_m`` (from the output down) lie on one path, and
    relevance flows only along paths output -> c_1 -> ... -> c_m -> input: the nodes are cut
    into segments (0: those that read c_1's output; i: c_i and the nodes between c_i and
    c_i+1; m: c_m and the nodes it reads), and a node of segment i sends relevance only to
    nodes of its own segment and to c_i+1 (segment m: to the input too); what it would send
    elsewhere is dropped.  ``messages`` as for :func:`lrp`."""
    names = [node.name for node in net.nodes]
    inputs = {node.name: node.inputs for node in net.nodes}

    def below(name):  # every node whose output ``name`` reads, directly or not
        out, todo = set(), list(inputs[name])
        while todo:
            t = todo.pop()
            if t != net.input_name and t not in out:
                out.add(t)
                todo.extend(inputs[t])
        return out

    segment, chain = {n: 0 for n in names}, []
    if exclude_parallel and masks:
        chain = sorted(masks, key=names.index, reverse=True)  # the output side first
        ends = [None] + chain + [None]
        segment = {}
        for s, (upper, lower) in enumerate(zip(ends, ends[1:])):
            for n in names:
                if (upper is None or n in below(upper) or n == upper) and \
                        (lower is None or lower in below(n)):
                    segment[n] = s

    def receives(t, s):  # whether tensor t may take relevance from a node of segment s
        if t == net.input_name:
            return s == len(chain)
        return segment.get(t) == s or (s < len(chain) and t == chain[s])

    vals = dict(zip([net.input_name] + names, forward(net, x)))
    rel = {net.output: r_out}
    for node, rule in zip(reversed(net.nodes), reversed(rules)):
        r = rel.pop(node.name, None)
        if r is None:
            continue
        if node.name in masks:
            m = np.asarray(masks[node.name], dtype=r.dtype)
            r = r * m.reshape((1, -1) + (1,) * (r.ndim - 2))
        sent = lrp_node(node.layer, rule, [vals[t] for t in node.inputs], r)
        if messages is not None:
            messages[node.name] = (r, sent)
        for t, rt in zip(node.inputs, sent):
            if rt is not None and receives(t, segment[node.name]):
                rel[t] = rel[t] + rt if t in rel else rt
    return rel.get(net.input_name, np.zeros_like(x))

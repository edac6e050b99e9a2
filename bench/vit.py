"""relprop against torch and LXT on torchvision's vit_b_16 (issue 27's speed targets: forward
and gradient at least 1.2x torch at batch 1 and 8, LRP at least 1.2x LXT's ``lxt.efficient``).

Same weights (torchvision's random initialization, float32, seeded), same inputs, same threads
(``--threads``, 2 by default, for relprop and torch alike). Per batch size and task, relprop and
the peer alternate for ``--rounds`` rounds (a then b, b then a, ...), so that both meet the
machine in the same state; the report gives each side's median time per call, samples/s and the
ratio peer / relprop (above 1: relprop is faster). Tasks:

* forward: ``net(x)`` against ``model(x)`` under ``torch.inference_mode()``;
* gradient: ``rp.gradient(net, x, c)`` against autograd's ``x.grad`` of ``y[:, c].sum()``;
* LRP: ``rp.lrp(net, x, c)`` (the composite "attnlrp") against LXT 2.1's ``x * x.grad`` on the
  model patched by ``lxt.efficient.monkey_patch(vision_transformer)``'s map (applied to a copy's
  instances), after ``y[:, c].sum().backward()``.

Each pair's outputs are compared (relative to the largest magnitude), so a fast wrong answer
shows.  ``--quick`` runs a small ViT (32x32 images) to check that the script works.

    python bench/vit.py [--batches 1,8] [--threads 2] [--rounds 5] [--quick]
"""
import argparse
import copy
import statistics
import time
import types

import numpy as np
import torch
import torchvision

import relprop as rp

CLASS = 3


def model(quick):
    """The ViT and its input shape, with the head and class token drawn (torchvision starts
    them at zero: every output would be 0)."""
    torch.manual_seed(0)
    if quick:
        m = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2,
                                                 num_heads=2, hidden_dim=16, mlp_dim=32,
                                                 num_classes=10)
        shape = (3, 32, 32)
    else:
        m, shape = torchvision.models.vit_b_16(weights=None), (3, 224, 224)
    with torch.no_grad():
        m.heads.head.weight.normal_(0, 0.1)
        m.class_token.normal_(0, 0.02)
    return m.eval(), shape


def lxt_patched(module):
    """A copy of ``module`` with LXT's patches for torchvision's vision_transformer on its
    instances (monkey_patch would change the torch classes the other side uses)."""
    from lxt.efficient.models import get_default_map
    from torchvision.models import vision_transformer

    module = copy.deepcopy(module)
    for cls, patch in get_default_map(vision_transformer).items():
        fn, keep = patch.args[0], patch.keywords.get("keep_original", False)
        for m in module.modules():
            if isinstance(m, cls):
                if keep:
                    m.original_forward = m.forward
                m.forward = types.MethodType(fn, m)
    return module


def tasks(net, module, patched):
    """``{task: (relprop job, peer job)}``, each job a function of x (a NumPy array)."""
    def torch_forward(x):
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    def grad_of(m, times_input):
        def job(x):
            xt = torch.from_numpy(x).requires_grad_()
            m(xt)[:, CLASS].sum().backward()
            g = xt.grad * xt if times_input else xt.grad
            return g.detach().numpy()
        return job

    return {"forward": (lambda x: net(x), torch_forward),
            "gradient": (lambda x: rp.gradient(net, x, CLASS), grad_of(module, False)),
            "LRP": (lambda x: rp.lrp(net, x, CLASS), grad_of(patched, True))}


def timed(job, x):
    t0 = time.perf_counter()
    out = job(x)
    return time.perf_counter() - t0, out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", default="1,8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="a small ViT: checks the script only")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rp.set_num_threads(args.threads)
    rp.show_config()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    module, shape = model(args.quick)
    net = rp.from_torch(module, shape)
    patched = lxt_patched(module)
    for m in (module, patched):  # gradients with parameters frozen, as their users run them
        m.requires_grad_(False)
    jobs = tasks(net, module, patched)
    rng = np.random.default_rng(0)
    print(f"{'vit (quick)' if args.quick else 'vit_b_16'} {shape}, float32, {args.rounds} "
          "alternating rounds per cell; times are medians per call")
    print("| batch | task | relprop s | peer s | relprop samples/s | peer / relprop | "
          "max difference |")
    print("|---|---|---|---|---|---|---|")
    for n in (int(b) for b in args.batches.split(",")):
        x = rng.uniform(-1, 1, size=(n,) + shape).astype(np.float32)
        for task, (mine, peer) in jobs.items():
            mine(x), peer(x)  # warm-up (packings, allocations)
            ta, tb, diff = [], [], 0.0
            for r in range(args.rounds):
                order = ((mine, ta), (peer, tb)) if r % 2 == 0 else ((peer, tb), (mine, ta))
                outs = {}
                for job, times in order:
                    t, outs[id(times)] = timed(job, x)
                    times.append(t)
                a, b = outs[id(ta)], outs[id(tb)]
                diff = max(diff, float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)))
            ma, mb = statistics.median(ta), statistics.median(tb)
            print(f"| {n} | {task} | {ma:.4f} | {mb:.4f} | {n / ma:.1f} | {mb / ma:.2f} | "
                  f"{diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()

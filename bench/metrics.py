"""relprop.metrics against Quantus 0.6.0: for each metric, one run of each on the same CPU,
threads, model (bench/models.py: relprop's network and its torch twin, same weights), inputs,
attributions (relprop's LRP EpsilonPlusFlat of the predicted class, one value per pixel as
Quantus's Zennit explanations are) and target, with the parameters below; prints the seconds of
each and relprop's speed-up.  Quantus re-explains with Zennit's same composite
(``quantus.explain`` with ``xai_lib="zennit"``), relprop with its own.

    python bench/metrics.py                                   # cifar_cnn and vgg16, n = 64
    python bench/metrics.py --models cifar_cnn --n 8 --threads 1 --metrics region_perturbation

Both libraries score logits (Quantus ``softmax=False``) without normalising the attributions
(``normalise=False``), every baseline is Quantus's "black" (relprop ``fill="min"``), and Quantus
gets an ``np.trapz`` shim (NumPy 2.4 removed it).  One run each: on a shared machine read the
ratios, not the seconds, and re-run on a quiet one for numbers to publish (bench/README.md).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import relprop as rp  # noqa: E402
import relprop.metrics as RM  # noqa: E402
from relprop.metrics.comparison import NEED_METHOD  # noqa: E402

import models as M  # noqa: E402

#: Metric parameters per model: (relprop name, Quantus class, relprop kwargs, Quantus kwargs,
#: relprop needs the method).  "P" stands for the pixels of a sample (features per channel).
PLAN = {
    "cifar_cnn": {
        "region_perturbation": ({"regions": 16, "patch": 8}, {"patch_size": 8,
                                                              "regions_evaluation": 16}),
        "pixel_flipping": ({"steps": 48, "channels": "apart"}, {"features_in_step": 64}),
        "selectivity": ({"patch": 8}, {"patch_size": 8}),
        "sensitivity_n": ({"steps": 48, "channels": "apart"},
                          {"features_in_step": 64, "return_aggregate": False}),
        "faithfulness_estimate": ({"steps": 48, "channels": "apart"}, {"features_in_step": 64}),
        "faithfulness_correlation": ({"runs": 20, "subset": 224, "channels": "apart"},
                                     {"nr_runs": 20, "subset_size": 224,
                                      "return_aggregate": False}),
        "monotonicity_correlation": ({"steps": 48, "runs": 10, "channels": "apart"},
                                     {"features_in_step": 64, "nr_samples": 10}),
        "max_sensitivity": ({"runs": 10}, {"nr_samples": 10}),
        "avg_sensitivity": ({"runs": 10}, {"nr_samples": 10}),
        "local_lipschitz_estimate": ({"runs": 10}, {"nr_samples": 10}),
        "model_parameter_randomization": ({}, {}),
        "random_logit": ({}, {"num_classes": 10}),
        "sparseness": ({}, {}),
        "complexity": ({}, {}),
    },
    "vgg16": {
        "region_perturbation": ({"regions": 16, "patch": 8}, {"patch_size": 8,
                                                              "regions_evaluation": 16}),
        "pixel_flipping": ({"steps": 48, "channels": "apart"}, {"features_in_step": 3136}),
        "selectivity": ({"patch": 56}, {"patch_size": 56}),
        "faithfulness_correlation": ({"runs": 20, "subset": 224, "channels": "apart"},
                                     {"nr_runs": 20, "subset_size": 224,
                                      "return_aggregate": False}),
        "max_sensitivity": ({"runs": 3}, {"nr_samples": 3}),
        "local_lipschitz_estimate": ({"runs": 3}, {"nr_samples": 3}),
        "sparseness": ({}, {}),
    },
}
#: relprop name -> Quantus class name.
QUANTUS = {
    "region_perturbation": "RegionPerturbation", "pixel_flipping": "PixelFlipping",
    "selectivity": "Selectivity", "sensitivity_n": "SensitivityN",
    "faithfulness_estimate": "FaithfulnessEstimate",
    "faithfulness_correlation": "FaithfulnessCorrelation",
    "monotonicity_correlation": "MonotonicityCorrelation", "max_sensitivity": "MaxSensitivity",
    "avg_sensitivity": "AvgSensitivity", "local_lipschitz_estimate": "LocalLipschitzEstimate",
    "model_parameter_randomization": "MPRT", "random_logit": "RandomLogit",
    "sparseness": "Sparseness", "complexity": "Complexity",
}
METHOD = "lrp.epsilon_plus_flat"
#: Metrics whose relprop call takes no fill.
NO_FILL = NEED_METHOD | {"sparseness", "complexity", "monotonicity_correlation"}


def quantus_call(name, model, x, y, a, qkw):
    import quantus

    explain = {"explain_func": quantus.explain,
               "explain_func_kwargs": {"xai_lib": "zennit", "method": "Gradient",
                                       "composite": "epsilon_plus_flat"}}
    kw = dict(qkw, normalise=False, disable_warnings=True)
    if name in NEED_METHOD:
        kw.setdefault("abs", False)
        return lambda: getattr(quantus, QUANTUS[name])(**kw)(
            model, x, y, a, softmax=False, batch_size=len(x), **explain)
    return lambda: getattr(quantus, QUANTUS[name])(**kw)(model, x, y, a, softmax=False,
                                                         batch_size=len(x))


def relprop_call(name, net, x, y, R, rkw):
    kw = dict(rkw)
    if name in NEED_METHOD:
        kw["method"] = METHOD
    if name not in NO_FILL:
        kw["fill"] = "min"
    return lambda: RM.METRICS[name](net, x, R, y, **kw)


def once(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="cifar_cnn,vgg16")
    p.add_argument("--n", type=int, default=64, help="samples (default 64)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--metrics", default=None, help="comma-separated (default: all planned)")
    args = p.parse_args(argv)
    import torch

    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid  # Quantus calls it; NumPy 2.4 removed it
    torch.set_num_threads(args.threads)
    rp.set_num_threads(args.threads)
    command = "python bench/metrics.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"# relprop.metrics against Quantus 0.6.0\n\n`{command}` ({os.cpu_count()} CPUs, "
          f"{args.threads} thread(s), n = {args.n}, one run each)\n")
    rp.show_config()
    for model_name in args.models.split(","):
        params = M.weights(model_name)
        net, model = M.relprop_net(model_name, params), M.torch_net(model_name, params)
        x = M.inputs(model_name, args.n)
        y = net(x).argmax(axis=1)
        R = rp.explain(net, x, y, method=METHOD).sum(axis=1, keepdims=True)  # a pixel map
        plan = PLAN[model_name]
        names = args.metrics.split(",") if args.metrics else list(plan)
        print(f"\n## {model_name}, input {M.MODELS[model_name][0]}\n")
        print("| metric | relprop parameters | Quantus s | relprop s | speed-up |")
        print("|---|---|---:|---:|---:|")
        for name in names:
            rkw, qkw = plan[name]
            q = once(quantus_call(name, model, x, y, R, qkw))
            r = once(relprop_call(name, net, x, y, R, rkw))
            shown = ", ".join(f"{k}={v}" for k, v in rkw.items()) or "defaults"
            print(f"| {name} | {shown} | {q:.2f} | {r:.2f} | {q / r:.1f}x |", flush=True)


if __name__ == "__main__":
    main()

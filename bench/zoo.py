"""Every classification model of torchvision through ``relprop.from_torch`` (random weights,
eval mode, float32, one thread): imported or refused (with the message), the forward pass
against torch's (largest difference relative to the largest output) and whether the default LRP
map is finite.  Not timed: what a new user meets with the models no test names.

    python bench/zoo.py                  # all but the largest (vit_h, vit_l, regnet_y_32/128gf,
                                         # efficientnet_b6/b7, efficientnet_v2_l)
    python bench/zoo.py resnet18 vit_b_16
"""
import sys
import time

import numpy as np
import torch
import torchvision

import relprop as rp

LARGEST = ("vit_h", "vit_l", "regnet_y_128", "regnet_y_32", "regnet_y_16", "efficientnet_b7",
           "efficientnet_b6", "efficientnet_v2_l")


def check(name):
    torch.manual_seed(0)
    m = torchvision.models.get_model(name, weights=None).eval()
    if hasattr(m, "heads"):  # torchvision starts a ViT's head at zero: every output would be 0
        torch.nn.init.normal_(m.heads.head.weight, std=0.1)
    size = 299 if name == "inception_v3" else 224 if name.startswith(("vit", "swin", "maxvit")) \
        else 64
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
    t0 = time.perf_counter()
    try:
        net = rp.from_torch(m, (3, size, size))
    except ValueError as e:
        return f"refused: {str(e)[:160]}"
    with torch.inference_mode():
        want = m(torch.from_numpy(x)).numpy()
    err = np.abs(net(x) - want).max() / np.abs(want).max()
    finite = bool(np.isfinite(rp.lrp(net, x, 0)).all())
    return f"forward {err:.1e}, LRP finite {finite} ({time.perf_counter() - t0:.1f} s)"


def main():
    torch.set_num_threads(1)
    rp.set_num_threads(1)
    names = sys.argv[1:] or [n for n in torchvision.models.list_models(torchvision.models)
                             if not n.startswith(LARGEST)]
    print(f"torchvision {torchvision.__version__}, relprop {rp.__version__}")
    for name in names:
        print(f"{name}: {check(name)}", flush=True)


if __name__ == "__main__":
    main()

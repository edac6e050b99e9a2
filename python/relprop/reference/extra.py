"""Reference twins of SmoothGrad, Integrated Gradients, pixel flipping and activation
maximization: one plain loop per copy, path point, step or sample, on the reference gradient."""
import numpy as np

from .network import forward, gradient, seed


def smoothgrad(net, x, target, n, sigma, seed_, offset=0):
    """``1/n sum_j grad(x + sigma * (max - min) * e_j)``; the noise of sample ``i`` is one
    float64 block of standard normals ``(n, *sample_shape)``: for an int ``seed_`` from
    ``default_rng(SeedSequence(seed_, spawn_key=(offset + i,)))``, for a Generator from it,
    sample after sample."""
    noise = np.stack([
        (seed_ if isinstance(seed_, np.random.Generator) else np.random.default_rng(
            np.random.SeedSequence(seed_, spawn_key=(offset + i,)))).standard_normal(
                (n,) + x.shape[1:]) for i in range(len(x))])
    total = np.zeros_like(x)
    for j in range(n):
        xj = np.empty_like(x)
        for i in range(len(x)):
            xj[i] = x[i] + sigma * (x[i].max() - x[i].min()) * noise[i, j]
        total += gradient(net, xj, target)
    return total / n


def quadrature(rule, steps):
    """``(alphas, weights)`` of a quadrature rule on [0, 1] with ``steps`` points, from its
    definition: the Riemann sums take the left ends, right ends or midpoints of ``steps`` equal
    cells; the trapezoidal rule the ends of ``steps - 1`` cells, each end weighted half a cell;
    Gauss-Legendre the eigenvalues of the Jacobi matrix of the Legendre polynomials (Golub and
    Welsch 1969), weighted by the squared first components of the eigenvectors."""
    k = np.arange(steps, dtype=np.float64)
    if rule == "riemann_left":
        return k / steps, np.full(steps, 1 / steps)
    if rule == "riemann_right":
        return (k + 1) / steps, np.full(steps, 1 / steps)
    if rule == "riemann_middle":
        return (k + 0.5) / steps, np.full(steps, 1 / steps)
    if rule == "riemann_trapezoid":
        weights = np.full(steps, 1 / (steps - 1))
        weights[[0, -1]] /= 2
        return k / (steps - 1), weights
    if rule == "gausslegendre":  # on [-1, 1], then mapped to [0, 1]
        off = k[1:] / np.sqrt(4 * k[1:] ** 2 - 1)
        nodes, vectors = np.linalg.eigh(np.diag(off, 1) + np.diag(off, -1))
        return (1 + nodes) / 2, vectors[0] ** 2
    raise ValueError(f"reference: unknown quadrature {rule}")


def integrated_gradients(net, x, target, baseline, steps, rule):
    """``(x - x') * sum_k weights[k] grad(x' + alphas[k] (x - x'))`` with the points and weights
    of :func:`quadrature`."""
    alphas, weights = quadrature(rule, steps)
    total = np.zeros_like(x)
    for a, w in zip(alphas, weights):
        total += w * gradient(net, baseline + a * (x - baseline), target)
    return (x - baseline) * total


def pixel_flipping(net, x, R, target, steps, patch, fill):
    """Most-relevant-first region perturbation, one sample and one step at a time.

    ``fill`` is an array shaped like ``x``.  Images: regions are the ``patch x patch`` cells of
    a grid over the image padded to a multiple of ``patch`` (the lesser half of the padding
    before), ranked by their relevance summed over channels; other inputs: every element is a
    region.  Returns the score curves ``(n, steps + 1)``.
    """
    curves = np.zeros((len(x), steps + 1))
    for i in range(len(x)):
        if x.ndim == 4:
            h, w = x.shape[2:]
            top, left = (-h % patch) // 2, (-w % patch) // 2
            cells = [(max(r, 0), max(c, 0), r + patch, c + patch)
                     for r in range(-top, h, patch) for c in range(-left, w, patch)]
            scores = [R[i, :, r:r1, c:c1].sum() for r, c, r1, c1 in cells]
        else:
            cells = list(range(x[i].size))
            scores = list(R[i].ravel())
        ranked = sorted(range(len(cells)), key=lambda j: (-scores[j], j))
        for k in range(steps + 1):
            xi = x[i].copy()
            for j in ranked[:int(round(k * len(cells) / steps))]:
                if x.ndim == 4:
                    r, c, r1, c1 = cells[j]
                    xi[:, r:r1, c:c1] = fill[i, :, r:r1, c:c1]
                else:
                    xi.flat[j] = fill[i].flat[j]
            out = forward(net, xi[None])[-1]
            t = target if np.ndim(target) == 0 else np.asarray(target)[i:i + 1]
            curves[i, k] = (seed(t, out) * out).sum()
    return curves


def activation_maximization(net, targets, x0, start, steps, lr, l2, low, high, prior=None,
                            beta1=0.9, beta2=0.999):
    """Adam ascent on ``f_c(x) - l2 ||x - x0||^2 [- weight * nll(x)]``, one class at a time.

    ``prior`` is ``(mean, precision, weight)`` on flattened samples.  Returns the prototypes
    and the score trace ``(steps, n_classes)``.
    """
    protos, trace = [], np.zeros((steps, len(targets)))
    for c, t in enumerate(targets):
        x = np.clip(start[c:c + 1].copy(), low, high)
        m, v = np.zeros_like(x), np.zeros_like(x)
        for s in range(1, steps + 1):
            trace[s - 1, c] = forward(net, x)[-1][0, t]
            g = gradient(net, x, [t]) - 2 * l2 * (x - x0[c:c + 1])
            if prior is not None:
                mean, precision, weight = prior
                g = g - weight * (precision @ (x.ravel() - mean)).reshape(x.shape)
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * g ** 2
            step = lr * (m / (1 - beta1 ** s)) / (np.sqrt(v / (1 - beta2 ** s)) + 1e-8)
            x = np.clip(x + step, low, high)
        protos.append(x[0])
    return np.array(protos), trace

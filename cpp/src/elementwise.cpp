// Element-wise kernels: ReLU, LeakyReLU, PReLU, Hardtanh (ReLU6's too) and their backward
// variants, the per-channel affine map (inference BatchNorm), the LRP stabilized division and
// the stacked shares of the rules on [W+; W-].
#include "gemm_impl.hpp"
#include "relprop/check.hpp"
#include "relprop/kernels.hpp"
#include "relprop/parallel.hpp"

namespace relprop {

template <typename T>
void relu_forward(const T* x, T* y, idx size, int nthreads) {
  [[maybe_unused]] const int nt = threads_for(nthreads, size, size);
#pragma omp parallel for simd schedule(static) num_threads(nt)
  for (idx i = 0; i < size; ++i) y[i] = (x[i] > T(0) || x[i] != x[i]) ? x[i] : T(0);  // NaN stays
}

template <typename T>
void relu_backward(const T* g, const T* x, T* gx, idx size, int mode, int nthreads) {
  RELPROP_CHECK(mode >= 0 && mode <= 2, "relu_backward: mode must be 0, 1 or 2, got ", mode);
  [[maybe_unused]] const int nt = threads_for(nthreads, size, size);
  if (mode == 0) {
#pragma omp parallel for simd schedule(static) num_threads(nt)
    for (idx i = 0; i < size; ++i) {
      const T gi = g[i];  // loaded unconditionally so that the loop vectorizes
      gx[i] = x[i] > T(0) ? gi : T(0);
    }
  } else if (mode == 1) {
#pragma omp parallel for simd schedule(static) num_threads(nt)
    for (idx i = 0; i < size; ++i) gx[i] = g[i] > T(0) ? g[i] : T(0);
  } else {
#pragma omp parallel for simd schedule(static) num_threads(nt)
    for (idx i = 0; i < size; ++i) {
      const T gi = g[i];
      gx[i] = (x[i] > T(0) && gi > T(0)) ? gi : T(0);
    }
  }
}

template <typename T>
void hardtanh_forward(const T* x, T* y, idx size, double lo, double hi, int nthreads) {
  [[maybe_unused]] const int nt = threads_for(nthreads, size, size);
  const T a = static_cast<T>(lo), b = static_cast<T>(hi);
#pragma omp parallel for simd schedule(static) num_threads(nt)
  for (idx i = 0; i < size; ++i) y[i] = x[i] < a ? a : (x[i] > b ? b : x[i]);  // NaN: x
}

template <typename T>
void hardtanh_backward(const T* g, const T* x, T* gx, idx size, double lo, double hi,
                       int nthreads) {
  [[maybe_unused]] const int nt = threads_for(nthreads, size, size);
  const T a = static_cast<T>(lo), b = static_cast<T>(hi);
#pragma omp parallel for simd schedule(static) num_threads(nt)
  for (idx i = 0; i < size; ++i) {
    const T gi = g[i];  // loaded unconditionally so that the loop vectorizes
    gx[i] = x[i] <= a || x[i] >= b ? T(0) : gi;
  }
}

template <typename T>
void leaky_relu_forward(const T* x, T* y, idx size, double slope, int nthreads) {
  [[maybe_unused]] const int nt = threads_for(nthreads, size, size);
  const T a = static_cast<T>(slope);
#pragma omp parallel for simd schedule(static) num_threads(nt)
  for (idx i = 0; i < size; ++i) y[i] = x[i] > T(0) ? x[i] : a * x[i];  // NaN: a * NaN
}

template <typename T>
void leaky_relu_backward(const T* g, const T* x, T* gx, idx size, double slope, int nthreads) {
  [[maybe_unused]] const int nt = threads_for(nthreads, size, size);
  const T a = static_cast<T>(slope);
#pragma omp parallel for simd schedule(static) num_threads(nt)
  for (idx i = 0; i < size; ++i) {
    const T gi = g[i];  // loaded unconditionally so that the loop vectorizes
    gx[i] = x[i] > T(0) ? gi : a * gi;
  }
}

// r / (z + eps * sign(z)), sign(0) = +1; 0 where that denominator is 0: gemm_impl.hpp's
// detail::stabilized_divide, which the fused LRP kernels share (bitwise the same quotients).
// The division is made in every case (by 1 where d is 0): loops of it vectorize (selects, no
// branch).
using detail::stabilized_divide;

// body(s, j0, j1) for row blocks [j0, j1) of every sample row s of `len` elements, in
// parallel over blocks; body vectorizes its loop over j.
template <class Body>
void for_row_blocks(idx samples, idx len, int nthreads, Body body) {
  constexpr idx kBlock = 4096;
  const idx blocks = (len + kBlock - 1) / kBlock, units = samples * blocks;
  [[maybe_unused]] const int nt = threads_for(nthreads, units, samples * len);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (idx t = 0; t < units; ++t) {
    const idx s = t / blocks, j0 = (t % blocks) * kBlock;
    body(s, j0, j0 + kBlock < len ? j0 + kBlock : len);
  }
}

// Rows (sample, channel) of `inner` elements in blocks, each with its channel's slope; with
// inner == 1 (a (n, c) array) the loop runs along the channels of each sample instead.
template <typename T>
void prelu_forward(const T* x, const T* a, T* y, idx n, idx channels, idx inner, int nthreads) {
  if (n * channels * inner == 0) return;
  if (inner == 1) {
    [[maybe_unused]] const int nt = threads_for(nthreads, n, n * channels);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (idx s = 0; s < n; ++s) {
      const T* xs = x + s * channels;
      T* ys = y + s * channels;
#pragma omp simd
      for (idx c = 0; c < channels; ++c) ys[c] = xs[c] > T(0) ? xs[c] : a[c] * xs[c];
    }
    return;
  }
  for_row_blocks(n * channels, inner, nthreads, [&](idx row, idx j0, idx j1) {
    const T slope = a[row % channels];
    const T* xr = x + row * inner;
    T* yr = y + row * inner;
#pragma omp simd
    for (idx j = j0; j < j1; ++j) yr[j] = xr[j] > T(0) ? xr[j] : slope * xr[j];
  });
}

template <typename T>
void prelu_backward(const T* g, const T* x, const T* a, T* gx, idx n, idx channels, idx inner,
                    int nthreads) {
  if (n * channels * inner == 0) return;
  if (inner == 1) {
    [[maybe_unused]] const int nt = threads_for(nthreads, n, n * channels);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (idx s = 0; s < n; ++s) {
      const T* gs = g + s * channels;
      const T* xs = x + s * channels;
      T* out = gx + s * channels;
#pragma omp simd
      for (idx c = 0; c < channels; ++c) {
        const T gc = gs[c];  // loaded unconditionally so that the loop vectorizes
        out[c] = xs[c] > T(0) ? gc : a[c] * gc;
      }
    }
    return;
  }
  for_row_blocks(n * channels, inner, nthreads, [&](idx row, idx j0, idx j1) {
    const T slope = a[row % channels];
    const T* gr = g + row * inner;
    const T* xr = x + row * inner;
    T* out = gx + row * inner;
#pragma omp simd
    for (idx j = j0; j < j1; ++j) {
      const T gj = gr[j];
      out[j] = xr[j] > T(0) ? gj : slope * gj;
    }
  });
}

// One pass: rows (sample, channel) of `inner` elements in blocks; with inner == 1 (a (n, c)
// array) the loop runs along the channels of each sample instead.
template <typename T>
void channel_affine(const T* x, const T* scale, const T* shift, T* y, idx n, idx channels,
                    idx inner, int nthreads) {
  const idx size = n * channels * inner;
  if (size == 0) return;
  [[maybe_unused]] const int nt = threads_for(nthreads, size, size);
  if (inner == 1) {
#pragma omp parallel for schedule(static) num_threads(nt)
    for (idx s = 0; s < n; ++s) {
      const T* xs = x + s * channels;
      T* ys = y + s * channels;
      if (shift) {
#pragma omp simd
        for (idx c = 0; c < channels; ++c) ys[c] = xs[c] * scale[c] + shift[c];
      } else {
#pragma omp simd
        for (idx c = 0; c < channels; ++c) ys[c] = xs[c] * scale[c];
      }
    }
    return;
  }
  for_row_blocks(n * channels, inner, nthreads, [&](idx row, idx j0, idx j1) {
    const idx c = row % channels;
    const T a = scale[c], b = shift ? shift[c] : T(0);
    const T* xr = x + row * inner;
    T* yr = y + row * inner;
    if (shift) {
#pragma omp simd
      for (idx j = j0; j < j1; ++j) yr[j] = xr[j] * a + b;
    } else {
#pragma omp simd
      for (idx j = j0; j < j1; ++j) yr[j] = xr[j] * a;
    }
  });
}

template <typename T>
void lrp_divide(const T* r, const T* z, const T* shift, T* s, idx samples, idx len, double eps,
                int nthreads) {
  const T e = static_cast<T>(eps);
  if (!shift) {
    const idx size = samples * len;
    [[maybe_unused]] const int nt = threads_for(nthreads, size, size);
#pragma omp parallel for simd schedule(static) num_threads(nt)
    for (idx i = 0; i < size; ++i) s[i] = stabilized_divide(r[i], z[i], e);
    return;
  }
  for_row_blocks(samples, len, nthreads, [&](idx k, idx j0, idx j1) {
    const T* rk = r + k * len;
    const T* zk = z + k * len;
    T* sk = s + k * len;
#pragma omp simd
    for (idx j = j0; j < j1; ++j) sk[j] = stabilized_divide(rk[j], zk[j] - shift[j], e);
  });
}

// Both divisions are made in every lane and the unused one is discarded (a select), so that
// the loops vectorize; the results are those of the branches.
template <typename T>
void lrp_gamma_shares(const T* r, const T* p, const T* n, const T* z, T* out, idx samples,
                      idx len, double gamma, double eps, int nthreads) {
  const T g1 = static_cast<T>(1 + gamma), e = static_cast<T>(eps);
  for_row_blocks(samples, len, nthreads, [&](idx s, idx j0, idx j1) {
    const T* rs = r + s * len;
    const T* ps = p + s * len;
    const T* ns = n + s * len;
    const T* zs = z ? z + s * len : nullptr;
    T* u = out + 2 * s * len;
    T* v = u + len;
    const auto mix = [&](idx j, T zi) {
      const T q1 = stabilized_divide(rs[j], g1 * ps[j] + ns[j], e);
      const T q2 = stabilized_divide(rs[j], ps[j] + g1 * ns[j], e);
      const T s1 = zi > T(0) ? q1 : T(0);
      const T s2 = zi < T(0) ? q2 : T(0);
      u[j] = g1 * s1 + s2;
      v[j] = s1 + g1 * s2;
    };
    if (zs) {
#pragma omp simd
      for (idx j = j0; j < j1; ++j) mix(j, zs[j]);
    } else {
#pragma omp simd
      for (idx j = j0; j < j1; ++j) mix(j, ps[j] + ns[j]);
    }
  });
}

template <typename T>
void lrp_alpha_beta_shares(const T* r, const T* p, const T* n, T* out, idx samples, idx len,
                           double alpha, double beta, double eps, int nthreads) {
  const T a = static_cast<T>(alpha), b = static_cast<T>(beta), e = static_cast<T>(eps);
  for_row_blocks(samples, len, nthreads, [&](idx s, idx j0, idx j1) {
    const T* rs = r + s * len;
    const T* ps = p + s * len;
    const T* ns = n + s * len;
    T* u = out + 2 * s * len;
    T* v = u + len;
#pragma omp simd
    for (idx j = j0; j < j1; ++j) {
      u[j] = a * stabilized_divide(rs[j], ps[j], e);
      v[j] = -b * stabilized_divide(rs[j], ns[j], e);
    }
  });
}

#define RELPROP_INSTANTIATE(T)                                                                 \
  template void hardtanh_forward<T>(const T*, T*, idx, double, double, int);                   \
  template void hardtanh_backward<T>(const T*, const T*, T*, idx, double, double, int);        \
  template void prelu_forward<T>(const T*, const T*, T*, idx, idx, idx, int);                  \
  template void prelu_backward<T>(const T*, const T*, const T*, T*, idx, idx, idx, int);       \
  template void leaky_relu_forward<T>(const T*, T*, idx, double, int);                         \
  template void leaky_relu_backward<T>(const T*, const T*, T*, idx, double, int);              \
  template void channel_affine<T>(const T*, const T*, const T*, T*, idx, idx, idx, int);       \
  template void relu_forward<T>(const T*, T*, idx, int);                                       \
  template void relu_backward<T>(const T*, const T*, T*, idx, int, int);                       \
  template void lrp_divide<T>(const T*, const T*, const T*, T*, idx, idx, double, int);        \
  template void lrp_gamma_shares<T>(const T*, const T*, const T*, const T*, T*, idx, idx,      \
                                    double, double, int);                                     \
  template void lrp_alpha_beta_shares<T>(const T*, const T*, const T*, T*, idx, idx, double,  \
                                         double, double, int);
RELPROP_INSTANTIATE(float)
RELPROP_INSTANTIATE(double)
#undef RELPROP_INSTANTIATE

}  // namespace relprop

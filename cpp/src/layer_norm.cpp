// Layer normalization over one axis (torch's LayerNorm over the last axis, ConvNeXt's over the
// channels of NCHW): x viewed as (outer, c, inner), every (o, i) column of c elements
// normalized alone.  Sums in double in a fixed order (eight interleaved partial sums along a
// contiguous row; in order along a strided one), so results do not depend on the thread count,
// the batch or where an array starts.
#include <cmath>

#include "relprop/check.hpp"
#include "relprop/kernels.hpp"
#include "relprop/parallel.hpp"

namespace relprop {
namespace {

constexpr idx kLanes = 8;    // partial sums of a contiguous row
constexpr idx kBlock = 256;  // columns per task where the axis is strided

// sum_k f(k) for k < c, as eight interleaved partial sums (k mod 8) added pairwise.
template <class F>
double row_sum(idx c, F f) {
  double acc[kLanes] = {};
  idx k = 0;
  for (; k + kLanes <= c; k += kLanes)
    for (idx j = 0; j < kLanes; ++j) acc[j] += f(k + j);
  for (; k < c; ++k) acc[k % kLanes] += f(k);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

template <typename T>
double weight(const T* w, idx k) {
  return w ? static_cast<double>(w[k]) : 1.0;
}

// body(o, i0, i1) for the columns [i0, i1) of every o, in parallel over (o, blocks of columns).
template <class Body>
void for_columns(idx outer, idx c, idx inner, int nthreads, Body body) {
  const idx block = inner == 1 ? 1 : kBlock;
  const idx blocks = (inner + block - 1) / block;
  // rows of the last axis: tasks of several rows, so that short rows share a task
  const idx per_task = inner == 1 ? (c >= 4096 ? 1 : 4096 / c + 1) : 1;
  const idx tasks = (outer * blocks + per_task - 1) / per_task;
  parallel_for(threads_for(nthreads, tasks, outer * c * inner * 4), tasks, [&](idx t) {
    for (idx u = t * per_task; u < (t + 1) * per_task && u < outer * blocks; ++u) {
      const idx o = u / blocks, i0 = (u % blocks) * block;
      body(o, i0, i0 + block < inner ? i0 + block : inner);
    }
  });
}

}  // namespace

template <typename T>
void layer_norm_forward(const T* x, const T* w, const T* b, T* y, T* mean, T* rstd, idx outer,
                        idx c, idx inner, double eps, int nthreads) {
  RELPROP_CHECK(c > 0 && eps >= 0, "layer_norm_forward: needs c > 0 and eps >= 0, got c=", c,
                ", eps=", eps);
  for_columns(outer, c, inner, nthreads, [&](idx o, idx i0, idx i1) {
    const T* xo = x + o * c * inner;
    T* yo = y + o * c * inner;
    if (inner == 1) {
      const double m = row_sum(c, [&](idx k) { return static_cast<double>(xo[k]); }) / c;
      const double v = row_sum(c, [&](idx k) {
        const double d = xo[k] - m;
        return d * d;
      }) / c;
      const double r = 1.0 / std::sqrt(v + eps);
      for (idx k = 0; k < c; ++k)
        yo[k] = static_cast<T>((xo[k] - m) * r * weight(w, k) + (b ? b[k] : T(0)));
      mean[o] = static_cast<T>(m);
      rstd[o] = static_cast<T>(r);
      return;
    }
    double m[kBlock], r[kBlock];
    const idx len = i1 - i0;
    for (idx j = 0; j < len; ++j) m[j] = 0.0, r[j] = 0.0;
    for (idx k = 0; k < c; ++k) {
      const T* xk = xo + k * inner + i0;
#pragma omp simd
      for (idx j = 0; j < len; ++j) m[j] += xk[j];
    }
    for (idx j = 0; j < len; ++j) m[j] /= c;
    for (idx k = 0; k < c; ++k) {
      const T* xk = xo + k * inner + i0;
#pragma omp simd
      for (idx j = 0; j < len; ++j) {
        const double d = xk[j] - m[j];
        r[j] += d * d;
      }
    }
    for (idx j = 0; j < len; ++j) {
      r[j] = 1.0 / std::sqrt(r[j] / c + eps);
      mean[o * inner + i0 + j] = static_cast<T>(m[j]);
      rstd[o * inner + i0 + j] = static_cast<T>(r[j]);
    }
    for (idx k = 0; k < c; ++k) {
      const T* xk = xo + k * inner + i0;
      T* yk = yo + k * inner + i0;
      const double wk = weight(w, k), bk = b ? b[k] : 0.0;
#pragma omp simd
      for (idx j = 0; j < len; ++j) yk[j] = static_cast<T>((xk[j] - m[j]) * r[j] * wk + bk);
    }
  });
}

template <typename T>
void layer_norm_backward(const T* g, const T* x, const T* w, const T* mean, const T* rstd, T* gx,
                         idx outer, idx c, idx inner, bool frozen_std, int nthreads) {
  RELPROP_CHECK(c > 0, "layer_norm_backward: needs c > 0, got ", c);
  for_columns(outer, c, inner, nthreads, [&](idx o, idx i0, idx i1) {
    const T* go = g + o * c * inner;
    const T* xo = frozen_std ? nullptr : x + o * c * inner;
    T* gxo = gx + o * c * inner;
    if (inner == 1) {
      const double r = rstd[o], m = frozen_std ? 0.0 : static_cast<double>(mean[o]);
      // u_k = g_k w_k r; the gradient also removes xhat times the mean of u xhat
      const double s1 = row_sum(c, [&](idx k) { return go[k] * weight(w, k); }) * r / c;
      const double s2 = frozen_std ? 0.0 : row_sum(c, [&](idx k) {
        return go[k] * weight(w, k) * ((xo[k] - m) * r);
      }) * r / c;
      for (idx k = 0; k < c; ++k) {
        const double u = go[k] * weight(w, k) * r;
        const double xhat = frozen_std ? 0.0 : (xo[k] - m) * r;
        gxo[k] = static_cast<T>(u - s1 - xhat * s2);
      }
      return;
    }
    double s1[kBlock], s2[kBlock];
    const idx len = i1 - i0;
    const T* mo = mean ? mean + o * inner + i0 : nullptr;
    const T* ro = rstd + o * inner + i0;
    for (idx j = 0; j < len; ++j) s1[j] = 0.0, s2[j] = 0.0;
    for (idx k = 0; k < c; ++k) {
      const T* gk = go + k * inner + i0;
      const double wk = weight(w, k);
      if (frozen_std) {
#pragma omp simd
        for (idx j = 0; j < len; ++j) s1[j] += gk[j] * wk;
      } else {
        const T* xk = xo + k * inner + i0;
#pragma omp simd
        for (idx j = 0; j < len; ++j) {
          const double gw = gk[j] * wk;
          s1[j] += gw;
          s2[j] += gw * ((xk[j] - static_cast<double>(mo[j])) * ro[j]);
        }
      }
    }
    for (idx j = 0; j < len; ++j) s1[j] *= static_cast<double>(ro[j]) / c, s2[j] *= ro[j] / c;
    for (idx k = 0; k < c; ++k) {
      const T* gk = go + k * inner + i0;
      T* gxk = gxo + k * inner + i0;
      const double wk = weight(w, k);
      if (frozen_std) {
#pragma omp simd
        for (idx j = 0; j < len; ++j) gxk[j] = static_cast<T>(gk[j] * wk * ro[j] - s1[j]);
      } else {
        const T* xk = xo + k * inner + i0;
#pragma omp simd
        for (idx j = 0; j < len; ++j) {
          const double r = ro[j];
          const double xhat = (xk[j] - static_cast<double>(mo[j])) * r;
          gxk[j] = static_cast<T>(gk[j] * wk * r - s1[j] - xhat * s2[j]);
        }
      }
    }
  });
}

#define RELPROP_INSTANTIATE(T)                                                                \
  template void layer_norm_forward<T>(const T*, const T*, const T*, T*, T*, T*, idx, idx, idx, \
                                      double, int);                                          \
  template void layer_norm_backward<T>(const T*, const T*, const T*, const T*, const T*, T*,  \
                                       idx, idx, idx, bool, int);
RELPROP_INSTANTIATE(float)
RELPROP_INSTANTIATE(double)
#undef RELPROP_INSTANTIATE

}  // namespace relprop

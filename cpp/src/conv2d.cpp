// Conv2d lowered onto the GEMM core through im2col (forward) and col2im (backward).
#include <algorithm>
#include <vector>

#include "relprop/check.hpp"
#include "relprop/kernels.hpp"
#include "relprop/parallel.hpp"

namespace relprop {

void Window2d::validate() const {
  RELPROP_CHECK(n >= 0 && c > 0 && h > 0 && w > 0, "window input shape must be positive, got (",
                n, ", ", c, ", ", h, ", ", w, ")");
  RELPROP_CHECK(kh > 0 && kw > 0 && sh > 0 && sw > 0 && ph >= 0 && pw >= 0,
                "window kernel/stride must be positive and padding non-negative");
  RELPROP_CHECK(h + 2 * ph >= kh && w + 2 * pw >= kw, "window (", kh, ", ", kw,
                ") larger than the padded input (", h + 2 * ph, ", ", w + 2 * pw, ")");
}

namespace {

// cols[(c, u, v), (p, q)] = x[c, p*sh + u - ph, q*sw + v - pw]  (0 outside)
template <typename T>
void im2col(const T* x, T* cols, const Window2d& g) {
  const idx oh = g.oh(), ow = g.ow(), P = oh * ow;
  for (idx c = 0; c < g.c; ++c)
    for (idx u = 0; u < g.kh; ++u)
      for (idx v = 0; v < g.kw; ++v) {
        T* row = cols + ((c * g.kh + u) * g.kw + v) * P;
        for (idx p = 0; p < oh; ++p) {
          const idx i = p * g.sh + u - g.ph;
          T* dst = row + p * ow;
          if (i < 0 || i >= g.h) {
            std::fill(dst, dst + ow, T(0));
            continue;
          }
          const T* src = x + (c * g.h + i) * g.w;
          for (idx q = 0; q < ow; ++q) {
            const idx j = q * g.sw + v - g.pw;
            dst[q] = (j >= 0 && j < g.w) ? src[j] : T(0);
          }
        }
      }
}

// x[c, i, j] += cols[(c, u, v), (p, q)]  (transpose of im2col); x must be zeroed by the caller
template <typename T>
void col2im(const T* cols, T* x, const Window2d& g) {
  const idx oh = g.oh(), ow = g.ow(), P = oh * ow;
  for (idx c = 0; c < g.c; ++c)
    for (idx u = 0; u < g.kh; ++u)
      for (idx v = 0; v < g.kw; ++v) {
        const T* row = cols + ((c * g.kh + u) * g.kw + v) * P;
        for (idx p = 0; p < oh; ++p) {
          const idx i = p * g.sh + u - g.ph;
          if (i < 0 || i >= g.h) continue;
          T* dst = x + (c * g.h + i) * g.w;
          const T* src = row + p * ow;
          for (idx q = 0; q < ow; ++q) {
            const idx j = q * g.sw + v - g.pw;
            if (j >= 0 && j < g.w) dst[j] += src[q];
          }
        }
      }
}

// Samples run in parallel (one GEMM thread each) when there are enough of them; otherwise the
// GEMM itself is parallel.  Either way every output element is reduced in the same order.
inline void split_threads(int nthreads, idx n, idx work, int& outer, int& inner) {
  const int t = threads_for(nthreads, 1 << 30, work);
  outer = (n >= t) ? t : 1;
  inner = (outer == 1) ? t : 1;
}

}  // namespace

template <typename T>
void conv2d_forward(const T* x, const T* w, const T* b, T* y, const Window2d& g, idx c_out,
                    int nthreads) {
  g.validate();
  const idx P = g.oh() * g.ow(), K = g.c * g.kh * g.kw;
  int outer, inner;
  split_threads(nthreads, g.n, g.n * P * K * c_out, outer, inner);
#pragma omp parallel num_threads(outer)
  {
    std::vector<T> cols(static_cast<size_t>(K * P));
#pragma omp for schedule(static)
    for (idx s = 0; s < g.n; ++s) {
      T* ys = y + s * c_out * P;
      im2col(x + s * g.c * g.h * g.w, cols.data(), g);
      if (b) {
        for (idx o = 0; o < c_out; ++o) std::fill(ys + o * P, ys + (o + 1) * P, b[o]);
      }
      // ys (c_out, P) = w (c_out, K) . cols (K, P)
      gemm<T>(c_out, P, K, w, K, 1, cols.data(), P, 1, ys, P, b != nullptr, inner);
    }
  }
}

template <typename T>
void conv2d_backward(const T* gy, const T* w, T* gx, const Window2d& g, idx c_out, int nthreads) {
  g.validate();
  const idx P = g.oh() * g.ow(), K = g.c * g.kh * g.kw, S = g.c * g.h * g.w;
  int outer, inner;
  split_threads(nthreads, g.n, g.n * P * K * c_out, outer, inner);
#pragma omp parallel num_threads(outer)
  {
    std::vector<T> cols(static_cast<size_t>(K * P));
#pragma omp for schedule(static)
    for (idx s = 0; s < g.n; ++s) {
      // cols (K, P) = w^T (K, c_out) . gy (c_out, P)
      gemm<T>(K, P, c_out, w, 1, K, gy + s * c_out * P, P, 1, cols.data(), P, false, inner);
      T* gxs = gx + s * S;
      std::fill(gxs, gxs + S, T(0));
      col2im(cols.data(), gxs, g);
    }
  }
}

#define RELPROP_INSTANTIATE(T)                                                                 \
  template void conv2d_forward<T>(const T*, const T*, const T*, T*, const Window2d&, idx, int); \
  template void conv2d_backward<T>(const T*, const T*, T*, const Window2d&, idx, int);
RELPROP_INSTANTIATE(float)
RELPROP_INSTANTIATE(double)
#undef RELPROP_INSTANTIATE

}  // namespace relprop

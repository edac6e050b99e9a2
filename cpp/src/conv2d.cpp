// Conv2d on the GEMM core as an implicit GEMM: per sample, y (c_out, oh*ow) = W (c_out, K) times
// the im2col matrix of x (K, oh*ow), K = c_in*kh*kw.  The weights are packed once per call for
// all samples; the im2col matrix is never stored: the GEMM packs its panels straight from the
// image (1x1 stride-1 unpadded convolutions read x as a plain matrix).  The bias is added in
// the GEMM's epilogue.
//
// Backward (w.r.t. x): with stride 1 and padding < kernel size it is itself a convolution, of
// gy with the flipped, transposed kernel and padding kernel - 1 - padding, so it runs on the
// same implicit GEMM; otherwise (and for few input channels) cols = W^T gy per sample and
// col2im scatters it back.
//
// Threads split the (samples x pixel strips) range and, when that is too short, the output
// channels, into one rectangle per thread; every output element is reduced in the same order
// for any thread count.
#include <algorithm>
#include <vector>

#include "gemm_impl.hpp"
#include "relprop/check.hpp"
#include "relprop/kernels.hpp"
#include "relprop/memory.hpp"
#include "relprop/parallel.hpp"

namespace relprop {

void Window2d::validate() const {
  RELPROP_CHECK(n >= 0 && c > 0 && h > 0 && w > 0, "window input shape must be positive, got (",
                n, ", ", c, ", ", h, ", ", w, ")");
  RELPROP_CHECK(kh > 0 && kw > 0 && sh > 0 && sw > 0 && ph >= 0 && pw >= 0,
                "window kernel/stride must be positive and padding non-negative");
  constexpr idx kMax = (idx(1) << 31) - 1;  // keeps h + 2 * ph and every window index in range
  RELPROP_CHECK(h <= kMax && w <= kMax && kh <= kMax && kw <= kMax && sh <= kMax && sw <= kMax &&
                    ph <= kMax && pw <= kMax,
                "window sizes, strides and paddings must be below 2**31");
  RELPROP_CHECK(h + 2 * ph >= kh && w + 2 * pw >= kw, "window (", kh, ", ", kw,
                ") larger than the padded input (", h + 2 * ph, ", ", w + 2 * pw, ")");
}

namespace {

// Scratch vectors are counted (relprop::memory) so tests can bound the kernels' memory.
template <typename T>
using Buffer = std::vector<T, CountingAllocator<T>>;

using detail::GemmArgs;
using detail::GemmImpl;
using detail::Im2col;

// n independent GEMMs that share A (packed):  C_s (m, P) = A (m, k) B_s (k, P) [+ bias],
// B_s the im2col matrix of x + s*x_stride (im != null) or the row-major matrix there,
// C_s at y + s*y_stride with leading dimension P; rows >= m2 at y2 + s*y2_stride if y2 is set.
template <typename T>
struct BatchGemm {
  idx n, m, k, P;
  const T* apack;
  const Im2col* im;
  const T* x;
  idx x_stride;
  T* y;
  idx y_stride;
  const T* bias;
  T* y2 = nullptr;
  idx y2_stride = 0, m2 = 0;

  GemmArgs<T> sample(idx s) const {
    GemmArgs<T> g;
    g.m = m;
    g.n = P;
    g.k = k;
    g.apack = apack;
    g.b = x + s * x_stride;
    g.im = im;
    g.rsb = P;
    g.csb = 1;
    g.c = y + s * y_stride;
    g.ldc = P;
    g.row_bias = bias;
    if (y2) {
      g.c2 = y2 + s * y2_stride;
      g.m2 = m2;
    }
    return g;
  }
};

template <typename T>
void run_batch(const GemmImpl<T>& impl, const BatchGemm<T>& bg, int nthreads) {
  if (bg.n <= 0) return;
  const idx strips = (bg.P + impl.nr - 1) / impl.nr;  // pixel strips per sample
  const idx units = bg.n * strips;
  const int nt = threads_for(nthreads, units * ((bg.m + impl.mr - 1) / impl.mr),
                             bg.n * bg.m * bg.P * bg.k);
  if (nt <= 1) {
    for (idx s = 0; s < bg.n; ++s) detail::run_tile(impl, bg.sample(s), 0, bg.m, 0, bg.P);
    return;
  }
  const detail::Split sp =
      detail::choose_split(bg.m, units * impl.nr, bg.k, impl.mr, impl.nr, nt, false);
  const idx sm = (bg.m + impl.mr - 1) / impl.mr;
  const int tasks = sp.tm * sp.tn;
  parallel_for(tasks, tasks, [&](idx t) {
    idx lo_m, hi_m, u0, u1;
    detail::share(sm, sp.tm, static_cast<int>(t / sp.tn), lo_m, hi_m);
    detail::share(units, sp.tn, static_cast<int>(t % sp.tn), u0, u1);
    const idx i0 = lo_m * impl.mr, i1 = std::min(hi_m * impl.mr, bg.m);
    for (idx u = u0; u < u1 && i0 < i1;) {
      const idx s = u / strips, first = u % strips;
      const idx last = std::min(strips, first + (u1 - u));  // strips of sample s in [u0, u1)
      detail::run_tile(impl, bg.sample(s), i0, i1, first * impl.nr,
                       std::min(last * impl.nr, bg.P));
      u += last - first;
    }
  });
}

// x[c, i, j] += cols[(c, u, v), (p, q)] for channels c0 <= c < c1 (transpose of im2col); x must
// be zeroed by the caller.  Each x element sums its (u, v) terms in ascending order.
template <typename T>
void col2im(const T* cols, T* x, const Window2d& g, idx c0, idx c1) {
  const idx oh = g.oh(), ow = g.ow(), P = oh * ow;
  for (idx c = c0; c < c1; ++c)
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

}  // namespace

template <typename T>
idx conv2d_packed_size(idx c_out, idx k) {
  return detail::active_gemm<T>().packed_a_size(c_out, k);
}

template <typename T>
void conv2d_pack(const T* w, idx c_out, idx k, T* dst) {
  const auto& impl = detail::active_gemm<T>();
  impl.pack_a(impl, w, k, 1, c_out, k, dst);
}

template <typename T>
void conv2d_forward(const T* x, const T* w, const T* b, T* y, const Window2d& g, idx c_out,
                    int nthreads, const T* packed) {
  conv2d_forward_split<T>(x, w, b, y, nullptr, g, c_out, c_out, nthreads, packed);
}

template <typename T>
void conv2d_forward_split(const T* x, const T* w, const T* b, T* y, T* y2, const Window2d& g,
                          idx c_out, idx split, int nthreads, const T* packed) {
  g.validate();
  RELPROP_CHECK(split > 0 && split <= c_out, "split must be in [1, ", c_out, "], got ", split);
  if (g.n == 0) return;
  const auto& impl = detail::active_gemm<T>();
  const idx K = g.c * g.kh * g.kw, P = g.oh() * g.ow();
  Buffer<T> wp(static_cast<size_t>(packed ? 0 : conv2d_packed_size<T>(c_out, K)));
  if (!packed) {
    conv2d_pack(w, c_out, K, wp.data());
    packed = wp.data();
  }
  const Im2col im{g.c, g.h, g.w, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.oh(), g.ow()};
  // A 1x1 stride-1 unpadded convolution multiplies by x itself, a (c_in, h*w) matrix.
  const bool plain = g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0;
  BatchGemm<T> bg{g.n, c_out, K, P, packed, plain ? nullptr : &im,
                  x, g.c * g.h * g.w, y, split * P, b};
  if (split < c_out) {
    bg.y2 = y2;
    bg.y2_stride = (c_out - split) * P;
    bg.m2 = split;
  }
  run_batch(impl, bg, nthreads);
}

// The backward pass multiplies by one of two matrices made from w: for a stride-1 window,
// the flipped kernel W'[c, o, u, v] = w[o, c, kh-1-u, kw-1-v] (c_in, c_out*kh*kw) of the
// transposed convolution gx = conv(gy, W') (padding kh-1-ph, kw-1-pw); else W^T (K, c_out)
// into columns that col2im adds up.  Few input channels (a first layer) take the second way
// too: the flipped convolution would pack kh*kw*c_out values per pixel for only c_in
// multiply-adds each.
bool conv2d_backward_flipped(const Window2d& g, idx c_out) {
  return g.sh == 1 && g.sw == 1 && g.ph < g.kh && g.pw < g.kw && g.c * 8 > c_out;
}

template <typename T>
idx conv2d_backward_packed_size(const Window2d& g, idx c_out) {
  const auto& impl = detail::active_gemm<T>();
  const idx K = g.c * g.kh * g.kw;
  return conv2d_backward_flipped(g, c_out) ? impl.packed_a_size(g.c, c_out * g.kh * g.kw)
                                           : impl.packed_a_size(K, c_out);
}

template <typename T>
void conv2d_pack_backward(const T* w, const Window2d& g, idx c_out, T* dst) {
  const auto& impl = detail::active_gemm<T>();
  const idx khw = g.kh * g.kw, K = g.c * khw;
  if (!conv2d_backward_flipped(g, c_out)) {
    impl.pack_a(impl, w, 1, K, K, c_out, dst);
    return;
  }
  const idx K2 = c_out * khw;
  Buffer<T> wt(static_cast<size_t>(g.c * K2));
  for (idx o = 0; o < c_out; ++o)
    for (idx c = 0; c < g.c; ++c) {
      const T* src = w + (o * g.c + c) * khw;
      T* d = wt.data() + c * K2 + o * khw;
      for (idx q = 0; q < khw; ++q) d[q] = src[khw - 1 - q];
    }
  impl.pack_a(impl, wt.data(), K2, 1, g.c, K2, dst);
}

template <typename T>
void conv2d_backward(const T* gy, const T* w, T* gx, const Window2d& g, idx c_out, int nthreads,
                     const T* packed) {
  g.validate();
  if (g.n == 0) return;
  const auto& impl = detail::active_gemm<T>();
  const idx P = g.oh() * g.ow(), K = g.c * g.kh * g.kw, S = g.c * g.h * g.w;
  const idx khw = g.kh * g.kw;
  Buffer<T> wp(static_cast<size_t>(packed ? 0 : conv2d_backward_packed_size<T>(g, c_out)));
  if (!packed) {
    conv2d_pack_backward(w, g, c_out, wp.data());
    packed = wp.data();
  }
  if (conv2d_backward_flipped(g, c_out)) {
    const Im2col im{c_out, g.oh(), g.ow(), g.kh, g.kw, 1, 1, g.kh - 1 - g.ph, g.kw - 1 - g.pw,
                    g.h, g.w};
    const bool plain = khw == 1;
    const BatchGemm<T> bg{g.n, g.c, c_out * khw, g.h * g.w, packed, plain ? nullptr : &im,
                          gy, c_out * P, gx, S, nullptr};
    run_batch(impl, bg, nthreads);
    return;
  }
  // cols (K, P) = W^T (K, c_out) gy_s (c_out, P), then col2im; samples in parallel, or the
  // GEMM and then col2im (over channels) in parallel for small batches.
  const int nt = threads_for(nthreads, g.n * K, g.n * P * K * c_out);
  if (nt > 1 && g.n >= nt) {
    // one cols buffer per thread, allocated here, outside the parallel region
    Buffer<T> all_cols(static_cast<size_t>(nt * K * P));
    parallel_for(nt, g.n, [&](idx s) {
      T* cols = all_cols.data() + static_cast<idx>(thread_index()) * K * P;
      const BatchGemm<T> one{1, K, c_out, P, packed, nullptr, gy + s * c_out * P, 0, cols, 0,
                             nullptr};
      detail::run_tile(impl, one.sample(0), 0, K, 0, P);
      std::fill(gx + s * S, gx + (s + 1) * S, T(0));
      col2im(cols, gx + s * S, g, 0, g.c);
    });
    return;
  }
  Buffer<T> cols(static_cast<size_t>(K * P));
  for (idx s = 0; s < g.n; ++s) {
    const BatchGemm<T> one{1, K, c_out, P, packed, nullptr, gy + s * c_out * P, 0, cols.data(),
                           0, nullptr};
    run_batch(impl, one, nthreads);
    T* gxs = gx + s * S;
    const int ntc = threads_for(nthreads, g.c, K * P);
#pragma omp parallel for schedule(static) num_threads(ntc)
    for (idx c = 0; c < g.c; ++c) {
      std::fill(gxs + c * g.h * g.w, gxs + (c + 1) * g.h * g.w, T(0));
      col2im(cols.data(), gxs, g, c, c + 1);
    }
  }
}

#define RELPROP_INSTANTIATE(T)                                                                 \
  template idx conv2d_packed_size<T>(idx, idx);                                                 \
  template void conv2d_pack<T>(const T*, idx, idx, T*);                                          \
  template void conv2d_forward<T>(const T*, const T*, const T*, T*, const Window2d&, idx, int,  \
                                  const T*);                                                     \
  template void conv2d_forward_split<T>(const T*, const T*, const T*, T*, T*, const Window2d&,  \
                                        idx, idx, int, const T*);                               \
  template void conv2d_backward<T>(const T*, const T*, T*, const Window2d&, idx, int, const T*); \
  template idx conv2d_backward_packed_size<T>(const Window2d&, idx);                            \
  template void conv2d_pack_backward<T>(const T*, const Window2d&, idx, T*);
RELPROP_INSTANTIATE(float)
RELPROP_INSTANTIATE(double)
#undef RELPROP_INSTANTIATE

}  // namespace relprop

// 2-D upsampling as torch's interpolate (nearest, bilinear), with its vector-Jacobian product.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "relprop/check.hpp"
#include "relprop/kernels.hpp"
#include "relprop/parallel.hpp"
#include "relprop/workspace.hpp"

namespace relprop {

namespace {

// The two taps of every output index along one axis: out[d] = w0[d] in[i0[d]] + w1[d] in[i1[d]]
// (nearest: w0 = 1, w1 = 0, i1 = i0).
template <typename T>
struct Taps {
  idx* i0;
  idx* i1;
  T* w0;
  T* w1;
};

// torch's nearest_idx: the source index in float arithmetic (as torch computes it for every
// dtype), with its exact cases for equal and doubled sizes.
void nearest_taps(idx in, idx out, double scale, idx* i0) {
  const float s = scale > 0 ? static_cast<float>(1.0 / scale)
                            : static_cast<float>(in) / static_cast<float>(out);
  for (idx d = 0; d < out; ++d) {
    if (out == in) {
      i0[d] = d;
    } else if (out == 2 * in) {
      i0[d] = d >> 1;
    } else {
      i0[d] = std::min<idx>(static_cast<idx>(std::floor(static_cast<float>(d) * s)), in - 1);
    }
  }
}

// torch's compute_source_index_and_lambda (align_corners, or the half-pixel centres clamped
// at 0), in T as torch's opmath for float and double; its floorf too.
template <typename T>
void linear_taps(idx in, idx out, bool align, double scale, Taps<T> t) {
  T ratio;
  if (align) {
    ratio = out > 1 ? static_cast<T>(in - 1) / static_cast<T>(out - 1) : T(0);
  } else {
    ratio = scale > 0 ? static_cast<T>(1.0 / scale) : static_cast<T>(in) / static_cast<T>(out);
  }
  for (idx d = 0; d < out; ++d) {
    if (out == in) {
      t.i0[d] = t.i1[d] = d;
      t.w0[d] = T(1);
      t.w1[d] = T(0);
      continue;
    }
    T real = align ? ratio * static_cast<T>(d) : ratio * (static_cast<T>(d) + T(0.5)) - T(0.5);
    if (!align && real < T(0)) real = T(0);
    const idx k = std::min<idx>(static_cast<idx>(std::floor(static_cast<float>(real))), in - 1);
    const T lambda = std::min(std::max(real - static_cast<T>(k), T(0)), T(1));
    t.i0[d] = k;
    t.i1[d] = k + (k < in - 1 ? 1 : 0);
    t.w0[d] = T(1) - lambda;
    t.w1[d] = lambda;
  }
}

// The taps of both axes, in one workspace of indices and one of weights.
template <typename T>
class Plan {
 public:
  Plan(const Upsample2d& u)
      : idxs_(2 * (u.oh + u.ow)), weights_(2 * (u.oh + u.ow)), linear_(u.mode == 1) {
    RELPROP_CHECK(u.mode == 0 || u.mode == 1, "upsample2d: mode must be 0 (nearest) or 1 "
                  "(bilinear), got ", u.mode);
    RELPROP_CHECK(u.h > 0 && u.w > 0 && u.oh > 0 && u.ow > 0, "upsample2d: sizes must be ",
                  "positive, got input (", u.h, ", ", u.w, "), output (", u.oh, ", ", u.ow, ")");
    RELPROP_CHECK(u.mode == 1 || !u.align_corners, "upsample2d: align_corners applies to ",
                  "bilinear upsampling only");
    idx* ip = idxs_.data();
    T* wp = weights_.data();
    rows_ = {ip, ip + u.oh, wp, wp + u.oh};
    cols_ = {ip + 2 * u.oh, ip + 2 * u.oh + u.ow, wp + 2 * u.oh, wp + 2 * u.oh + u.ow};
    if (linear_) {
      linear_taps<T>(u.h, u.oh, u.align_corners, u.scale_h, rows_);
      linear_taps<T>(u.w, u.ow, u.align_corners, u.scale_w, cols_);
    } else {
      nearest_taps(u.h, u.oh, u.scale_h, rows_.i0);
      nearest_taps(u.w, u.ow, u.scale_w, cols_.i0);
    }
  }
  const Taps<T>& rows() const { return rows_; }
  const Taps<T>& cols() const { return cols_; }
  bool linear() const { return linear_; }

 private:
  Workspace<idx> idxs_;
  Workspace<T> weights_;
  Taps<T> rows_{}, cols_{};
  bool linear_;
};

// body(rows' taps, columns' taps, linear, plane, row) for every plane on the threads (the
// arguments checked first), with `row` one input row of scratch per thread.
template <typename T, class Body>
void for_each_plane(const Upsample2d& u, int nthreads, Body body) {
  const Plan<T> plan(u);
  if (u.planes == 0) return;
  const int nt = threads_for(nthreads, u.planes, u.planes * u.oh * (u.w + u.ow));
  Workspace<T> all(u.w, nt);
  parallel_for(nt, u.planes, [&](idx pl) {
    body(plan.rows(), plan.cols(), plan.linear(), pl, all.part(thread_index()));
  });
}

}  // namespace

// Per plane and output row: the row's two source rows mixed into `row` (nearest: the source row
// itself), then each output column its two taps of that; an output row with the source of the
// one before is a copy of it.
template <typename T>
void upsample2d_forward(const T* x, T* y, const Upsample2d& u, int nthreads) {
  for_each_plane<T>(u, nthreads, [&](const Taps<T>& r, const Taps<T>& c, bool linear, idx pl,
                                     T* row) {
    const T* xs = x + pl * u.h * u.w;
    T* ys = y + pl * u.oh * u.ow;
    for (idx i = 0; i < u.oh; ++i) {
      T* yr = ys + i * u.ow;
      if (i > 0 && r.i0[i] == r.i0[i - 1] && (!linear || (r.i1[i] == r.i1[i - 1] &&
                                                         r.w0[i] == r.w0[i - 1] &&
                                                         r.w1[i] == r.w1[i - 1]))) {
        std::memcpy(yr, yr - u.ow, static_cast<size_t>(u.ow) * sizeof(T));
        continue;
      }
      const T* src = xs + r.i0[i] * u.w;
      if (linear) {
        const T* x1 = xs + r.i1[i] * u.w;
        const T a0 = r.w0[i], a1 = r.w1[i];
#pragma omp simd
        for (idx j = 0; j < u.w; ++j) row[j] = a0 * src[j] + a1 * x1[j];
        for (idx j = 0; j < u.ow; ++j) yr[j] = c.w0[j] * row[c.i0[j]] + c.w1[j] * row[c.i1[j]];
      } else {
        for (idx j = 0; j < u.ow; ++j) yr[j] = src[c.i0[j]];
      }
    }
  });
}

// Per plane and output row i (in order): the row's gradients gathered onto the input columns
// (output columns in order, tap 0 then tap 1), then added to the row's source rows.
template <typename T>
void upsample2d_backward(const T* gy, T* gx, const Upsample2d& u, int nthreads) {
  for_each_plane<T>(u, nthreads, [&](const Taps<T>& r, const Taps<T>& c, bool linear, idx pl,
                                     T* row) {
    const T* gs = gy + pl * u.oh * u.ow;
    T* gxs = gx + pl * u.h * u.w;
    std::fill(gxs, gxs + u.h * u.w, T(0));
    for (idx i = 0; i < u.oh; ++i) {
      const T* gr = gs + i * u.ow;
      std::fill(row, row + u.w, T(0));
      if (linear) {
        for (idx j = 0; j < u.ow; ++j) {
          row[c.i0[j]] += c.w0[j] * gr[j];
          row[c.i1[j]] += c.w1[j] * gr[j];
        }
        T* g0 = gxs + r.i0[i] * u.w;
        T* g1 = gxs + r.i1[i] * u.w;
        const T a0 = r.w0[i], a1 = r.w1[i];
#pragma omp simd
        for (idx j = 0; j < u.w; ++j) g0[j] += a0 * row[j];
#pragma omp simd
        for (idx j = 0; j < u.w; ++j) g1[j] += a1 * row[j];
      } else {
        for (idx j = 0; j < u.ow; ++j) row[c.i0[j]] += gr[j];
        T* g0 = gxs + r.i0[i] * u.w;
#pragma omp simd
        for (idx j = 0; j < u.w; ++j) g0[j] += row[j];
      }
    }
  });
}

#define RELPROP_INSTANTIATE(T)                                                             \
  template void upsample2d_forward<T>(const T*, T*, const Upsample2d&, int);               \
  template void upsample2d_backward<T>(const T*, T*, const Upsample2d&, int);
RELPROP_INSTANTIATE(float)
RELPROP_INSTANTIATE(double)
#undef RELPROP_INSTANTIATE

}  // namespace relprop

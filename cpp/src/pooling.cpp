// Max, average and adaptive average pooling over 2-D windows, with their vector-Jacobian
// products.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "maxpool_2x2.hpp"
#include "relprop/check.hpp"
#include "relprop/kernels.hpp"
#include "relprop/parallel.hpp"
#include "relprop/workspace.hpp"

namespace relprop {

namespace {

// The input rows (columns) under window row p (column q): the window clipped to the input, so
// the loops never visit padding (a huge padded window costs no more than the input it covers).
struct Span {
  idx lo, hi;
};
inline Span rows(const Window2d& g, idx p) {
  const idx top = p * g.sh - g.ph;
  return {std::max<idx>(top, 0), std::min<idx>(top + g.kh, g.h)};
}
inline Span cols(const Window2d& g, idx q) {
  const idx left = q * g.sw - g.pw;
  return {std::max<idx>(left, 0), std::min<idx>(left + g.kw, g.w)};
}
// At most the input elements one window visits (the work of one output).
inline idx window_area(const Window2d& g) { return std::min(g.kh, g.h) * std::min(g.kw, g.w); }

}  // namespace

using detail::beats;
using detail::maxpool_2x2_plane;

namespace {

// The generic window (p, q): the first element wins ties and NaN (a padding element is never
// visited; an empty window gives -inf and -1).
template <typename T>
inline void window_max(const T* xs, const Window2d& g, idx p, idx q, T& out, std::int64_t& at) {
  T best = -std::numeric_limits<T>::infinity();
  std::int64_t where = -1;
  const Span r = rows(g, p), c = cols(g, q);
  for (idx i = r.lo; i < r.hi; ++i) {
    for (idx j = c.lo; j < c.hi; ++j) {
      const T val = xs[i * g.w + j];
      if (where < 0 || beats(val, best)) {
        best = val;
        where = i * g.w + j;
      }
    }
  }
  out = best;
  at = where;
}

// Windows of at most this many taps, strides up to kMaxPhases, take the vectorized row path.
constexpr idx kMaxTaps = 64;
constexpr idx kMaxPhases = 4;

// Whether maxpool_2x2_plane runs the window g: 2x2, stride 2, every window inside the input.
bool two_path(const Window2d& g) {
  return g.kh == 2 && g.kw == 2 && g.sh == 2 && g.sw == 2 && g.ph == 0 && g.pw == 0 &&
         2 * g.oh() <= g.h && 2 * g.ow() <= g.w &&
         g.w < (idx(1) << 30);  // lane offsets up to w + 1 fit in int32
}

// Whether maxpool_rows runs the window g (else the generic loops).
bool row_path(const Window2d& g) {
  return g.kh * g.kw <= kMaxTaps && g.sw <= kMaxPhases && g.w < (idx(1) << 30) && !two_path(g);
}

// Elements of maxpool_rows' work space: the plane's rows, each split into sw phases of
// ceil(w / sw) + 1 elements, and the lanes' running winners.
idx row_work(const Window2d& g) {
  const idx phase = (g.w + g.sw - 1) / g.sw + 1;
  return g.h * g.sw * phase + 2 * g.ow();
}

// d_r[j] = xr[j*sw + r] for j < ceil((w - r) / sw), r < sw (phases phase elements apart).
template <typename T>
void split_phases(const T* xr, idx w, idx sw, idx phase, T* d) {
#if defined(__SSE2__)
  if constexpr (std::is_same_v<T, float>) {
    if (sw == 2) {  // evens and odds, four of each per step
      T* e = d;
      T* o = d + phase;
      idx j = 0;
      for (; 2 * j + 8 <= w; j += 4) {
        const __m128 a = _mm_loadu_ps(xr + 2 * j), b = _mm_loadu_ps(xr + 2 * j + 4);
        _mm_storeu_ps(e + j, _mm_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)));
        _mm_storeu_ps(o + j, _mm_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
      }
      for (; 2 * j < w; ++j) {
        e[j] = xr[2 * j];
        if (2 * j + 1 < w) o[j] = xr[2 * j + 1];
      }
      return;
    }
  }
#endif
  for (idx r = 0; r < sw; ++r) {
    T* dr = d + r * phase;
    const idx len = (w - r + sw - 1) / sw;
    for (idx j = 0; j < len; ++j) dr[j] = xr[j * sw + r];
  }
}

// One plane of max pooling for any window of at most kMaxTaps taps and column stride at most
// kMaxPhases: output rows whose windows lie inside the input rows, and their columns whose
// windows lie inside the input columns, are made lane-wise (output column q in lane q): each
// input row is split once into its sw column phases, so tap (u, v) is the contiguous run
// phase[(v - pw) mod sw][q + floor((v - pw) / sw)] of row top + u; the taps are visited in
// row-major window order with the comparison of window_max (the first maximum wins, the
// first NaN wins), keeping the winning tap's number (as a T: small integers are exact, and
// one lane width lets the loop vectorize), and the flat index is made from it at the end.
// The other windows (the border) go through window_max.  work: row_work(g) elements.
template <typename T>
void maxpool_rows(const T* xs, T* y, std::int64_t* arg, const Window2d& g, T* work) {
  const idx oh = g.oh(), ow = g.ow(), sw = g.sw, kw = g.kw;
  const idx phase = (g.w + sw - 1) / sw + 1, row = sw * phase;
  T* ph = work;                 // [h][sw][phase]
  T* best = ph + g.h * row;     // [ow]
  T* tap = best + ow;           // [ow]
  // columns whose windows lie inside the input: q*sw - pw >= 0 and q*sw - pw + kw <= w
  const idx q_lo = std::min(ow, (g.pw + sw - 1) / sw);
  const idx q_hi = std::max(q_lo, std::min(ow, g.w + g.pw - kw >= 0 ? (g.w + g.pw - kw) / sw + 1
                                                                    : idx(0)));
  std::int64_t off[kMaxTaps];  // flat offset of tap (u, v) from the window's top-left element
  for (idx u = 0; u < g.kh; ++u)
    for (idx v = 0; v < kw; ++v) off[u * kw + v] = u * g.w + v;
  bool split = false;
  for (idx p = 0; p < oh; ++p) {
    const idx top = p * g.sh - g.ph;
    T* yp = y + p * ow;
    std::int64_t* ap = arg + p * ow;
    if (top < 0 || top + g.kh > g.h || q_lo >= q_hi) {
      for (idx q = 0; q < ow; ++q) window_max(xs, g, p, q, yp[q], ap[q]);
      continue;
    }
    for (idx q = 0; q < q_lo; ++q) window_max(xs, g, p, q, yp[q], ap[q]);
    for (idx q = q_hi; q < ow; ++q) window_max(xs, g, p, q, yp[q], ap[q]);
    if (!split) {  // every row, once
      for (idx i = 0; i < g.h; ++i) split_phases(xs + i * g.w, g.w, sw, phase, ph + i * row);
      split = true;
    }
    const idx n = q_hi - q_lo;
    for (idx u = 0; u < g.kh; ++u)
      for (idx v = 0; v < kw; ++v) {
        const idx c = q_lo * sw - g.pw + v;  // input column of lane 0 (>= 0)
        const T* src = ph + (top + u) * row + (c % sw) * phase + c / sw;
        const T k = static_cast<T>(u * kw + v);
        if (u == 0 && v == 0) {
#pragma omp simd
          for (idx q = 0; q < n; ++q) {
            best[q] = src[q];
            tap[q] = T(0);
          }
          continue;
        }
#pragma omp simd
        for (idx q = 0; q < n; ++q) {
          const T val = src[q], m = best[q], t0 = tap[q];
          const bool t = val > m || (val != val && m == m);
          best[q] = t ? val : m;
          tap[q] = t ? k : t0;
        }
      }
    const std::int64_t base = top * g.w + q_lo * sw - g.pw;
    for (idx q = 0; q < n; ++q) {
      yp[q_lo + q] = best[q];
      ap[q_lo + q] = base + q * sw + off[static_cast<idx>(tap[q])];
    }
  }
}

}  // namespace

// Every (sample, channel) plane is independent: parallel over planes, serial within a plane, so
// overlapping windows accumulate in the same order for any thread count.
template <typename T>
void maxpool2d_forward(const T* x, T* y, std::int64_t* arg, const Window2d& g, int nthreads) {
  g.validate();
  const idx oh = g.oh(), ow = g.ow(), planes = g.n * g.c;
  const int nt = threads_for(nthreads, planes, planes * oh * ow * window_area(g));
  const bool two = two_path(g), rowwise = row_path(g);
  // the row path's work space, one per thread, allocated here (outside the parallel region)
  Workspace<T> work(rowwise ? row_work(g) : 0, nt);
  parallel_for(nt, planes, [&](idx pl) {
    const T* xs = x + pl * g.h * g.w;
    if (two) {
      maxpool_2x2_plane(xs, y + pl * oh * ow, arg + pl * oh * ow, g.w, oh, ow);
    } else if (rowwise) {
      maxpool_rows(xs, y + pl * oh * ow, arg + pl * oh * ow, g,
                   work.part(thread_index()));
    } else {
      for (idx p = 0; p < oh; ++p)
        for (idx q = 0; q < ow; ++q)
          window_max(xs, g, p, q, y[(pl * oh + p) * ow + q], arg[(pl * oh + p) * ow + q]);
    }
  });
}

namespace {

// maxpool2d_backward(_masked): y (the pooled output) or null.  Per plane: zeros, then each
// gradient added at its winner; with y, the gradients are first masked in chunks (a
// vectorized select: a branch per element on the sign of y mispredicts half the time).
template <typename T>
void unpool(const T* gy, const std::int64_t* arg, const T* y, T* gx, const Window2d& g,
            int nthreads) {
  g.validate();
  const idx P = g.oh() * g.ow(), planes = g.n * g.c, S = g.h * g.w;
  [[maybe_unused]] const int nt = threads_for(nthreads, planes, planes * (P + S));
#pragma omp parallel for schedule(static) num_threads(nt)
  for (idx pl = 0; pl < planes; ++pl) {
    T* gxs = gx + pl * S;
    const T* gs = gy + pl * P;
    const std::int64_t* as = arg + pl * P;
    std::fill(gxs, gxs + S, T(0));
    if (!y) {
      for (idx o = 0; o < P; ++o) {
        const std::int64_t where = as[o];
        if (where >= 0 && where < S) gxs[where] += gs[o];
      }
      continue;
    }
    constexpr idx kChunk = 256;
    T v[kChunk];
    for (idx o0 = 0; o0 < P; o0 += kChunk) {
      const idx len = std::min(kChunk, P - o0);
      const T* ys = y + pl * P + o0;
#pragma omp simd
      for (idx o = 0; o < len; ++o) {
        const T go = gs[o0 + o];  // loaded unconditionally so that the loop vectorizes
        v[o] = ys[o] > T(0) ? go : T(0);
      }
      for (idx o = 0; o < len; ++o) {
        const std::int64_t where = as[o0 + o];
        if (where >= 0 && where < S) gxs[where] += v[o];
      }
    }
  }
}

}  // namespace

template <typename T>
void maxpool2d_backward(const T* gy, const std::int64_t* arg, T* gx, const Window2d& g,
                        int nthreads) {
  unpool<T>(gy, arg, nullptr, gx, g, nthreads);
}

template <typename T>
void maxpool2d_backward_masked(const T* gy, const std::int64_t* arg, const T* y, T* gx,
                               const Window2d& g, int nthreads) {
  unpool<T>(gy, arg, y, gx, g, nthreads);
}

namespace {

// 1 / the count of window (p, q) of an average pooling (see avgpool2d_forward): its rows and
// columns within [-ph, h + ph) x [-pw, w + pw) with count_pad, else within the input.  `full`
// (1 / (kh * kw)) where the window counts kh * kw taps, so those windows keep their bits.
template <typename T>
inline T inverse_count(const Window2d& g, idx p, idx q, bool count_pad, T full) {
  const idx top = p * g.sh - g.ph, left = q * g.sw - g.pw;
  const idx ph = count_pad ? g.ph : 0, pw = count_pad ? g.pw : 0;
  const idx nr = std::min(top + g.kh, g.h + ph) - std::max(top, -ph);
  const idx nc = std::min(left + g.kw, g.w + pw) - std::max(left, -pw);
  return nr == g.kh && nc == g.kw ? full : T(1) / (static_cast<T>(nr) * static_cast<T>(nc));
}

}  // namespace

template <typename T>
void avgpool2d_forward(const T* x, T* y, const Window2d& g, bool count_pad, int nthreads) {
  g.validate();
  const idx oh = g.oh(), ow = g.ow(), planes = g.n * g.c;
  const T full = T(1) / (static_cast<T>(g.kh) * static_cast<T>(g.kw));  // no int overflow
  [[maybe_unused]] const int nt = threads_for(nthreads, planes, planes * oh * ow * window_area(g));
#pragma omp parallel for schedule(static) num_threads(nt)
  for (idx pl = 0; pl < planes; ++pl) {
    const T* xs = x + pl * g.h * g.w;
    for (idx p = 0; p < oh; ++p)
      for (idx q = 0; q < ow; ++q) {
        T acc = 0;
        const Span r = rows(g, p), c = cols(g, q);
        for (idx i = r.lo; i < r.hi; ++i)
          for (idx j = c.lo; j < c.hi; ++j) acc += xs[i * g.w + j];
        y[(pl * oh + p) * ow + q] = acc * inverse_count(g, p, q, count_pad, full);
      }
  }
}

template <typename T>
void avgpool2d_backward(const T* gy, T* gx, const Window2d& g, bool count_pad, int nthreads) {
  g.validate();
  const idx oh = g.oh(), ow = g.ow(), planes = g.n * g.c, S = g.h * g.w;
  const T full = T(1) / (static_cast<T>(g.kh) * static_cast<T>(g.kw));  // no int overflow
  [[maybe_unused]] const int nt = threads_for(nthreads, planes, planes * oh * ow * window_area(g));
#pragma omp parallel for schedule(static) num_threads(nt)
  for (idx pl = 0; pl < planes; ++pl) {
    T* gxs = gx + pl * S;
    std::fill(gxs, gxs + S, T(0));
    for (idx p = 0; p < oh; ++p)
      for (idx q = 0; q < ow; ++q) {
        const T share = gy[(pl * oh + p) * ow + q] * inverse_count(g, p, q, count_pad, full);
        const Span r = rows(g, p), c = cols(g, q);
        for (idx i = r.lo; i < r.hi; ++i)
          for (idx j = c.lo; j < c.hi; ++j) gxs[i * g.w + j] += share;
      }
  }
}

namespace {
// Window k of `out` over `in` elements (torch's adaptive pooling): [floor(k*in/out),
// ceil((k+1)*in/out)).
inline Span adaptive(idx k, idx in, idx out) {
  return {(k * in) / out, ((k + 1) * in + out - 1) / out};
}
}  // namespace

// Per plane and output row: the window's rows summed into `cols` (vectorized along the row, in
// row order), then each output sums its columns of that in order and divides by the count.
template <typename T>
void adaptive_avgpool2d_forward(const T* x, T* y, idx planes, idx h, idx w, idx oh, idx ow,
                                int nthreads) {
  RELPROP_CHECK(planes >= 0 && h > 0 && w > 0 && oh > 0 && ow > 0,
                "adaptive_avgpool2d: sizes must be positive, got input (", h, ", ", w,
                "), output (", oh, ", ", ow, ")");
  if (planes == 0) return;
  const int nt = threads_for(nthreads, planes, planes * (h * w + oh * ow));
  // one row of column sums per thread, allocated outside the parallel region
  Workspace<T> all(w, nt);
  parallel_for(nt, planes, [&](idx pl) {
    T* cols = all.part(thread_index());
    const T* xs = x + pl * h * w;
    T* ys = y + pl * oh * ow;
    for (idx i = 0; i < oh; ++i) {
      const Span r = adaptive(i, h, oh);
      std::copy(xs + r.lo * w, xs + (r.lo + 1) * w, cols);
      for (idx row = r.lo + 1; row < r.hi; ++row) {
        const T* xr = xs + row * w;
#pragma omp simd
        for (idx j = 0; j < w; ++j) cols[j] += xr[j];
      }
      for (idx j = 0; j < ow; ++j) {
        const Span c = adaptive(j, w, ow);
        T acc = 0;
        for (idx k = c.lo; k < c.hi; ++k) acc += cols[k];
        ys[i * ow + j] = acc / (static_cast<T>(r.hi - r.lo) * static_cast<T>(c.hi - c.lo));
      }
    }
  });
}

// Per plane and output row i: the row's shares gy[i, j] / count spread over their columns
// (in j order), then added to every input row of window i (in i order).
template <typename T>
void adaptive_avgpool2d_backward(const T* gy, T* gx, idx planes, idx h, idx w, idx oh, idx ow,
                                 int nthreads) {
  RELPROP_CHECK(planes >= 0 && h > 0 && w > 0 && oh > 0 && ow > 0,
                "adaptive_avgpool2d: sizes must be positive, got input (", h, ", ", w,
                "), output (", oh, ", ", ow, ")");
  if (planes == 0) return;
  const int nt = threads_for(nthreads, planes, planes * (h * w + oh * ow));
  Workspace<T> all(w, nt);
  parallel_for(nt, planes, [&](idx pl) {
    T* row = all.part(thread_index());
    const T* gs = gy + pl * oh * ow;
    T* gxs = gx + pl * h * w;
    std::fill(gxs, gxs + h * w, T(0));
    for (idx i = 0; i < oh; ++i) {
      const Span r = adaptive(i, h, oh);
      std::fill(row, row + w, T(0));
      for (idx j = 0; j < ow; ++j) {
        const Span c = adaptive(j, w, ow);
        const T share =
            gs[i * ow + j] / (static_cast<T>(r.hi - r.lo) * static_cast<T>(c.hi - c.lo));
        for (idx k = c.lo; k < c.hi; ++k) row[k] += share;
      }
      for (idx rr = r.lo; rr < r.hi; ++rr) {
        T* gr = gxs + rr * w;
#pragma omp simd
        for (idx k = 0; k < w; ++k) gr[k] += row[k];
      }
    }
  });
}

#define RELPROP_INSTANTIATE(T)                                                                   \
  template void maxpool2d_forward<T>(const T*, T*, std::int64_t*, const Window2d&, int);         \
  template void maxpool2d_backward<T>(const T*, const std::int64_t*, T*, const Window2d&, int);  \
  template void maxpool2d_backward_masked<T>(const T*, const std::int64_t*, const T*, T*,         \
                                             const Window2d&, int);                               \
  template void avgpool2d_forward<T>(const T*, T*, const Window2d&, bool, int);                  \
  template void avgpool2d_backward<T>(const T*, T*, const Window2d&, bool, int);                 \
  template void adaptive_avgpool2d_forward<T>(const T*, T*, idx, idx, idx, idx, idx, int);       \
  template void adaptive_avgpool2d_backward<T>(const T*, T*, idx, idx, idx, idx, idx, int);
RELPROP_INSTANTIATE(float)
RELPROP_INSTANTIATE(double)
#undef RELPROP_INSTANTIATE

}  // namespace relprop

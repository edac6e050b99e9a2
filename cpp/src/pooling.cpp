// Max, average and adaptive average pooling over 2-D windows, with their vector-Jacobian
// products.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "relprop/check.hpp"
#include "relprop/kernels.hpp"
#include "relprop/memory.hpp"
#include "relprop/parallel.hpp"

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

// `val` replaces the running maximum `best` if it is larger, or if it is the first NaN.
template <typename T>
inline bool beats(T val, T best) {
  return val > best || (val != val && best == best);
}

// One 2x2 window with candidates a, b (top row), c, d (bottom row); returns the maximum (first
// wins ties, first NaN wins) and stores the winner's offset from a (0, 1, w or w + 1) in off.
template <typename T>
inline T max4(T a, T b, T c, T d, idx w, idx& off) {
  T best = a;
  off = 0;
  if (beats(b, best)) best = b, off = 1;
  if (beats(c, best)) best = c, off = w;
  if (beats(d, best)) best = d, off = w + 1;
  return best;
}

#if defined(__SSE2__)
// Four windows of one output row at once (float): the same comparisons as max4, as lane masks.
inline idx max4_rows_sse(const float* r0, const float* r1, float* y, std::int64_t* arg,
                         std::int64_t base, idx w, idx ow) {
  const __m128i off_b = _mm_set1_epi32(1), off_c = _mm_set1_epi32(static_cast<int>(w)),
                off_d = _mm_set1_epi32(static_cast<int>(w + 1));
  idx q = 0;
  for (; q + 4 <= ow; q += 4) {
    const __m128 t0 = _mm_loadu_ps(r0 + 2 * q), t1 = _mm_loadu_ps(r0 + 2 * q + 4);
    const __m128 u0 = _mm_loadu_ps(r1 + 2 * q), u1 = _mm_loadu_ps(r1 + 2 * q + 4);
    const __m128 cand[3] = {_mm_shuffle_ps(t0, t1, _MM_SHUFFLE(3, 1, 3, 1)),
                            _mm_shuffle_ps(u0, u1, _MM_SHUFFLE(2, 0, 2, 0)),
                            _mm_shuffle_ps(u0, u1, _MM_SHUFFLE(3, 1, 3, 1))};
    const __m128i offs[3] = {off_b, off_c, off_d};
    __m128 best = _mm_shuffle_ps(t0, t1, _MM_SHUFFLE(2, 0, 2, 0));
    __m128i off = _mm_setzero_si128();
    for (int k = 0; k < 3; ++k) {
      const __m128 v = cand[k];
      const __m128 take = _mm_or_ps(
          _mm_cmpgt_ps(v, best), _mm_andnot_ps(_mm_cmpunord_ps(best, best), _mm_cmpunord_ps(v, v)));
      best = _mm_or_ps(_mm_and_ps(take, v), _mm_andnot_ps(take, best));
      const __m128i ti = _mm_castps_si128(take);
      off = _mm_or_si128(_mm_and_si128(ti, offs[k]), _mm_andnot_si128(ti, off));
    }
    _mm_storeu_ps(y + q, best);
    alignas(16) std::int32_t o[4];
    _mm_store_si128(reinterpret_cast<__m128i*>(o), off);
    for (int l = 0; l < 4; ++l) arg[q + l] = base + 2 * (q + l) + o[l];
  }
  return q;
}
#endif

// The common 2x2 / stride 2 / unpadded window: every window lies inside the input, so there are
// no bounds checks (float: four windows per step in SSE2 lanes).
template <typename T>
void maxpool_2x2_plane(const T* xs, T* y, std::int64_t* arg, idx w, idx oh, idx ow) {
  for (idx p = 0; p < oh; ++p) {
    const T* r0 = xs + 2 * p * w;
    const T* r1 = r0 + w;
    T* yp = y + p * ow;
    std::int64_t* ap = arg + p * ow;
    const std::int64_t base = 2 * p * w;
    idx q = 0;
#if defined(__SSE2__)
    if constexpr (std::is_same_v<T, float>) q = max4_rows_sse(r0, r1, yp, ap, base, w, ow);
#endif
    for (; q < ow; ++q) {
      idx off;
      yp[q] = max4(r0[2 * q], r0[2 * q + 1], r1[2 * q], r1[2 * q + 1], w, off);
      ap[q] = base + 2 * q + off;
    }
  }
}

// Every (sample, channel) plane is independent: parallel over planes, serial within a plane, so
// overlapping windows accumulate in the same order for any thread count.
template <typename T>
void maxpool2d_forward(const T* x, T* y, std::int64_t* arg, const Window2d& g, int nthreads) {
  g.validate();
  const idx oh = g.oh(), ow = g.ow(), planes = g.n * g.c;
  [[maybe_unused]] const int nt = threads_for(nthreads, planes, planes * oh * ow * window_area(g));
  const bool two = g.kh == 2 && g.kw == 2 && g.sh == 2 && g.sw == 2 && g.ph == 0 && g.pw == 0 &&
                   g.w < (idx(1) << 30);  // lane offsets up to w + 1 fit in int32
#pragma omp parallel for schedule(static) num_threads(nt)
  for (idx pl = 0; pl < planes; ++pl) {
    const T* xs = x + pl * g.h * g.w;
    if (two) {
      maxpool_2x2_plane(xs, y + pl * oh * ow, arg + pl * oh * ow, g.w, oh, ow);
      continue;
    }
    for (idx p = 0; p < oh; ++p)
      for (idx q = 0; q < ow; ++q) {
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
        y[(pl * oh + p) * ow + q] = best;
        arg[(pl * oh + p) * ow + q] = where;
      }
  }
}

template <typename T>
void maxpool2d_backward(const T* gy, const std::int64_t* arg, T* gx, const Window2d& g,
                        int nthreads) {
  g.validate();
  const idx P = g.oh() * g.ow(), planes = g.n * g.c, S = g.h * g.w;
  [[maybe_unused]] const int nt = threads_for(nthreads, planes, planes * (P + S));
#pragma omp parallel for schedule(static) num_threads(nt)
  for (idx pl = 0; pl < planes; ++pl) {
    T* gxs = gx + pl * S;
    std::fill(gxs, gxs + S, T(0));
    for (idx o = 0; o < P; ++o) {
      const std::int64_t where = arg[pl * P + o];
      if (where >= 0 && where < S) gxs[where] += gy[pl * P + o];
    }
  }
}

template <typename T>
void avgpool2d_forward(const T* x, T* y, const Window2d& g, int nthreads) {
  g.validate();
  const idx oh = g.oh(), ow = g.ow(), planes = g.n * g.c;
  const T scale = T(1) / (static_cast<T>(g.kh) * static_cast<T>(g.kw));  // no int overflow
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
        y[(pl * oh + p) * ow + q] = acc * scale;
      }
  }
}

template <typename T>
void avgpool2d_backward(const T* gy, T* gx, const Window2d& g, int nthreads) {
  g.validate();
  const idx oh = g.oh(), ow = g.ow(), planes = g.n * g.c, S = g.h * g.w;
  const T scale = T(1) / (static_cast<T>(g.kh) * static_cast<T>(g.kw));  // no int overflow
  [[maybe_unused]] const int nt = threads_for(nthreads, planes, planes * oh * ow * window_area(g));
#pragma omp parallel for schedule(static) num_threads(nt)
  for (idx pl = 0; pl < planes; ++pl) {
    T* gxs = gx + pl * S;
    std::fill(gxs, gxs + S, T(0));
    for (idx p = 0; p < oh; ++p)
      for (idx q = 0; q < ow; ++q) {
        const T share = gy[(pl * oh + p) * ow + q] * scale;
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
  std::vector<T, CountingAllocator<T>> all(static_cast<size_t>(nt * w));
  parallel_for(nt, planes, [&](idx pl) {
    T* cols = all.data() + static_cast<idx>(thread_index()) * w;
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
  std::vector<T, CountingAllocator<T>> all(static_cast<size_t>(nt * w));
  parallel_for(nt, planes, [&](idx pl) {
    T* row = all.data() + static_cast<idx>(thread_index()) * w;
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
  template void avgpool2d_forward<T>(const T*, T*, const Window2d&, int);                        \
  template void avgpool2d_backward<T>(const T*, T*, const Window2d&, int);                       \
  template void adaptive_avgpool2d_forward<T>(const T*, T*, idx, idx, idx, idx, idx, int);       \
  template void adaptive_avgpool2d_backward<T>(const T*, T*, idx, idx, idx, idx, idx, int);
RELPROP_INSTANTIATE(float)
RELPROP_INSTANTIATE(double)
#undef RELPROP_INSTANTIATE

}  // namespace relprop

// The 2x2 max pooling of one plane: internals shared by the baseline translation units
// (conv2d.cpp, pooling.cpp).
#pragma once
#include <cstdint>
#include <type_traits>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "relprop/gemm.hpp"

namespace relprop {
namespace detail {

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

// 2x2 / stride 2 / unpadded max pooling of oh x ow windows of the plane xs (rows of w
// elements; no bounds checks: every window lies inside) to y and arg (rows of ow); arg holds
// `base` + the winner's flat index in xs (float: four windows per step in SSE2 lanes).  w must
// be below 2**30 (lane offsets up to w + 1 fit in int32).
template <typename T>
void maxpool_2x2_plane(const T* xs, T* y, std::int64_t* arg, idx w, idx oh, idx ow,
                       std::int64_t base0 = 0) {
  for (idx p = 0; p < oh; ++p) {
    const T* r0 = xs + 2 * p * w;
    const T* r1 = r0 + w;
    T* yp = y + p * ow;
    std::int64_t* ap = arg + p * ow;
    const std::int64_t base = base0 + 2 * p * w;
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

}  // namespace detail
}  // namespace relprop

// AVX-512F vector policies (T, R, W lanes; zero, load, bcast, fma, add, store, load_range,
// load_masked, transpose, store_range) for the kernel templates of gemm_driver.hpp and
// dwconv_kernels.hpp.  Internal linkage: include only from translation units compiled with
// -mavx512f (the per-file flags in CMakeLists.txt).
#pragma once
#include <immintrin.h>

#include "gemm_impl.hpp"

namespace relprop {
namespace detail {
namespace {

// Bits lo <= l < hi of a w-lane mask (lo, hi clamped to [0, w]).
inline __mmask16 range_mask(idx lo, idx hi, int w) {
  const unsigned l = static_cast<unsigned>(lo < 0 ? 0 : lo > w ? w : lo);
  const unsigned h = static_cast<unsigned>(hi < 0 ? 0 : hi > w ? w : hi);
  return static_cast<__mmask16>(((1u << h) - 1u) & ~((1u << l) - 1u));
}

struct F32x16 {
  using T = float;
  using R = __m512;
  static constexpr int W = 16;
  static R zero() { return _mm512_setzero_ps(); }
  static R load(const T* p) { return _mm512_loadu_ps(p); }
  static R bcast(const T* p) { return _mm512_set1_ps(*p); }
  static R fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  static R add(R a, R b) { return _mm512_add_ps(a, b); }
  static void store(T* p, R v) { _mm512_storeu_ps(p, v); }
  static void store_range(T* p, R v, idx n) {  // lanes [0, n) only
    _mm512_mask_storeu_ps(p, range_mask(0, n, W), v);
  }
  static R load_range(const T* p, idx lo, idx hi) {  // masked lanes are not read
    return _mm512_maskz_loadu_ps(range_mask(lo, hi, W), p);
  }
  static R load_masked(const T* p, idx lo, idx hi) { return load_range(p, lo, hi); }
  static void transpose(const T* src, idx ld, T* dst, idx ldd) {  // W x W, by elements
    for (int r = 0; r < W; ++r)
      for (int q = 0; q < W; ++q) dst[q * ldd + r] = src[r * ld + q];
  }
  static R evens(const T* p) {  // p[0], p[2], ..., p[2W - 2] (reads p[0, 2W))
    const __m512i idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    return _mm512_permutex2var_ps(_mm512_loadu_ps(p), idx,
                                  _mm512_loadu_ps(p + W));
  }
};

struct F64x8 {
  using T = double;
  using R = __m512d;
  static constexpr int W = 8;
  static R zero() { return _mm512_setzero_pd(); }
  static R load(const T* p) { return _mm512_loadu_pd(p); }
  static R bcast(const T* p) { return _mm512_set1_pd(*p); }
  static R fma(R a, R b, R c) { return _mm512_fmadd_pd(a, b, c); }
  static R add(R a, R b) { return _mm512_add_pd(a, b); }
  static void store(T* p, R v) { _mm512_storeu_pd(p, v); }
  static void store_range(T* p, R v, idx n) {  // lanes [0, n) only
    _mm512_mask_storeu_pd(p, static_cast<__mmask8>(range_mask(0, n, W)), v);
  }
  static R load_range(const T* p, idx lo, idx hi) {  // masked lanes are not read
    return _mm512_maskz_loadu_pd(static_cast<__mmask8>(range_mask(lo, hi, W)), p);
  }
  static R load_masked(const T* p, idx lo, idx hi) { return load_range(p, lo, hi); }
  static void transpose(const T* src, idx ld, T* dst, idx ldd) {  // W x W, by elements
    for (int r = 0; r < W; ++r)
      for (int q = 0; q < W; ++q) dst[q * ldd + r] = src[r * ld + q];
  }
  static R evens(const T* p) {  // p[0], p[2], ..., p[2W - 2] (reads p[0, 2W))
    const __m512i idx = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
    return _mm512_permutex2var_pd(_mm512_loadu_pd(p), idx,
                                  _mm512_loadu_pd(p + W));
  }
};

}  // namespace
}  // namespace detail
}  // namespace relprop

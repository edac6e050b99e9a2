// AVX-512F vector policies (T, R, W lanes; zero, load, bcast, fma, add, store, load_range,
// load_masked, transpose, store_range) for the kernel templates of gemm_driver.hpp and
// dwconv_kernels.hpp.  Internal linkage: include only from translation units compiled with
// -mavx512f (the per-file flags in CMakeLists.txt).
#pragma once
#include <immintrin.h>

#include "gemm_impl.hpp"

// GCC 12's AVX-512 intrinsics (unpack, shuffle) start from _mm512_undefined_*(), a
// self-initialized variable that -Wuninitialized reports wherever they are inlined.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

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
  static R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  // v where v > 0 or v is NaN, else +0 (relu_forward)
  static R relu(R v) { return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, zero(), _CMP_NLE_UQ), v); }
  // v where x > 0, else +0 (relu_backward)
  static R mask_positive(R x, R v) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, zero(), _CMP_GT_OQ), v);
  }
  static void store(T* p, R v) { _mm512_storeu_ps(p, v); }
  static void store_range(T* p, R v, idx n) {  // lanes [0, n) only
    _mm512_mask_storeu_ps(p, range_mask(0, n, W), v);
  }
  static R load_range(const T* p, idx lo, idx hi) {  // masked lanes are not read
    return _mm512_maskz_loadu_ps(range_mask(lo, hi, W), p);
  }
  static R load_masked(const T* p, idx lo, idx hi) { return load_range(p, lo, hi); }
  // dst[q*ldd + r] = src[r*ld + q] for r, q < 16: pairs, then 4x4 groups within 128-bit
  // lanes, then a 4x4 transpose of the lanes themselves.
  static void transpose(const T* src, idx ld, T* dst, idx ldd) {
    __m512 r[16], t[16];
    for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * ld);
    for (int i = 0; i < 8; ++i) {
      t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // r[4i + m], lane L: column 4L + m of rows 4i .. 4i + 3
    for (int i = 0; i < 4; ++i) {
      r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
      r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
      r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
      r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int m = 0; m < 4; ++m) {
      const __m512 x0 = _mm512_shuffle_f32x4(r[m], r[4 + m], 0x44);
      const __m512 x1 = _mm512_shuffle_f32x4(r[m], r[4 + m], 0xEE);
      const __m512 x2 = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], 0x44);
      const __m512 x3 = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], 0xEE);
      _mm512_storeu_ps(dst + m * ldd, _mm512_shuffle_f32x4(x0, x2, 0x88));
      _mm512_storeu_ps(dst + (4 + m) * ldd, _mm512_shuffle_f32x4(x0, x2, 0xDD));
      _mm512_storeu_ps(dst + (8 + m) * ldd, _mm512_shuffle_f32x4(x1, x3, 0x88));
      _mm512_storeu_ps(dst + (12 + m) * ldd, _mm512_shuffle_f32x4(x1, x3, 0xDD));
    }
  }
  static void zip(T* p, R a, R b) {  // p[2l] = a[l], p[2l + 1] = b[l]
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30,
                                         15, 31);
    _mm512_storeu_ps(p, _mm512_permutex2var_ps(a, lo, b));
    _mm512_storeu_ps(p + W, _mm512_permutex2var_ps(a, hi, b));
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
  static R mul(R a, R b) { return _mm512_mul_pd(a, b); }
  static R relu(R v) { return _mm512_maskz_mov_pd(_mm512_cmp_pd_mask(v, zero(), _CMP_NLE_UQ), v); }
  static R mask_positive(R x, R v) {
    return _mm512_maskz_mov_pd(_mm512_cmp_pd_mask(x, zero(), _CMP_GT_OQ), v);
  }
  static void store(T* p, R v) { _mm512_storeu_pd(p, v); }
  static void store_range(T* p, R v, idx n) {  // lanes [0, n) only
    _mm512_mask_storeu_pd(p, static_cast<__mmask8>(range_mask(0, n, W)), v);
  }
  static R load_range(const T* p, idx lo, idx hi) {  // masked lanes are not read
    return _mm512_maskz_loadu_pd(static_cast<__mmask8>(range_mask(lo, hi, W)), p);
  }
  static R load_masked(const T* p, idx lo, idx hi) { return load_range(p, lo, hi); }
  // dst[q*ldd + r] = src[r*ld + q] for r, q < 8: pairs within 128-bit lanes, then a 4x4
  // transpose of the lanes.
  static void transpose(const T* src, idx ld, T* dst, idx ldd) {
    __m512d r[8], t[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm512_loadu_pd(src + i * ld);
    // t[2i + m], lane L: column 2L + m of rows 2i, 2i + 1
    for (int i = 0; i < 4; ++i) {
      t[2 * i] = _mm512_unpacklo_pd(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm512_unpackhi_pd(r[2 * i], r[2 * i + 1]);
    }
    for (int m = 0; m < 2; ++m) {
      const __m512d x0 = _mm512_shuffle_f64x2(t[m], t[2 + m], 0x44);
      const __m512d x1 = _mm512_shuffle_f64x2(t[m], t[2 + m], 0xEE);
      const __m512d x2 = _mm512_shuffle_f64x2(t[4 + m], t[6 + m], 0x44);
      const __m512d x3 = _mm512_shuffle_f64x2(t[4 + m], t[6 + m], 0xEE);
      _mm512_storeu_pd(dst + m * ldd, _mm512_shuffle_f64x2(x0, x2, 0x88));
      _mm512_storeu_pd(dst + (2 + m) * ldd, _mm512_shuffle_f64x2(x0, x2, 0xDD));
      _mm512_storeu_pd(dst + (4 + m) * ldd, _mm512_shuffle_f64x2(x1, x3, 0x88));
      _mm512_storeu_pd(dst + (6 + m) * ldd, _mm512_shuffle_f64x2(x1, x3, 0xDD));
    }
  }
  static void zip(T* p, R a, R b) {  // p[2l] = a[l], p[2l + 1] = b[l]
    const __m512i lo = _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11);
    const __m512i hi = _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15);
    _mm512_storeu_pd(p, _mm512_permutex2var_pd(a, lo, b));
    _mm512_storeu_pd(p + W, _mm512_permutex2var_pd(a, hi, b));
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

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

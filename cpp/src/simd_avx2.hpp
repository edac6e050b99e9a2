// AVX2 + FMA vector policies (T, R, W lanes; zero, load, bcast, fma, add, store, load_range,
// load_masked, transpose, store_range) for the kernel templates of gemm_driver.hpp and
// dwconv_kernels.hpp.  Internal linkage: include only from translation units compiled with
// -mavx2 -mfma (the per-file flags in CMakeLists.txt).
#pragma once
#include <immintrin.h>

#include "gemm_impl.hpp"

namespace relprop {
namespace detail {
namespace {

struct F32x8 {
  using T = float;
  using R = __m256;
  static constexpr int W = 8;
  static R zero() { return _mm256_setzero_ps(); }
  static R load(const T* p) { return _mm256_loadu_ps(p); }
  static R bcast(const T* p) { return _mm256_broadcast_ss(p); }
  static R fma(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static R add(R a, R b) { return _mm256_add_ps(a, b); }
  static R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  // v where v > 0 or v is NaN, else +0 (relu_forward)
  static R relu(R v) { return _mm256_and_ps(_mm256_cmp_ps(v, zero(), _CMP_NLE_UQ), v); }
  // v where x > 0, else +0 (relu_backward)
  static R mask_positive(R x, R v) { return _mm256_and_ps(_mm256_cmp_ps(x, zero(), _CMP_GT_OQ), v); }
  static void store(T* p, R v) { _mm256_storeu_ps(p, v); }
  // lanes [0, n) only: through a local copy (vmaskmov stores are slow on AMD)
  static void store_range(T* p, R v, idx n) {
    alignas(32) T tmp[W];
    _mm256_store_ps(tmp, v);
    for (idx l = 0; l < n && l < W; ++l) p[l] = tmp[l];
  }
  static __m256i in_range(idx lo, idx hi) {  // lanes lo <= l < hi
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(lo)), lane),
                               _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(hi)), lane));
  }
  static R load_range(const T* p, idx lo, idx hi) {  // masked lanes are not read
    return _mm256_maskload_ps(p, in_range(lo, hi));
  }
  static void zip(T* p, R a, R b) {  // p[2l] = a[l], p[2l + 1] = b[l]
    const __m256 lo = _mm256_unpacklo_ps(a, b), hi = _mm256_unpackhi_ps(a, b);
    _mm256_storeu_ps(p, _mm256_permute2f128_ps(lo, hi, 0x20));
    _mm256_storeu_ps(p + W, _mm256_permute2f128_ps(lo, hi, 0x31));
  }
  static R evens(const T* p) {  // p[0], p[2], ..., p[14] (reads p[0, 16))
    const __m256 a = _mm256_loadu_ps(p), b = _mm256_loadu_ps(p + W);
    const __m256 e = _mm256_shuffle_ps(a, b, 0x88);  // a0 a2 b0 b2 | a4 a6 b4 b6
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), 0xD8));
  }
  // All lanes are read (a plain load and a mask: vmaskmovps is several times slower on AMD).
  static R load_masked(const T* p, idx lo, idx hi) {
    return _mm256_and_ps(_mm256_loadu_ps(p), _mm256_castsi256_ps(in_range(lo, hi)));
  }
  static void transpose(const T* src, idx ld, T* dst, idx ldd) {  // 8 x 8
    __m256 r[8], t[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * ld);
    for (int i = 0; i < 8; i += 2) {
      t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
      r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
      r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
      r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
      r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; ++i) {
      _mm256_storeu_ps(dst + i * ldd, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
      _mm256_storeu_ps(dst + (i + 4) * ldd, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
    }
  }
};

struct F64x4 {
  using T = double;
  using R = __m256d;
  static constexpr int W = 4;
  static R zero() { return _mm256_setzero_pd(); }
  static R load(const T* p) { return _mm256_loadu_pd(p); }
  static R bcast(const T* p) { return _mm256_broadcast_sd(p); }
  static R fma(R a, R b, R c) { return _mm256_fmadd_pd(a, b, c); }
  static R add(R a, R b) { return _mm256_add_pd(a, b); }
  static R mul(R a, R b) { return _mm256_mul_pd(a, b); }
  static R relu(R v) { return _mm256_and_pd(_mm256_cmp_pd(v, zero(), _CMP_NLE_UQ), v); }
  static R mask_positive(R x, R v) { return _mm256_and_pd(_mm256_cmp_pd(x, zero(), _CMP_GT_OQ), v); }
  static void store(T* p, R v) { _mm256_storeu_pd(p, v); }
  // lanes [0, n) only: through a local copy (vmaskmov stores are slow on AMD)
  static void store_range(T* p, R v, idx n) {
    alignas(32) T tmp[W];
    _mm256_store_pd(tmp, v);
    for (idx l = 0; l < n && l < W; ++l) p[l] = tmp[l];
  }
  static __m256i in_range(idx lo, idx hi) {  // lanes lo <= l < hi
    const __m256i lane = _mm256_setr_epi64x(0, 1, 2, 3);
    return _mm256_andnot_si256(_mm256_cmpgt_epi64(_mm256_set1_epi64x(lo), lane),
                               _mm256_cmpgt_epi64(_mm256_set1_epi64x(hi), lane));
  }
  static R load_range(const T* p, idx lo, idx hi) {  // masked lanes are not read
    return _mm256_maskload_pd(p, in_range(lo, hi));
  }
  static void zip(T* p, R a, R b) {  // p[2l] = a[l], p[2l + 1] = b[l]
    const __m256d lo = _mm256_unpacklo_pd(a, b), hi = _mm256_unpackhi_pd(a, b);
    _mm256_storeu_pd(p, _mm256_permute2f128_pd(lo, hi, 0x20));
    _mm256_storeu_pd(p + W, _mm256_permute2f128_pd(lo, hi, 0x31));
  }
  static R evens(const T* p) {  // p[0], p[2], p[4], p[6] (reads p[0, 8))
    const __m256d a = _mm256_loadu_pd(p), b = _mm256_loadu_pd(p + W);
    return _mm256_permute4x64_pd(_mm256_unpacklo_pd(a, b), 0xD8);  // a0 b0 a2 b2 -> a0 a2 b0 b2
  }
  static R load_masked(const T* p, idx lo, idx hi) {  // all lanes are read
    return _mm256_and_pd(_mm256_loadu_pd(p), _mm256_castsi256_pd(in_range(lo, hi)));
  }
  static void transpose(const T* src, idx ld, T* dst, idx ldd) {  // 4 x 4
    const __m256d r0 = _mm256_loadu_pd(src), r1 = _mm256_loadu_pd(src + ld);
    const __m256d r2 = _mm256_loadu_pd(src + 2 * ld), r3 = _mm256_loadu_pd(src + 3 * ld);
    const __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1);
    const __m256d t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
    _mm256_storeu_pd(dst, _mm256_permute2f128_pd(t0, t2, 0x20));
    _mm256_storeu_pd(dst + ldd, _mm256_permute2f128_pd(t1, t3, 0x20));
    _mm256_storeu_pd(dst + 2 * ldd, _mm256_permute2f128_pd(t0, t2, 0x31));
    _mm256_storeu_pd(dst + 3 * ldd, _mm256_permute2f128_pd(t1, t3, 0x31));
  }
};

}  // namespace
}  // namespace detail
}  // namespace relprop

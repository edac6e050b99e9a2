// AVX2 + FMA micro-kernels (compiled with -mavx2 -mfma for this file only; used only where the
// CPU reports both features).  float: 6 x 16 tile in 12 ymm accumulators; double: 6 x 8.
#if defined(RELPROP_HAVE_AVX2)
#include <immintrin.h>

#include "gemm_driver.hpp"

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
  static void store(T* p, R v) { _mm256_storeu_ps(p, v); }
  static __m256i in_range(idx lo, idx hi) {  // lanes lo <= l < hi
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(lo)), lane),
                               _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(hi)), lane));
  }
  static R load_range(const T* p, idx lo, idx hi) {  // masked lanes are not read
    return _mm256_maskload_ps(p, in_range(lo, hi));
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
  static void store(T* p, R v) { _mm256_storeu_pd(p, v); }
  static __m256i in_range(idx lo, idx hi) {  // lanes lo <= l < hi
    const __m256i lane = _mm256_setr_epi64x(0, 1, 2, 3);
    return _mm256_andnot_si256(_mm256_cmpgt_epi64(_mm256_set1_epi64x(lo), lane),
                               _mm256_cmpgt_epi64(_mm256_set1_epi64x(hi), lane));
  }
  static R load_range(const T* p, idx lo, idx hi) {  // masked lanes are not read
    return _mm256_maskload_pd(p, in_range(lo, hi));
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

using KernelF32 = VecKernel<F32x8, 6, 2>;
using KernelF64 = VecKernel<F64x4, 6, 2>;

// 12 independent chains of 8-lane FMAs: enough to fill two FMA pipes of latency up to 6.
double fma_loop(long iters) {
  constexpr int kAcc = 12;
  __m256 acc[kAcc];
  for (int r = 0; r < kAcc; ++r) acc[r] = _mm256_set1_ps(1.0f + 0.001f * static_cast<float>(r));
  const __m256 x = _mm256_set1_ps(0.999f), y = _mm256_set1_ps(0.001f);
  for (long it = 0; it < iters; ++it)
    for (int r = 0; r < kAcc; ++r) acc[r] = _mm256_fmadd_ps(acc[r], x, y);
  __m256 s = acc[0];
  for (int r = 1; r < kAcc; ++r) s = _mm256_add_ps(s, acc[r]);
  alignas(32) float out[8];
  _mm256_store_ps(out, s);
  volatile float sink = out[0];
  (void)sink;
  return 2.0 * 8 * kAcc * static_cast<double>(iters);
}

}  // namespace

namespace avx2 {
// mc x kc panels of A (144 KiB float) stay in a 512 KiB L2, kc x 16 strips of B (16 KiB) in L1.
const GemmImpl<float> f32{Isa::avx2, KernelF32::MR, KernelF32::NR, 144, 256, 2048,
                          &tile<KernelF32>, &pack_a_full<KernelF32>,
                          &pack_b_full<KernelF32>, &fma_loop};
const GemmImpl<double> f64{Isa::avx2, KernelF64::MR, KernelF64::NR, 96, 256, 2048,
                           &tile<KernelF64>, &pack_a_full<KernelF64>,
                           &pack_b_full<KernelF64>, &fma_loop};
}  // namespace avx2

}  // namespace detail
}  // namespace relprop
#endif

// AVX-512F micro-kernels (compiled with -mavx512f for this file only; used only where the CPU
// and the operating system report AVX-512F).  float: 12 x 32 tile in 24 zmm accumulators;
// double: 12 x 16.  Same kernel template as the AVX2 one, with 16-lane registers.
#if defined(RELPROP_HAVE_AVX512)
#include <immintrin.h>

#include "gemm_driver.hpp"

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
  static R load_range(const T* p, idx lo, idx hi) {  // masked lanes are not read
    return _mm512_maskz_loadu_ps(range_mask(lo, hi, W), p);
  }
  static R load_masked(const T* p, idx lo, idx hi) { return load_range(p, lo, hi); }
  static void transpose(const T* src, idx ld, T* dst, idx ldd) {  // W x W, by elements
    for (int r = 0; r < W; ++r)
      for (int q = 0; q < W; ++q) dst[q * ldd + r] = src[r * ld + q];
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
  static R load_range(const T* p, idx lo, idx hi) {  // masked lanes are not read
    return _mm512_maskz_loadu_pd(static_cast<__mmask8>(range_mask(lo, hi, W)), p);
  }
  static R load_masked(const T* p, idx lo, idx hi) { return load_range(p, lo, hi); }
  static void transpose(const T* src, idx ld, T* dst, idx ldd) {  // W x W, by elements
    for (int r = 0; r < W; ++r)
      for (int q = 0; q < W; ++q) dst[q * ldd + r] = src[r * ld + q];
  }
};

using KernelF32 = VecKernel<F32x16, 12, 2>;
using KernelF64 = VecKernel<F64x8, 12, 2>;

// 16 independent chains of 16-lane FMAs.
double fma_loop(long iters) {
  constexpr int kAcc = 16;
  __m512 acc[kAcc];
  for (int r = 0; r < kAcc; ++r) acc[r] = _mm512_set1_ps(1.0f + 0.001f * static_cast<float>(r));
  const __m512 x = _mm512_set1_ps(0.999f), y = _mm512_set1_ps(0.001f);
  for (long it = 0; it < iters; ++it)
    for (int r = 0; r < kAcc; ++r) acc[r] = _mm512_fmadd_ps(acc[r], x, y);
  __m512 s = acc[0];
  for (int r = 1; r < kAcc; ++r) s = _mm512_add_ps(s, acc[r]);
  alignas(64) float out[16];
  _mm512_store_ps(out, s);
  volatile float sink = out[0];
  (void)sink;
  return 2.0 * 16 * kAcc * static_cast<double>(iters);
}

}  // namespace

namespace avx512 {
const GemmImpl<float> f32{Isa::avx512, KernelF32::MR, KernelF32::NR, 144, 256, 2048,
                          &tile<KernelF32>, &pack_a_full<KernelF32>,
                          &pack_b_full<KernelF32>, &fma_loop};
const GemmImpl<double> f64{Isa::avx512, KernelF64::MR, KernelF64::NR, 144, 256, 2048,
                           &tile<KernelF64>, &pack_a_full<KernelF64>,
                           &pack_b_full<KernelF64>, &fma_loop};
}  // namespace avx512

}  // namespace detail
}  // namespace relprop
#endif

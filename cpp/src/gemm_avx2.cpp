// AVX2 + FMA micro-kernels (compiled with -mavx2 -mfma for this file only; used only where the
// CPU reports both features).  float: 6 x 16 tile in 12 ymm accumulators; double: 6 x 8.
#if defined(RELPROP_HAVE_AVX2)
#include <immintrin.h>

#include "gemm_driver.hpp"
#include "simd_avx2.hpp"

namespace relprop {
namespace detail {
namespace {

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
                          &pack_b_full<KernelF32>, &fma_loop,
                          &gemv<KernelF32>};
const GemmImpl<double> f64{Isa::avx2, KernelF64::MR, KernelF64::NR, 96, 256, 2048,
                           &tile<KernelF64>, &pack_a_full<KernelF64>,
                           &pack_b_full<KernelF64>, &fma_loop,
                          &gemv<KernelF64>};
}  // namespace avx2

}  // namespace detail
}  // namespace relprop
#endif

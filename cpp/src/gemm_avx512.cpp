// AVX-512F micro-kernels (compiled with -mavx512f for this file only; used only where the CPU
// and the operating system report AVX-512F).  float: 12 x 32 tile in 24 zmm accumulators;
// double: 12 x 16.  Same kernel template as the AVX2 one, with 16-lane registers.
#if defined(RELPROP_HAVE_AVX512)
#include <immintrin.h>

#include "gemm_driver.hpp"
#include "simd_avx512.hpp"

namespace relprop {
namespace detail {
namespace {

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
                          &pack_b_full<KernelF32>, &fma_loop,
                          &gemv<KernelF32>};
const GemmImpl<double> f64{Isa::avx512, KernelF64::MR, KernelF64::NR, 144, 256, 2048,
                           &tile<KernelF64>, &pack_a_full<KernelF64>,
                           &pack_b_full<KernelF64>, &fma_loop,
                          &gemv<KernelF64>};
}  // namespace avx512

}  // namespace detail
}  // namespace relprop
#endif

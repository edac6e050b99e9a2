// Portable micro-kernels (plain C++, vectorized by the compiler for the baseline instruction
// set): the fallback on any CPU, and the reference the SIMD kernels are tested against.
#include "gemm_driver.hpp"

namespace relprop {
namespace detail {
namespace {

template <typename T>
using Kernel = ScalarKernel<T, 4, 8>;

double fma_loop(long iters) {
  constexpr int kAcc = 32;
  float acc[kAcc];
  for (int r = 0; r < kAcc; ++r) acc[r] = 1.0f + 0.001f * static_cast<float>(r);
  const float x = 0.999f, y = 0.001f;
  for (long it = 0; it < iters; ++it)
    for (int r = 0; r < kAcc; ++r) acc[r] = acc[r] * x + y;
  volatile float sink = 0.0f;
  for (int r = 0; r < kAcc; ++r) sink = sink + acc[r];
  return 2.0 * kAcc * static_cast<double>(iters);
}

}  // namespace

namespace generic {
const GemmImpl<float> f32{Isa::generic, Kernel<float>::MR, Kernel<float>::NR, 128, 256, 2048,
                          &tile<Kernel<float>>, &pack_a_full<Kernel<float>>,
                          &pack_b_full<Kernel<float>>, &fma_loop,
                          &gemv<Kernel<float>>};
const GemmImpl<double> f64{Isa::generic, Kernel<double>::MR, Kernel<double>::NR, 128, 256, 2048,
                           &tile<Kernel<double>>, &pack_a_full<Kernel<double>>,
                           &pack_b_full<Kernel<double>>, &fma_loop,
                          &gemv<Kernel<double>>};
}  // namespace generic

}  // namespace detail
}  // namespace relprop

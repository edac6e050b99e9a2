// Winograd transforms compiled with -mavx2 -mfma (this file only); used only where the CPU
// reports AVX2 and FMA, with the AVX2 GEMM kernels.
#if defined(RELPROP_HAVE_AVX2)
#include "winograd_transforms.hpp"

namespace relprop {
namespace detail {
namespace avx2 {
const WinoKernels<float> wino_f32 = wino_kernels<float>();
const WinoKernels<double> wino_f64 = wino_kernels<double>();
}  // namespace avx2
}  // namespace detail
}  // namespace relprop
#endif

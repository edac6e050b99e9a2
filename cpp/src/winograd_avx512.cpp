// Winograd transforms compiled with -mavx512f (this file only); used only where the CPU and the
// operating system report AVX-512F, with the AVX-512 GEMM kernels.
#if defined(RELPROP_HAVE_AVX512)
#include "winograd_transforms.hpp"

namespace relprop {
namespace detail {
namespace avx512 {
const WinoKernels<float> wino_f32 = wino_kernels<float>();
const WinoKernels<double> wino_f64 = wino_kernels<double>();
}  // namespace avx512
}  // namespace detail
}  // namespace relprop
#endif

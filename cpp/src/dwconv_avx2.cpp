// AVX2 + FMA depthwise-convolution row kernels (compiled with -mavx2 -mfma for this file only;
// used only where the CPU reports both): dwconv_kernels.hpp over simd_avx2.hpp.
#if defined(RELPROP_HAVE_AVX2)
#include "dwconv_kernels.hpp"
#include "simd_avx2.hpp"

namespace relprop {
namespace detail {
namespace avx2 {
const DwImpl<float> dw_f32 = dw_table<F32x8, 8>(Isa::avx2);
const DwImpl<double> dw_f64 = dw_table<F64x4, 8>(Isa::avx2);
}  // namespace avx2
}  // namespace detail
}  // namespace relprop
#endif

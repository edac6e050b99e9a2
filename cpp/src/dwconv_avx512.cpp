// AVX-512F depthwise-convolution row kernels (compiled with -mavx512f for this file only; used
// only where the CPU and the operating system report AVX-512F): dwconv_kernels.hpp over
// simd_avx512.hpp.
#if defined(RELPROP_HAVE_AVX512)
#include "dwconv_kernels.hpp"
#include "simd_avx512.hpp"

namespace relprop {
namespace detail {
namespace avx512 {
const DwImpl<float> dw_f32 = dw_table<F32x16, 8>(Isa::avx512);
const DwImpl<double> dw_f64 = dw_table<F64x8, 8>(Isa::avx512);
}  // namespace avx512
}  // namespace detail
}  // namespace relprop
#endif

// Portable depthwise-convolution row kernels (baseline flags, compiler vector extensions):
// dwconv_kernels.hpp over simd_generic.hpp.
#include "dwconv_kernels.hpp"
#include "simd_generic.hpp"

namespace relprop {
namespace detail {
namespace generic {
const DwImpl<float> dw_f32 = dw_table<PortableVec<float>, 4>(Isa::generic);
const DwImpl<double> dw_f64 = dw_table<PortableVec<double>, 4>(Isa::generic);
}  // namespace generic
}  // namespace detail
}  // namespace relprop

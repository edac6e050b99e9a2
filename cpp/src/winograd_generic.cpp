// Winograd transforms for the baseline instruction set (any x86-64 or other CPU).
#include "winograd_transforms.hpp"

namespace relprop {
namespace detail {
namespace generic {
const WinoKernels<float> wino_f32 = wino_kernels<float>();
const WinoKernels<double> wino_f64 = wino_kernels<double>();
}  // namespace generic
}  // namespace detail
}  // namespace relprop

// AVX2 + FMA activation loops (compiled with -mavx2 -mfma for this file only; used only where the
// CPU reports both): activation_kernels.hpp.
#if defined(RELPROP_HAVE_AVX2)
#include "activation_kernels.hpp"

namespace relprop {
namespace detail {
namespace avx2 {
const ActImpl act_f32 = act_table(Isa::avx2);
}  // namespace avx2
}  // namespace detail
}  // namespace relprop
#endif

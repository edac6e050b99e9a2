// AVX-512F activation loops (compiled with -mavx512f for this file only; used only where the
// CPU and the operating system report AVX-512F): activation_kernels.hpp.
#if defined(RELPROP_HAVE_AVX512)
#include "activation_kernels.hpp"

namespace relprop {
namespace detail {
namespace avx512 {
const ActImpl act_f32 = act_table(Isa::avx512);
}  // namespace avx512
}  // namespace detail
}  // namespace relprop
#endif

// Portable activation loops (baseline flags): activation_kernels.hpp.
#include "activation_kernels.hpp"

namespace relprop {
namespace detail {
namespace generic {
const ActImpl act_f32 = act_table(Isa::generic);
}  // namespace generic
}  // namespace detail
}  // namespace relprop

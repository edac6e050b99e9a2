// Internals of the activation kernels (activation.cpp): the per-ISA float loops and their table,
// chosen at run time with the GEMM's instruction set (relprop/cpu.hpp).  The loops are those of
// activation_kernels.hpp, compiled by activation_generic.cpp, activation_avx2.cpp and
// activation_avx512.cpp with their units' flags.
#pragma once
#include "gemm_impl.hpp"

namespace relprop {
namespace detail {

struct ActImpl {
  Isa isa;
  // y[i] = act(x[i]) for i < n, act the activation numbered op (activation_math.hpp's Act)
  void (*forward)(int op, const float* x, float* y, idx n);
  // gx[i] = g[i] * act'(x[i]) for i < n
  void (*backward)(int op, const float* g, const float* x, float* gx, idx n);
  // The exponentials of a softmax row, in place: s[j] = exp(s[j] * scale - m) for j < n with
  // m = max_j s[j] * scale (returned); a NaN stays NaN (attention.cpp normalizes the row)
  float (*softmax_exp)(float* s, idx n, float scale);
};

namespace generic {
extern const ActImpl act_f32;
}
namespace avx2 {
extern const ActImpl act_f32;
}
namespace avx512 {
extern const ActImpl act_f32;
}

// The loops of the active ISA (see relprop/cpu.hpp).
const ActImpl& active_act();

}  // namespace detail
}  // namespace relprop

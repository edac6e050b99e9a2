// The float loops of the activation kernels, compiled once per ISA (activation_generic.cpp,
// activation_avx2.cpp, activation_avx512.cpp): one `omp simd` loop per activation over the
// scalar functions of activation_math.hpp, which the compiler vectorizes with the unit's
// instruction set, and the exponentials of a softmax row (attention.cpp).  Internal linkage
// (see gemm_driver.hpp).
#pragma once
#include "activation_impl.hpp"
#include "activation_math.hpp"

namespace relprop {
namespace detail {
namespace {

template <Act op>
void act_forward_loop(const float* x, float* y, idx n) {
#pragma omp simd
  for (idx i = 0; i < n; ++i) y[i] = act_forward<float>(op, x[i]);
}

template <Act op>
void act_backward_loop(const float* g, const float* x, float* gx, idx n) {
#pragma omp simd
  for (idx i = 0; i < n; ++i) gx[i] = act_backward<float>(op, g[i], x[i]);
}

// The loop of `op`: Body<Act::...>::run(args...) for the activation numbered op (checked by the
// caller).
template <template <Act> class Body, class... Args>
void by_op(int op, Args... args) {
  switch (static_cast<Act>(op)) {
    case Act::sigmoid:
      return Body<Act::sigmoid>::run(args...);
    case Act::silu:
      return Body<Act::silu>::run(args...);
    case Act::tanh:
      return Body<Act::tanh>::run(args...);
    case Act::gelu:
      return Body<Act::gelu>::run(args...);
    case Act::gelu_tanh:
      return Body<Act::gelu_tanh>::run(args...);
    case Act::hardsigmoid:
      return Body<Act::hardsigmoid>::run(args...);
    case Act::hardswish:
      return Body<Act::hardswish>::run(args...);
  }
}

template <Act op>
struct ForwardLoop {
  static void run(const float* x, float* y, idx n) { act_forward_loop<op>(x, y, n); }
};
template <Act op>
struct BackwardLoop {
  static void run(const float* g, const float* x, float* gx, idx n) {
    act_backward_loop<op>(g, x, gx, n);
  }
};

void act_forward_any(int op, const float* x, float* y, idx n) {
  by_op<ForwardLoop>(op, x, y, n);
}
void act_backward_any(int op, const float* g, const float* x, float* gx, idx n) {
  by_op<BackwardLoop>(op, g, x, gx, n);
}

float softmax_exp_loop(float* s, idx n, float scale) {
  float m = -HUGE_VALF;
#pragma omp simd reduction(max : m)
  for (idx j = 0; j < n; ++j) {
    const float v = s[j] * scale;
    m = v > m ? v : m;
  }
#pragma omp simd
  for (idx j = 0; j < n; ++j) {
    const float v = s[j] * scale;
    s[j] = v != v ? v : exp_f(v - m);
  }
  return m;
}

constexpr ActImpl act_table(Isa isa) {
  return ActImpl{isa, act_forward_any, act_backward_any, softmax_exp_loop};
}

}  // namespace
}  // namespace detail
}  // namespace relprop

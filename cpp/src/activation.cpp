// The smooth activations (sigmoid, SiLU, tanh, GELU and its tanh form, hard sigmoid, hard swish)
// and their vector-Jacobian products: float through the active ISA's vectorized loops
// (activation_impl.hpp), double through the C library in the same forms (activation_math.hpp),
// in blocks split over the threads; each element is computed alone, so results do not depend on
// the thread count or the batch.
#include "activation_impl.hpp"
#include "activation_math.hpp"
#include "isa_table.hpp"
#include "relprop/check.hpp"
#include "relprop/kernels.hpp"
#include "relprop/parallel.hpp"

namespace relprop {

namespace detail {

const ActImpl& active_act() { return *isa_table().activation; }

namespace {

constexpr idx kBlock = 8192;  // elements per task
constexpr idx kWork = 16;     // multiply-adds per element, roughly (threads_for's unit)

void check_op(int op, const char* what) {
  RELPROP_CHECK(op >= 0 && op < kActivations, what, ": op must be in [0, ", kActivations,
                "), got ", op);
}

// body(lo, hi) over blocks of kBlock elements, on the threads.
template <class Body>
void for_blocks(idx size, int nthreads, Body body) {
  const idx blocks = (size + kBlock - 1) / kBlock;
  parallel_for(threads_for(nthreads, blocks, size * kWork), blocks, [&](idx b) {
    const idx lo = b * kBlock;
    body(lo, lo + kBlock < size ? lo + kBlock : size);
  });
}

}  // namespace
}  // namespace detail

template <>
void activation_forward<float>(const float* x, float* y, idx size, int op, int nthreads) {
  detail::check_op(op, "activation_forward");
  const detail::ActImpl& impl = detail::active_act();
  detail::for_blocks(size, nthreads,
                     [&](idx lo, idx hi) { impl.forward(op, x + lo, y + lo, hi - lo); });
}

template <>
void activation_backward<float>(const float* g, const float* x, float* gx, idx size, int op,
                                int nthreads) {
  detail::check_op(op, "activation_backward");
  const detail::ActImpl& impl = detail::active_act();
  detail::for_blocks(size, nthreads, [&](idx lo, idx hi) {
    impl.backward(op, g + lo, x + lo, gx + lo, hi - lo);
  });
}

template <>
void activation_forward<double>(const double* x, double* y, idx size, int op, int nthreads) {
  detail::check_op(op, "activation_forward");
  const auto act = static_cast<detail::Act>(op);
  detail::for_blocks(size, nthreads, [&](idx lo, idx hi) {
    for (idx i = lo; i < hi; ++i) y[i] = detail::act_forward<double>(act, x[i]);
  });
}

template <>
void activation_backward<double>(const double* g, const double* x, double* gx, idx size, int op,
                                 int nthreads) {
  detail::check_op(op, "activation_backward");
  const auto act = static_cast<detail::Act>(op);
  detail::for_blocks(size, nthreads, [&](idx lo, idx hi) {
    for (idx i = lo; i < hi; ++i) gx[i] = detail::act_backward<double>(act, g[i], x[i]);
  });
}

}  // namespace relprop

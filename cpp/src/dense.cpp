// Dense (fully connected) layer: forward and input vector-Jacobian product on the GEMM core,
// with their fused element-wise steps (ReLU, ReLU mask, LRP-epsilon's division and product).
#include <algorithm>

#include "gemm_impl.hpp"
#include "relprop/check.hpp"
#include "relprop/gemm.hpp"
#include "relprop/kernels.hpp"

namespace relprop {

namespace {

// C (m, n) = A (m, k) . B (k, n), A and C row-major, B = w at strides (rsb, csb) or packed.
template <typename T>
detail::GemmArgs<T> dense_args(idx m, idx n, idx k, const T* a, const T* w, idx rsb, idx csb,
                               const T* packed, T* c) {
  detail::GemmArgs<T> g = packed ? detail::gemm_args(m, n, k, a, k, 1, c, n)
                                 : detail::gemm_args(m, n, k, a, k, 1, w, rsb, csb, c, n);
  g.bpack = packed;
  return g;
}

// The GEMM gx (n, in) = A (n, out) . w (out, in) of the backward pass (A = g, or r / stab(z)).
template <typename T>
detail::GemmArgs<T> backward_args(const T* a, const T* w, T* gx, idx n, idx in, idx out,
                                  const T* packed) {
  return dense_args(n, in, out, a, w, in, 1, packed, gx);
}

}  // namespace

template <typename T>
void dense_forward(const T* x, const T* w, const T* b, T* y, idx n, idx in, idx out,
                   int nthreads, const T* packed, bool relu) {
  // y (n, out) = x (n, in) . w^T (in, out) + b: the bias is each column's init, as it was
  // when it was copied into y and the products accumulated onto it (b + s_0 + s_1 + ...)
  detail::GemmArgs<T> g = dense_args(n, out, in, x, w, 1, in, packed, y);  // B = w^T
  g.col_bias = b;
  g.epilogue = relu ? detail::Epilogue::relu : detail::Epilogue::none;
  detail::run_gemm(detail::active_gemm<T>(), g, nthreads);
}

template <typename T>
void dense_backward(const T* g, const T* w, T* gx, idx n, idx in, idx out, int nthreads,
                    const T* packed, const T* mask) {
  detail::GemmArgs<T> ga = backward_args(g, w, gx, n, in, out, packed);
  if (mask) {
    ga.epilogue = detail::Epilogue::mask;
    ga.aux = mask;
    ga.ldx = in;
  }
  detail::run_gemm(detail::active_gemm<T>(), ga, nthreads);
}

template <typename T>
void dense_lrp_epsilon(const T* r, const T* z, const T* a, const T* w, T* ra, idx n, idx in,
                       idx out, double eps, int nthreads, const T* packed) {
  // ra = a * ((r / stab(z)) . w): the quotients are made while A is packed, the product in
  // the GEMM's store
  detail::GemmArgs<T> ga = backward_args(r, w, ra, n, in, out, packed);
  ga.a_den = z;
  ga.a_eps = static_cast<T>(eps);
  ga.epilogue = detail::Epilogue::scale;
  ga.aux = a;
  ga.ldx = in;
  detail::run_gemm(detail::active_gemm<T>(), ga, nthreads);
}

template <typename T>
idx dense_packed_size(idx in, idx out, bool forward) {
  return forward ? packed_b_size<T>(in, out) : packed_b_size<T>(out, in);
}

template <typename T>
void dense_pack(const T* w, idx in, idx out, bool forward, T* dst) {
  if (forward)
    pack_b<T>(in, out, w, 1, in, dst);  // B = w^T
  else
    pack_b<T>(out, in, w, in, 1, dst);  // B = w
}

#define RELPROP_INSTANTIATE(T)                                                              \
  template void dense_forward<T>(const T*, const T*, const T*, T*, idx, idx, idx, int,      \
                                 const T*, bool);                                           \
  template void dense_backward<T>(const T*, const T*, T*, idx, idx, idx, int, const T*,     \
                                  const T*);                                                \
  template void dense_lrp_epsilon<T>(const T*, const T*, const T*, const T*, T*, idx, idx,  \
                                     idx, double, int, const T*);                           \
  template idx dense_packed_size<T>(idx, idx, bool);                                        \
  template void dense_pack<T>(const T*, idx, idx, bool, T*);
RELPROP_INSTANTIATE(float)
RELPROP_INSTANTIATE(double)
#undef RELPROP_INSTANTIATE

}  // namespace relprop

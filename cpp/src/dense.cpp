// Dense (fully connected) layer: forward and input vector-Jacobian product on the GEMM core.
#include <algorithm>

#include "relprop/kernels.hpp"

namespace relprop {

template <typename T>
void dense_forward(const T* x, const T* w, const T* b, T* y, idx n, idx in, idx out,
                   int nthreads) {
  if (b) {
    for (idx r = 0; r < n; ++r) std::copy(b, b + out, y + r * out);
  }
  // y (n, out) = x (n, in) . w^T (in, out)
  gemm<T>(n, out, in, x, in, 1, w, 1, in, y, out, b != nullptr, nthreads);
}

template <typename T>
void dense_backward(const T* g, const T* w, T* gx, idx n, idx in, idx out, int nthreads) {
  // gx (n, in) = g (n, out) . w (out, in)
  gemm<T>(n, in, out, g, out, 1, w, in, 1, gx, in, false, nthreads);
}

#define RELPROP_INSTANTIATE(T)                                                         \
  template void dense_forward<T>(const T*, const T*, const T*, T*, idx, idx, idx, int); \
  template void dense_backward<T>(const T*, const T*, T*, idx, idx, idx, int);
RELPROP_INSTANTIATE(float)
RELPROP_INSTANTIATE(double)
#undef RELPROP_INSTANTIATE

}  // namespace relprop

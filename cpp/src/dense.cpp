// Dense (fully connected) layer: forward and input vector-Jacobian product on the GEMM core.
#include <algorithm>

#include "relprop/gemm.hpp"
#include "relprop/kernels.hpp"

namespace relprop {

template <typename T>
void dense_forward(const T* x, const T* w, const T* b, T* y, idx n, idx in, idx out,
                   int nthreads, const T* packed) {
  if (b) {
    for (idx r = 0; r < n; ++r) std::copy(b, b + out, y + r * out);
  }
  // y (n, out) = x (n, in) . w^T (in, out)
  if (packed)
    gemm_packed_b<T>(n, out, in, x, in, 1, packed, y, out, b != nullptr, nthreads);
  else
    gemm<T>(n, out, in, x, in, 1, w, 1, in, y, out, b != nullptr, nthreads);
}

template <typename T>
void dense_backward(const T* g, const T* w, T* gx, idx n, idx in, idx out, int nthreads,
                    const T* packed) {
  // gx (n, in) = g (n, out) . w (out, in)
  if (packed)
    gemm_packed_b<T>(n, in, out, g, out, 1, packed, gx, in, false, nthreads);
  else
    gemm<T>(n, in, out, g, out, 1, w, in, 1, gx, in, false, nthreads);
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

#define RELPROP_INSTANTIATE(T)                                                         \
  template void dense_forward<T>(const T*, const T*, const T*, T*, idx, idx, idx, int,    \
                                 const T*);                                              \
  template void dense_backward<T>(const T*, const T*, T*, idx, idx, idx, int, const T*); \
  template idx dense_packed_size<T>(idx, idx, bool);                                     \
  template void dense_pack<T>(const T*, idx, idx, bool, T*);
RELPROP_INSTANTIATE(float)
RELPROP_INSTANTIATE(double)
#undef RELPROP_INSTANTIATE

}  // namespace relprop

// Element-wise kernels: ReLU and its backward variants, the LRP stabilized division.
#include "relprop/check.hpp"
#include "relprop/kernels.hpp"
#include "relprop/parallel.hpp"

namespace relprop {

template <typename T>
void relu_forward(const T* x, T* y, idx size, int nthreads) {
  const int nt = threads_for(nthreads, size, size);
#pragma omp parallel for simd schedule(static) num_threads(nt)
  for (idx i = 0; i < size; ++i) y[i] = (x[i] > T(0) || x[i] != x[i]) ? x[i] : T(0);  // NaN stays
}

template <typename T>
void relu_backward(const T* g, const T* x, T* gx, idx size, int mode, int nthreads) {
  RELPROP_CHECK(mode >= 0 && mode <= 2, "relu_backward: mode must be 0, 1 or 2, got ", mode);
  const int nt = threads_for(nthreads, size, size);
  if (mode == 0) {
#pragma omp parallel for simd schedule(static) num_threads(nt)
    for (idx i = 0; i < size; ++i) {
      const T gi = g[i];  // loaded unconditionally so that the loop vectorizes
      gx[i] = x[i] > T(0) ? gi : T(0);
    }
  } else if (mode == 1) {
#pragma omp parallel for simd schedule(static) num_threads(nt)
    for (idx i = 0; i < size; ++i) gx[i] = g[i] > T(0) ? g[i] : T(0);
  } else {
#pragma omp parallel for simd schedule(static) num_threads(nt)
    for (idx i = 0; i < size; ++i) {
      const T gi = g[i];
      gx[i] = (x[i] > T(0) && gi > T(0)) ? gi : T(0);
    }
  }
}

template <typename T>
void lrp_divide(const T* r, const T* z, T* s, idx size, double eps, int nthreads) {
  const T e = static_cast<T>(eps);
  const int nt = threads_for(nthreads, size, size);
#pragma omp parallel for simd schedule(static) num_threads(nt)
  for (idx i = 0; i < size; ++i) {
    const T d = z[i] + (z[i] >= T(0) ? e : -e);
    s[i] = d != T(0) ? r[i] / d : T(0);
  }
}

#define RELPROP_INSTANTIATE(T)                                             \
  template void relu_forward<T>(const T*, T*, idx, int);                   \
  template void relu_backward<T>(const T*, const T*, T*, idx, int, int);   \
  template void lrp_divide<T>(const T*, const T*, T*, idx, double, int);
RELPROP_INSTANTIATE(float)
RELPROP_INSTANTIATE(double)
#undef RELPROP_INSTANTIATE

}  // namespace relprop

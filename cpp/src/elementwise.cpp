// Element-wise kernels: ReLU and its backward variants, the LRP stabilized division and the
// stacked shares of the rules on [W+; W-].
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

namespace {
// r / (z + eps * sign(z)), sign(0) = +1; 0 where that denominator is 0.
template <typename T>
inline T stabilized_divide(T r, T z, T eps) {
  const T d = z + (z >= T(0) ? eps : -eps);
  return d != T(0) ? r / d : T(0);
}
}  // namespace

template <typename T>
void lrp_divide(const T* r, const T* z, const T* shift, T* s, idx samples, idx len, double eps,
                int nthreads) {
  const T e = static_cast<T>(eps);
  const idx size = samples * len;
  const int nt = threads_for(nthreads, size, size);
  if (!shift) {
#pragma omp parallel for simd schedule(static) num_threads(nt)
    for (idx i = 0; i < size; ++i) s[i] = stabilized_divide(r[i], z[i], e);
    return;
  }
#pragma omp parallel for collapse(2) schedule(static) num_threads(nt)
  for (idx k = 0; k < samples; ++k)
    for (idx j = 0; j < len; ++j) {
      const idx i = k * len + j;
      s[i] = stabilized_divide(r[i], z[i] - shift[j], e);
    }
}

template <typename T>
void lrp_gamma_shares(const T* r, const T* p, const T* n, const T* z, T* out, idx samples,
                      idx len, double gamma, double eps, int nthreads) {
  const T g1 = static_cast<T>(1 + gamma), e = static_cast<T>(eps);
  const int nt = threads_for(nthreads, samples * len, samples * len);
#pragma omp parallel for collapse(2) schedule(static) num_threads(nt)
  for (idx s = 0; s < samples; ++s)
    for (idx j = 0; j < len; ++j) {
      const idx i = s * len + j;
      const T zi = z ? z[i] : p[i] + n[i];
      const T s1 = zi > T(0) ? stabilized_divide(r[i], g1 * p[i] + n[i], e) : T(0);
      const T s2 = zi < T(0) ? stabilized_divide(r[i], p[i] + g1 * n[i], e) : T(0);
      out[2 * s * len + j] = g1 * s1 + s2;
      out[(2 * s + 1) * len + j] = s1 + g1 * s2;
    }
}

template <typename T>
void lrp_alpha_beta_shares(const T* r, const T* p, const T* n, T* out, idx samples, idx len,
                           double alpha, double beta, double eps, int nthreads) {
  const T a = static_cast<T>(alpha), b = static_cast<T>(beta), e = static_cast<T>(eps);
  const int nt = threads_for(nthreads, samples * len, samples * len);
#pragma omp parallel for collapse(2) schedule(static) num_threads(nt)
  for (idx s = 0; s < samples; ++s)
    for (idx j = 0; j < len; ++j) {
      const idx i = s * len + j;
      out[2 * s * len + j] = a * stabilized_divide(r[i], p[i], e);
      out[(2 * s + 1) * len + j] = -b * stabilized_divide(r[i], n[i], e);
    }
}

#define RELPROP_INSTANTIATE(T)                                                                 \
  template void relu_forward<T>(const T*, T*, idx, int);                                       \
  template void relu_backward<T>(const T*, const T*, T*, idx, int, int);                       \
  template void lrp_divide<T>(const T*, const T*, const T*, T*, idx, idx, double, int);        \
  template void lrp_gamma_shares<T>(const T*, const T*, const T*, const T*, T*, idx, idx,      \
                                    double, double, int);                                     \
  template void lrp_alpha_beta_shares<T>(const T*, const T*, const T*, T*, idx, idx, double,  \
                                         double, double, int);
RELPROP_INSTANTIATE(float)
RELPROP_INSTANTIATE(double)
#undef RELPROP_INSTANTIATE

}  // namespace relprop

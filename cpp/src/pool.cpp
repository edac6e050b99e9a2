// Max and average pooling over 2-D windows, with their vector-Jacobian products.
#include <algorithm>
#include <limits>

#include "relprop/kernels.hpp"
#include "relprop/parallel.hpp"

namespace relprop {

namespace {

// The input rows (columns) under window row p (column q): the window clipped to the input, so
// the loops never visit padding (a huge padded window costs no more than the input it covers).
struct Span {
  idx lo, hi;
};
inline Span rows(const Window2d& g, idx p) {
  const idx top = p * g.sh - g.ph;
  return {std::max<idx>(top, 0), std::min<idx>(top + g.kh, g.h)};
}
inline Span cols(const Window2d& g, idx q) {
  const idx left = q * g.sw - g.pw;
  return {std::max<idx>(left, 0), std::min<idx>(left + g.kw, g.w)};
}
// At most the input elements one window visits (the work of one output).
inline idx window_area(const Window2d& g) { return std::min(g.kh, g.h) * std::min(g.kw, g.w); }

}  // namespace

// Every (sample, channel) plane is independent: parallel over planes, serial within a plane, so
// overlapping windows accumulate in the same order for any thread count.
template <typename T>
void maxpool2d_forward(const T* x, T* y, std::int64_t* arg, const Window2d& g, int nthreads) {
  g.validate();
  const idx oh = g.oh(), ow = g.ow(), planes = g.n * g.c;
  const int nt = threads_for(nthreads, planes, planes * oh * ow * window_area(g));
#pragma omp parallel for schedule(static) num_threads(nt)
  for (idx pl = 0; pl < planes; ++pl) {
    const T* xs = x + pl * g.h * g.w;
    for (idx p = 0; p < oh; ++p)
      for (idx q = 0; q < ow; ++q) {
        T best = -std::numeric_limits<T>::infinity();
        std::int64_t where = -1;
        const Span r = rows(g, p), c = cols(g, q);
        for (idx i = r.lo; i < r.hi; ++i) {
          for (idx j = c.lo; j < c.hi; ++j) {
            const T val = xs[i * g.w + j];
            if (where < 0 || val > best || (val != val && best == best)) {  // first NaN wins
              best = val;
              where = i * g.w + j;
            }
          }
        }
        y[(pl * oh + p) * ow + q] = best;
        arg[(pl * oh + p) * ow + q] = where;
      }
  }
}

template <typename T>
void maxpool2d_backward(const T* gy, const std::int64_t* arg, T* gx, const Window2d& g,
                        int nthreads) {
  g.validate();
  const idx P = g.oh() * g.ow(), planes = g.n * g.c, S = g.h * g.w;
  const int nt = threads_for(nthreads, planes, planes * (P + S));
#pragma omp parallel for schedule(static) num_threads(nt)
  for (idx pl = 0; pl < planes; ++pl) {
    T* gxs = gx + pl * S;
    std::fill(gxs, gxs + S, T(0));
    for (idx o = 0; o < P; ++o) {
      const std::int64_t where = arg[pl * P + o];
      if (where >= 0 && where < S) gxs[where] += gy[pl * P + o];
    }
  }
}

template <typename T>
void avgpool2d_forward(const T* x, T* y, const Window2d& g, int nthreads) {
  g.validate();
  const idx oh = g.oh(), ow = g.ow(), planes = g.n * g.c;
  const T scale = T(1) / (static_cast<T>(g.kh) * static_cast<T>(g.kw));  // no int overflow
  const int nt = threads_for(nthreads, planes, planes * oh * ow * window_area(g));
#pragma omp parallel for schedule(static) num_threads(nt)
  for (idx pl = 0; pl < planes; ++pl) {
    const T* xs = x + pl * g.h * g.w;
    for (idx p = 0; p < oh; ++p)
      for (idx q = 0; q < ow; ++q) {
        T acc = 0;
        const Span r = rows(g, p), c = cols(g, q);
        for (idx i = r.lo; i < r.hi; ++i)
          for (idx j = c.lo; j < c.hi; ++j) acc += xs[i * g.w + j];
        y[(pl * oh + p) * ow + q] = acc * scale;
      }
  }
}

template <typename T>
void avgpool2d_backward(const T* gy, T* gx, const Window2d& g, int nthreads) {
  g.validate();
  const idx oh = g.oh(), ow = g.ow(), planes = g.n * g.c, S = g.h * g.w;
  const T scale = T(1) / (static_cast<T>(g.kh) * static_cast<T>(g.kw));  // no int overflow
  const int nt = threads_for(nthreads, planes, planes * oh * ow * window_area(g));
#pragma omp parallel for schedule(static) num_threads(nt)
  for (idx pl = 0; pl < planes; ++pl) {
    T* gxs = gx + pl * S;
    std::fill(gxs, gxs + S, T(0));
    for (idx p = 0; p < oh; ++p)
      for (idx q = 0; q < ow; ++q) {
        const T share = gy[(pl * oh + p) * ow + q] * scale;
        const Span r = rows(g, p), c = cols(g, q);
        for (idx i = r.lo; i < r.hi; ++i)
          for (idx j = c.lo; j < c.hi; ++j) gxs[i * g.w + j] += share;
      }
  }
}

#define RELPROP_INSTANTIATE(T)                                                                   \
  template void maxpool2d_forward<T>(const T*, T*, std::int64_t*, const Window2d&, int);         \
  template void maxpool2d_backward<T>(const T*, const std::int64_t*, T*, const Window2d&, int);  \
  template void avgpool2d_forward<T>(const T*, T*, const Window2d&, int);                        \
  template void avgpool2d_backward<T>(const T*, T*, const Window2d&, int);
RELPROP_INSTANTIATE(float)
RELPROP_INSTANTIATE(double)
#undef RELPROP_INSTANTIATE

}  // namespace relprop

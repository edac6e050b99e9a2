// Depthwise convolution (groups == c_in, channel multiplier m = c_out / c_in) as a direct
// kernel, not a GEMM: every pass over one plane is a sum of shifted copies of a zero-padded
// buffer the driver builds for that plane, computed by the ISA's row kernel (dwconv_impl.hpp)
// with vectors along the contiguous rows and the outputs in registers.
//
// Forward, stride (sh, sw): the padded input xp (xp[i, j] = x[i - ph, j - pw], 0 outside) is
// split into phase planes P_ab[r, c] = xp[r*sh + a, c*sw + b] of width Wq, so that
//   y[p, q] = b + sum_{u, v} w[u, v] * P_ab[p + (u*dh)/sh, q + (v*dw)/sw],
//   (a, b) = ((u*dh) % sh, (v*dw) % sw),
// a contiguous shifted row per tap for any stride and dilation (stride 1: one plane, xp).
// Backward (w.r.t. x): gx[i, j] sums w[u, v] * gy[p, q] over p*sh + u*dh = i + ph,
// q*sw + v*dw = j + pw; the rows i + ph = R*sh + alpha of one phase (alpha, beta) take only the
// taps with (u*dh) % sh = alpha and (v*dw) % sw = beta, each a shifted row of gy:
//   G_ab[R, C] = sum w[u, v] * gy[R - (u*dh)/sh, C - (v*dw)/sw]
// (gy zero-padded in a buffer), and gx interleaves the phases (stride 1: gx = G, the
// correlation with the flipped kernel).  A channel's m output planes are taps of one sum.
//
// Threads take whole (sample, channel) planes; each output is summed in tap order (bias
// first), so results do not depend on the thread count or the batch.  Planes whose rows are
// shorter than half a vector are computed as one long row over the buffer's full width, and
// the columns past the output's are dropped.
#include <algorithm>
#include <vector>

#include "dwconv_impl.hpp"
#include "relprop/check.hpp"
#include "relprop/kernels.hpp"
#include "relprop/parallel.hpp"

namespace relprop {

namespace detail {
template <typename T>
const DwImpl<T>& active_dwconv();

template <>
const DwImpl<float>& active_dwconv<float>() {
  switch (active_isa()) {
#if defined(RELPROP_HAVE_AVX512)
    case Isa::avx512:
      return avx512::dw_f32;
#endif
#if defined(RELPROP_HAVE_AVX2)
    case Isa::avx2:
      return avx2::dw_f32;
#endif
    default:
      return generic::dw_f32;
  }
}

template <>
const DwImpl<double>& active_dwconv<double>() {
  switch (active_isa()) {
#if defined(RELPROP_HAVE_AVX512)
    case Isa::avx512:
      return avx512::dw_f64;
#endif
#if defined(RELPROP_HAVE_AVX2)
    case Isa::avx2:
      return avx2::dw_f64;
#endif
    default:
      return generic::dw_f64;
  }
}
}  // namespace detail

namespace {

using detail::DwImpl;
using detail::DwTap;

// floor(a / b) for b > 0 and any sign of a
inline idx floor_div(idx a, idx b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
inline idx ceil_div(idx a, idx b) { return -floor_div(-a, b); }

// The columns c of a phase row whose source column c*stride + off lies in [0, len):
// [lo, hi), clamped to [0, n).
inline void inside(idx n, idx stride, idx off, idx len, idx& lo, idx& hi) {
  lo = std::min(n, std::max<idx>(0, ceil_div(-off, stride)));
  hi = std::max(lo, std::min(n, ceil_div(len - off, stride)));
}

// Slack past every buffer of rows of `width`, read (never used) by the row kernels' last
// vectors: past a buffer's last row they read at most a row and a vector.
template <typename T>
idx slack(const DwImpl<T>& impl, idx width) {
  return width + 2 * impl.w;
}


// Per-thread scratch of `size` elements whose zeros (padding) are written once per call: the
// buffers' layout is the same for every plane of a call, and each plane overwrites only the
// elements inside the image.  `fresh` has one flag per thread of the call.
template <typename T>
T* zeroed_scratch(std::vector<char>& fresh, idx size) {
  T* buf = detail::scratch<T>(2, static_cast<size_t>(size));
  char& f = fresh[static_cast<size_t>(thread_index())];
  if (f) {
    std::fill(buf, buf + size, T(0));
    f = 0;
  }
  return buf;
}

}  // namespace

template <typename T>
void depthwise_forward(const T* x, const T* w, const T* b, T* y, T* y2, const Window2d& g,
                       idx c_out, idx split, int nthreads) {
  g.validate();
  const idx C = g.c;
  RELPROP_CHECK(c_out % C == 0 && split % C == 0 && split > 0 && split <= c_out,
                "depthwise: c_out=", c_out, " and split=", split, " must be multiples of c_in=", C);
  if (g.n == 0) return;
  const auto& impl = detail::active_dwconv<T>();
  const idx oh = g.oh(), ow = g.ow(), khw = g.kh * g.kw;
  const idx Hq = oh + (g.dh * (g.kh - 1)) / g.sh, Wq = ow + (g.dw * (g.kw - 1)) / g.sw;
  // phase planes in use (a, b) -> index, and the taps in (u, v) order
  std::vector<idx> phase(static_cast<size_t>(g.sh * g.sw), -1);
  idx nph = 0;
  for (idx u = 0; u < g.kh; ++u)
    for (idx v = 0; v < g.kw; ++v) {
      idx& p = phase[static_cast<size_t>(((u * g.dh) % g.sh) * g.sw + (v * g.dw) % g.sw)];
      if (p < 0) p = nph++;
    }
  const idx plane = Hq * Wq + slack(impl, Wq);
  std::vector<DwTap> taps;
  for (idx u = 0; u < g.kh; ++u)
    for (idx v = 0; v < g.kw; ++v) {
      const idx p = phase[static_cast<size_t>(((u * g.dh) % g.sh) * g.sw + (v * g.dw) % g.sw)];
      taps.push_back({p * plane + ((u * g.dh) / g.sh) * Wq + (v * g.dw) / g.sw, u * g.kw + v});
    }
  // the part of each phase plane inside the image: rows [r0, r1) x columns [c0, c1)
  struct Part {
    idx p, r0, r1, c0, c1, src;  // src: offset in x of element (r0, c0)
  };
  std::vector<Part> parts;
  for (idx a = 0; a < g.sh; ++a)
    for (idx bb = 0; bb < g.sw; ++bb) {
      Part pt{phase[static_cast<size_t>(a * g.sw + bb)], 0, 0, 0, 0, 0};
      if (pt.p < 0) continue;
      inside(Hq, g.sh, a - g.ph, g.h, pt.r0, pt.r1);
      inside(Wq, g.sw, bb - g.pw, g.w, pt.c0, pt.c1);
      pt.src = (pt.r0 * g.sh + a - g.ph) * g.w + pt.c0 * g.sw + bb - g.pw;
      if (pt.r1 > pt.r0 && pt.c1 > pt.c0) parts.push_back(pt);
    }
  // short rows: one long row over the phase planes' full width into `tmp`, then cropped
  const bool flat = 2 * ow <= impl.w && Wq > ow;
  const idx tmp_size = flat ? oh * Wq : 0;
  const idx m1 = split / C, m2 = (c_out - split) / C, planes = g.n * C;
  const idx in_plane = g.h * g.w, out_plane = oh * ow;
  const int nt = threads_for(nthreads, planes, planes * (c_out / C) * out_plane * khw);
  std::vector<char> fresh(static_cast<size_t>(nt), 1);
  parallel_for(nt, planes, [&](idx t) {
    const idx s = t / C, c = t % C;
    T* buf = zeroed_scratch<T>(fresh, nph * plane + tmp_size);
    const T* xs = x + t * in_plane;
    for (const Part& pt : parts)
      impl.gather(buf + pt.p * plane + pt.r0 * Wq + pt.c0, Wq, xs + pt.src, g.sh * g.w,
                  pt.r1 - pt.r0, pt.c1 - pt.c0, g.sw);
    T* tmp = buf + nph * plane;
    const auto one = [&](idx o, T* out) {
      const T bias = b ? b[o] : T(0);
      if (!flat) {
        impl.rows(out, ow, oh, ow, buf, Wq, taps.data(), khw, w + o * khw, bias);
        return;
      }
      impl.rows(tmp, 0, 1, oh * Wq, buf, 0, taps.data(), khw, w + o * khw, bias);
      impl.gather(out, ow, tmp, Wq, oh, ow, 1);
    };
    for (idx k = 0; k < m1; ++k) one(c * m1 + k, y + ((s * split) + c * m1 + k) * out_plane);
    for (idx k = 0; k < m2; ++k)
      one(split + c * m2 + k, y2 + ((s * (c_out - split)) + c * m2 + k) * out_plane);
  });
}

template <typename T>
void depthwise_backward(const T* gy, const T* w, T* gx, const Window2d& g, idx c_out,
                        int nthreads) {
  g.validate();
  const idx C = g.c;
  RELPROP_CHECK(c_out % C == 0, "depthwise: c_out=", c_out, " must be a multiple of c_in=", C);
  if (g.n == 0) return;
  const auto& impl = detail::active_dwconv<T>();
  const idx oh = g.oh(), ow = g.ow(), khw = g.kh * g.kw, m = c_out / C;
  const idx Fu = (g.dh * (g.kh - 1)) / g.sh, Fv = (g.dw * (g.kw - 1)) / g.sw;
  const idx Rn = ceil_div(g.ph + g.h, g.sh), Cn = ceil_div(g.pw + g.w, g.sw);
  const idx Hg = Rn + Fu, Wg = Cn + Fv;
  const idx plane = Hg * Wg + slack(impl, Wg);
  // per output phase (alpha, beta): its taps (k, u, v in order), rows [r0, r1), cols [c0, c1)
  struct Phase {
    idx alpha, beta, r0, r1, c0, c1, first, count;
  };
  std::vector<Phase> phases;
  std::vector<DwTap> taps;
  bool all_covered = true;  // every gx element lies in a phase that has taps
  idx max_cells = 0;
  for (idx al = 0; al < g.sh; ++al)
    for (idx be = 0; be < g.sw; ++be) {
      Phase ph{al, be, 0, 0, 0, 0, static_cast<idx>(taps.size()), 0};
      inside(Rn, g.sh, al - g.ph, g.h, ph.r0, ph.r1);
      inside(Cn, g.sw, be - g.pw, g.w, ph.c0, ph.c1);
      if (ph.r1 <= ph.r0 || ph.c1 <= ph.c0) continue;  // no gx element in this phase
      for (idx k = 0; k < m; ++k)
        for (idx u = 0; u < g.kh; ++u)
          for (idx v = 0; v < g.kw; ++v) {
            if ((u * g.dh) % g.sh != al || (v * g.dw) % g.sw != be) continue;
            taps.push_back({k * plane + (Fu - (u * g.dh) / g.sh) * Wg + (Fv - (v * g.dw) / g.sw),
                            k * khw + u * g.kw + v});
          }
      ph.count = static_cast<idx>(taps.size()) - ph.first;
      if (ph.count == 0) {
        all_covered = false;
        continue;
      }
      phases.push_back(ph);
      max_cells = std::max(max_cells, (ph.r1 - ph.r0) * Wg);
    }
  const bool unit = g.sh == 1 && g.sw == 1;
  const bool flat = unit && 2 * g.w <= impl.w && Wg > g.w;
  // stride > 1 (or flat): one phase at a time into tmp (rows of Wg), then scattered into gx
  const idx tmp_size = (unit && !flat) ? 0 : max_cells;
  const idx planes = g.n * C, in_plane = g.h * g.w, out_plane = oh * ow;
  const idx rows_in = std::min(oh, Rn), cols_in = std::min(ow, Cn);
  const int nt = threads_for(nthreads, planes, planes * m * out_plane * khw);
  std::vector<char> fresh(static_cast<size_t>(nt), 1);
  parallel_for(nt, planes, [&](idx t) {
    const idx s = t / C, c = t % C;
    T* buf = zeroed_scratch<T>(fresh, m * plane + tmp_size);
    for (idx k = 0; k < m; ++k)  // gy plane k of channel c at (Fu, Fv) in the zero-padded buffer
      impl.gather(buf + k * plane + Fu * Wg + Fv, Wg, gy + (s * c_out + c * m + k) * out_plane, ow,
                  rows_in, cols_in, 1);
    T* gxs = gx + t * in_plane;
    T* tmp = buf + m * plane;
    const T* wc = w + c * m * khw;
    if (!all_covered) std::fill(gxs, gxs + in_plane, T(0));
    for (const Phase& ph : phases) {
      const DwTap* tp = taps.data() + ph.first;
      const T* base = buf + ph.r0 * Wg + ph.c0;
      const idx rows = ph.r1 - ph.r0, cols = ph.c1 - ph.c0;
      // first gx element of the phase: row r0*sh + alpha - ph, column c0*sw + beta - pw
      T* dst = gxs + (ph.r0 * g.sh + ph.alpha - g.ph) * g.w + ph.c0 * g.sw + ph.beta - g.pw;
      if (unit && !flat) {
        impl.rows(dst, g.w, rows, cols, base, Wg, tp, ph.count, wc, T(0));
        continue;
      }
      impl.rows(tmp, 0, 1, rows * Wg, base, 0, tp, ph.count, wc, T(0));
      impl.scatter(dst, g.sh * g.w, tmp, Wg, rows, cols, g.sw);
    }
  });
}

template <typename T>
DepthwiseBlocks depthwise_blocks() {
  const auto& impl = detail::active_dwconv<T>();
  return DepthwiseBlocks{impl.w, impl.nb};
}

#define RELPROP_INSTANTIATE(T)                                                                 \
  template DepthwiseBlocks depthwise_blocks<T>();                                              \
  template void depthwise_forward<T>(const T*, const T*, const T*, T*, T*, const Window2d&, idx, \
                                     idx, int);                                                \
  template void depthwise_backward<T>(const T*, const T*, T*, const Window2d&, idx, int);
RELPROP_INSTANTIATE(float)
RELPROP_INSTANTIATE(double)
#undef RELPROP_INSTANTIATE

}  // namespace relprop

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
// Small planes (rows shorter than two vectors, with enough channels to fill a vector) run
// channel-blocked instead: one vector holds one pixel of W channels, the planes of W channels
// are transposed into (and out of) a zero-padded grid of such pixel vectors, and each output
// pixel is the same tap sum over whole vectors (strides and dilations become pixel offsets).
// Otherwise planes whose rows are shorter than half a vector are computed as one long row over
// the buffer's full width, and the columns past the output's are dropped.
//
// Threads take whole (sample, channel) planes, or (sample, block of W channels); each output is
// summed in tap order (bias first), in one lane of one vector, so results do not depend on the
// thread count or the batch.
#include <algorithm>
#include <vector>

#include "dwconv_impl.hpp"
#include "isa_table.hpp"
#include "relprop/check.hpp"
#include "relprop/kernels.hpp"
#include "relprop/parallel.hpp"
#include "relprop/workspace.hpp"

namespace relprop {

namespace detail {
template <typename T>
const DwImpl<T>& active_dwconv() {
  return *isa_table().kernels<T>().depthwise;
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


// A buffer of `size` elements for each of a call's nt threads, allocated before the parallel
// region, whose zeros (padding) are written once per call, by the thread on its first plane: the
// buffers' layout is the same for every plane of a call, and each plane overwrites only the
// elements inside the image.
template <typename T>
class ZeroedBuffers {
 public:
  ZeroedBuffers(idx size, int nt)
      : size_(size), bufs_(size, nt), fresh_(static_cast<size_t>(nt), 1) {}
  T* get() {  // the calling thread's
    const int t = thread_index();
    T* buf = bufs_.part(t);
    if (fresh_[static_cast<size_t>(t)]) {
      std::fill(buf, buf + size_, T(0));
      fresh_[static_cast<size_t>(t)] = 0;
    }
    return buf;
  }

 private:
  idx size_;
  Workspace<T> bufs_;
  std::vector<char> fresh_;
};

// Small planes (rows shorter than two vectors) run channel-blocked: a vector holds one pixel of
// w channels (impl.w), so no lane is wasted on short rows and any stride reads whole vectors;
// the planes are transposed into and out of that layout (impl.cb_pack, cb_unpack).  Chosen
// where its lanes are at least as full as the rows' would be.
template <typename T>
bool channel_blocked(const DwImpl<T>& impl, idx channels, idx width) {
  const idx W = impl.w;
  return width < 2 * W && std::min(channels, W) * ((width + W - 1) / W) >= width;
}

// The phases of the backward pass (see the file comment): gx rows (R*sh + alpha - ph) and
// columns (C*sw + beta - pw) for R in [r0, r1), C in [c0, c1), with the taps of
// tap_list[first, first + count): offsets k*plane + ((Fu - fu)*Wg + (Fv - fv))*unit.
struct Phase {
  idx alpha, beta, r0, r1, c0, c1, first, count;
};

// Builds the phases and their taps for multiplier m, gy buffers of `plane` elements with rows
// of Wg pixels of `unit` elements; returns whether every gx element lies in a phase with taps.
bool backward_phases(const Window2d& g, idx m, idx plane, idx Wg, idx unit,
                     std::vector<Phase>& phases, std::vector<DwTap>& taps) {
  const idx Fu = (g.dh * (g.kh - 1)) / g.sh, Fv = (g.dw * (g.kw - 1)) / g.sw;
  const idx Rn = ceil_div(g.ph + g.h, g.sh), Cn = ceil_div(g.pw + g.w, g.sw);
  bool all_covered = true;
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
            const idx pix = (Fu - (u * g.dh) / g.sh) * Wg + (Fv - (v * g.dw) / g.sw);
            taps.push_back({k * plane + pix * unit, k * g.kh * g.kw + u * g.kw + v});
          }
      ph.count = static_cast<idx>(taps.size()) - ph.first;
      if (ph.count == 0) {
        all_covered = false;
        continue;
      }
      phases.push_back(ph);
    }
  return all_covered;
}

// Channel-blocked forward: per (sample, block of W channels), x's planes transposed into a
// zero-padded (h + 2ph) x (w + 2pw) grid of pixel vectors; each output pixel is a sum of
// tap-shifted pixel vectors (stride and dilation are pixel offsets).
template <typename T>
void forward_blocked(const DwImpl<T>& impl, const T* x, const T* w, const T* b, T* y, T* y2,
                     const Window2d& g, idx c_out, idx split, int nthreads) {
  const idx C = g.c, W = impl.w, oh = g.oh(), ow = g.ow(), P = oh * ow, khw = g.kh * g.kw;
  const idx Hp = g.h + 2 * g.ph, Wp = g.w + 2 * g.pw;
  std::vector<DwTap> taps;
  for (idx u = 0; u < g.kh; ++u)
    for (idx v = 0; v < g.kw; ++v) taps.push_back({(u * g.dh * Wp + v * g.dw) * W, u * g.kw + v});
  const idx xb = Hp * Wp * W, yb = P * W, blocks = (C + W - 1) / W, tasks = g.n * blocks;
  const idx m1 = split / C, m2 = (c_out - split) / C;
  const int nt = threads_for(nthreads, tasks, g.n * c_out * P * khw);
  ZeroedBuffers<T> bufs(xb + yb + khw * W + W, nt);
  parallel_for(nt, tasks, [&](idx t) {
    const idx s = t / blocks, c0 = (t % blocks) * W;
    const int lanes = static_cast<int>(std::min(W, C - c0));
    T* xs = bufs.get();
    T* ys = xs + xb;
    T* wt = ys + yb;
    T* bias = wt + khw * W;
    impl.cb_pack(xs + (g.ph * Wp + g.pw) * W, Wp * W, x + (s * C + c0) * g.h * g.w, g.h * g.w,
                 g.w, g.h, g.w, lanes);
    // the filters k of a half with multiplier mh: output channel first + (c0 + l)*mh + k
    const auto half = [&](idx mh, idx first, T* out, idx out_channels) {
      for (idx k = 0; k < mh; ++k) {
        for (int l = 0; l < lanes; ++l) {
          const idx o = first + (c0 + l) * mh + k;
          for (idx q = 0; q < khw; ++q) wt[q * W + l] = w[o * khw + q];
          bias[l] = b ? b[o] : T(0);
        }
        impl.cb_rows(ys, ow * W, W, oh, ow, xs, g.sh * Wp * W, g.sw * W, taps.data(), khw, wt,
                     bias);
        impl.cb_unpack(out + (s * out_channels + c0 * mh + k) * P, mh * P, ys, P, lanes);
      }
    };
    half(m1, 0, y, split);
    half(m2, split, y2, c_out - split);
  });
}

// Channel-blocked backward: gy's m planes per channel transposed into zero-padded grids of
// pixel vectors, each phase of gx a sum of tap-shifted pixel vectors (written at the phase's
// pixels of a gx grid), transposed back.
template <typename T>
void backward_blocked(const DwImpl<T>& impl, const T* gy, const T* w, T* gx, const Window2d& g,
                      idx c_out, int nthreads) {
  const idx C = g.c, W = impl.w, m = c_out / C, khw = g.kh * g.kw;
  const idx oh = g.oh(), ow = g.ow(), P = oh * ow, S = g.h * g.w;
  const idx Fu = (g.dh * (g.kh - 1)) / g.sh, Fv = (g.dw * (g.kw - 1)) / g.sw;
  const idx Rn = ceil_div(g.ph + g.h, g.sh), Cn = ceil_div(g.pw + g.w, g.sw);
  const idx Wg = Cn + Fv, plane = (Rn + Fu) * Wg * W;
  std::vector<Phase> phases;
  std::vector<DwTap> taps;
  const bool all_covered = backward_phases(g, m, plane, Wg, W, phases, taps);
  const idx rows_in = std::min(oh, Rn), cols_in = std::min(ow, Cn);
  const idx blocks = (C + W - 1) / W, tasks = g.n * blocks;
  const int nt = threads_for(nthreads, tasks, g.n * c_out * P * khw);
  ZeroedBuffers<T> bufs(m * plane + S * W + m * khw * W + W, nt);
  parallel_for(nt, tasks, [&](idx t) {
    const idx s = t / blocks, c0 = (t % blocks) * W;
    const int lanes = static_cast<int>(std::min(W, C - c0));
    T* gb = bufs.get();
    T* xg = gb + m * plane;
    T* wt = xg + S * W;
    const T* zero = wt + m * khw * W;  // never written: zeros
    for (idx k = 0; k < m; ++k) {
      impl.cb_pack(gb + k * plane + (Fu * Wg + Fv) * W, Wg * W, gy + (s * c_out + c0 * m + k) * P,
                   m * P, ow, rows_in, cols_in, lanes);
      for (int l = 0; l < lanes; ++l)
        for (idx q = 0; q < khw; ++q) wt[(k * khw + q) * W + l] = w[((c0 + l) * m + k) * khw + q];
    }
    if (!all_covered) std::fill(xg, xg + S * W, T(0));
    for (const Phase& ph : phases) {
      const idx i0 = ph.r0 * g.sh + ph.alpha - g.ph, j0 = ph.c0 * g.sw + ph.beta - g.pw;
      impl.cb_rows(xg + (i0 * g.w + j0) * W, g.sh * g.w * W, g.sw * W, ph.r1 - ph.r0,
                   ph.c1 - ph.c0, gb + (ph.r0 * Wg + ph.c0) * W, Wg * W, W,
                   taps.data() + ph.first, ph.count, wt, zero);
    }
    impl.cb_unpack(gx + (s * C + c0) * S, S, xg, S, lanes);
  });
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
  if (channel_blocked(impl, C, ow)) {
    forward_blocked(impl, x, w, b, y, y2, g, c_out, split, nthreads);
    return;
  }
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
  ZeroedBuffers<T> bufs(nph * plane + tmp_size, nt);
  parallel_for(nt, planes, [&](idx t) {
    const idx s = t / C, c = t % C;
    T* buf = bufs.get();
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
  if (channel_blocked(impl, C, g.w)) {
    backward_blocked(impl, gy, w, gx, g, c_out, nthreads);
    return;
  }
  const idx Fu = (g.dh * (g.kh - 1)) / g.sh, Fv = (g.dw * (g.kw - 1)) / g.sw;
  const idx Rn = ceil_div(g.ph + g.h, g.sh), Cn = ceil_div(g.pw + g.w, g.sw);
  const idx Hg = Rn + Fu, Wg = Cn + Fv;
  const idx plane = Hg * Wg + slack(impl, Wg);
  std::vector<Phase> phases;
  std::vector<DwTap> taps;
  const bool all_covered = backward_phases(g, m, plane, Wg, 1, phases, taps);
  idx max_cells = 0;
  for (const Phase& ph : phases) max_cells = std::max(max_cells, (ph.r1 - ph.r0) * Wg);
  const bool unit = g.sh == 1 && g.sw == 1;
  const bool flat = unit && 2 * g.w <= impl.w && Wg > g.w;
  // stride > 1 (or flat): one phase at a time into tmp (rows of Wg), then scattered into gx
  // (stride 2 along rows: two phases, whose columns interleave)
  const idx tmp_size = (unit && !flat) ? 0 : (g.sw == 2 ? 2 : 1) * max_cells;
  const idx planes = g.n * C, in_plane = g.h * g.w, out_plane = oh * ow;
  const idx rows_in = std::min(oh, Rn), cols_in = std::min(ow, Cn);
  const int nt = threads_for(nthreads, planes, planes * m * out_plane * khw);
  ZeroedBuffers<T> bufs(m * plane + tmp_size, nt);
  parallel_for(nt, planes, [&](idx t) {
    const idx s = t / C, c = t % C;
    T* buf = bufs.get();
    for (idx k = 0; k < m; ++k)  // gy plane k of channel c at (Fu, Fv) in the zero-padded buffer
      impl.gather(buf + k * plane + Fu * Wg + Fv, Wg, gy + (s * c_out + c * m + k) * out_plane, ow,
                  rows_in, cols_in, 1);
    T* gxs = gx + t * in_plane;
    T* tmp = buf + m * plane;
    const T* wc = w + c * m * khw;
    if (!all_covered) std::fill(gxs, gxs + in_plane, T(0));
    // the phase's values, in rows of Wg, at out
    const auto compute = [&](const Phase& ph, T* out) {
      impl.rows(out, 0, 1, (ph.r1 - ph.r0) * Wg, buf + ph.r0 * Wg + ph.c0, 0,
                taps.data() + ph.first, ph.count, wc, T(0));
    };
    for (size_t k = 0; k < phases.size(); ++k) {
      const Phase& ph = phases[k];
      const idx rows = ph.r1 - ph.r0, cols = ph.c1 - ph.c0;
      // first gx element of the phase: row r0*sh + alpha - ph, column c0*sw + beta - pw
      const idx i0 = ph.r0 * g.sh + ph.alpha - g.ph, j0 = ph.c0 * g.sw + ph.beta - g.pw;
      if (unit && !flat) {
        impl.rows(gxs + i0 * g.w + j0, g.w, rows, cols, buf + ph.r0 * Wg + ph.c0, Wg,
                  taps.data() + ph.first, ph.count, wc, T(0));
        continue;
      }
      if (g.sw == 2 && k + 1 < phases.size() && phases[k + 1].alpha == ph.alpha) {
        // columns 2i (phase a) and 2i + 1 (phase b) of the same gx rows: interleaved in vectors
        const Phase& other = phases[++k];
        const Phase& a = j0 == 0 ? ph : other;
        const Phase& b = j0 == 0 ? other : ph;
        compute(a, tmp);
        compute(b, tmp + max_cells);
        impl.zip(gxs + i0 * g.w, g.sh * g.w, tmp, tmp + max_cells, Wg, rows, a.c1 - a.c0,
                 b.c1 - b.c0);
        continue;
      }
      compute(ph, tmp);
      impl.scatter(gxs + i0 * g.w + j0, g.sh * g.w, tmp, Wg, rows, cols, g.sw);
    }
  });
}

#define RELPROP_INSTANTIATE(T)                                                                 \
  template void depthwise_forward<T>(const T*, const T*, const T*, T*, T*, const Window2d&, idx, \
                                     idx, int);                                                \
  template void depthwise_backward<T>(const T*, const T*, T*, const Window2d&, idx, int);
RELPROP_INSTANTIATE(float)
RELPROP_INSTANTIATE(double)
#undef RELPROP_INSTANTIATE

}  // namespace relprop

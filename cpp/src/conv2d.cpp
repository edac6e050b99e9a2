// Conv2d's kernels, each running the algorithm it is given (relprop/plan.hpp chooses it): on the
// GEMM core as an implicit GEMM: per sample (and group), y (c_out/G, oh*ow) =
// W_g (c_out/G, K) times the im2col matrix of the group's input channels (K, oh*ow),
// K = c_in/G*kh*kw.  The weights are packed once per call for all samples (one packed block
// per group); the im2col matrix is never stored: the GEMM packs its panels straight from the
// image, with dilated taps (gemm1x1: 1x1 stride-1 unpadded convolutions read x as a plain
// matrix).  The bias is added in the GEMM's epilogue.  Depthwise convolutions (G = c_in) run
// the direct kernels of dwconv.cpp, Winograd the kernels of winograd.cpp.
//
// Backward (w.r.t. x): flipped: with stride 1 and padding <= dilation*(kernel size - 1) it is
// itself a convolution, of gy with the flipped, transposed kernel, the same dilation and
// padding dilation*(kernel - 1) - padding, on the same implicit GEMM; col2im: cols = W_g^T gy_g
// per sample and group, scattered back by col2im.
//
// Threads split the (groups x samples x pixel strips) range and, when that is too short, the
// output channels, into one rectangle per thread; every output element is reduced in the same
// order for any thread count.
#include <algorithm>
#include <cstdint>
#include <utility>

#include "gemm_impl.hpp"
#include "maxpool_2x2.hpp"
#include "relprop/check.hpp"
#include "relprop/kernels.hpp"
#include "relprop/parallel.hpp"
#include "relprop/plan.hpp"
#include "relprop/winograd.hpp"
#include "relprop/workspace.hpp"

namespace relprop {

void Window2d::validate() const {
  RELPROP_CHECK(n >= 0 && c > 0 && h > 0 && w > 0, "window input shape must be positive, got (",
                n, ", ", c, ", ", h, ", ", w, ")");
  RELPROP_CHECK(kh > 0 && kw > 0, "kernel size must be positive, got (", kh, ", ", kw, ")");
  RELPROP_CHECK(sh > 0 && sw > 0, "stride must be positive, got (", sh, ", ", sw, ")");
  RELPROP_CHECK(ph >= 0 && pw >= 0, "padding must be non-negative, got (", ph, ", ", pw, ")");
  RELPROP_CHECK(dh > 0 && dw > 0, "dilation must be positive, got (", dh, ", ", dw, ")");
  constexpr idx kMax = (idx(1) << 31) - 1;  // keeps h + 2 * ph and every window index in range
  RELPROP_CHECK(h <= kMax && w <= kMax && kh <= kMax && kw <= kMax && sh <= kMax && sw <= kMax &&
                    ph <= kMax && pw <= kMax && dh <= kMax && dw <= kMax,
                "window sizes, strides, paddings and dilations must be below 2**31");
  const idx eh = dh * (kh - 1) + 1, ew = dw * (kw - 1) + 1;  // < 2**62: no overflow
  // ceil mode: the windows may reach past the padding, as long as there is one (torch's rule)
  const idx slack_h = ceil ? sh - 1 : 0, slack_w = ceil ? sw - 1 : 0;
  RELPROP_CHECK(h + 2 * ph + slack_h >= eh && w + 2 * pw + slack_w >= ew, "window (", kh, ", ",
                kw, ")",
                (dh > 1 || dw > 1) ? " dilated to (" : "", (dh > 1 || dw > 1) ? eh : kh,
                (dh > 1 || dw > 1) ? ", " : "", (dh > 1 || dw > 1) ? ew : kw,
                (dh > 1 || dw > 1) ? ")" : "", " larger than the padded input (", h + 2 * ph,
                ", ", w + 2 * pw, ")");
}

namespace {

using detail::GemmArgs;
using detail::GemmImpl;
using detail::Im2col;

// n = samples * groups independent GEMMs; product s is group gi = s / samples of sample
// si = s % samples (consecutive products share their packed A):
//   C_s (m, P) = A_gi (m, k) B_s (k, P) [+ bias_gi],
// A_gi packed at apack + gi*a_gstride; B_s the im2col matrix of the image at
// x + si*x_stride + gi*x_gstride (im != null) or the row-major matrix there; C_s at
// y + si*y_stride + gi*y_gstride with leading dimension P; rows >= m2 at y2 + si*y2_stride +
// gi*y2_gstride if y2 is set; bias_gi = bias + gi*m.  One group: n = samples.
template <typename T>
struct BatchGemm {
  idx n, m, k, P;
  const T* apack;
  const Im2col* im;
  const T* x;
  idx x_stride;
  T* y;
  idx y_stride;
  const T* bias;
  T* y2 = nullptr;
  idx y2_stride = 0, m2 = 0;
  idx samples = 0;  // 0: n (one group)
  idx a_gstride = 0, x_gstride = 0, y_gstride = 0, y2_gstride = 0;
  detail::Epilogue epi = detail::Epilogue::none;  // on C_s; aux (mask, scale) at y's strides
  const T* aux = nullptr;

  GemmArgs<T> sample(idx s) const {
    const idx per = samples > 0 ? samples : n;
    const idx gi = s / per, si = s % per;
    GemmArgs<T> g;
    g.m = m;
    g.n = P;
    g.k = k;
    g.apack = apack + gi * a_gstride;
    g.b = x + si * x_stride + gi * x_gstride;
    g.im = im;
    g.rsb = P;
    g.csb = 1;
    g.c = y + si * y_stride + gi * y_gstride;
    g.ldc = P;
    g.row_bias = bias ? bias + gi * m : nullptr;
    if (y2) {
      g.c2 = y2 + si * y2_stride + gi * y2_gstride;
      g.m2 = m2;
    }
    g.epilogue = epi;
    if (aux) {
      g.aux = aux + si * y_stride + gi * y_gstride;
      g.ldx = P;
    }
    return g;
  }
};

// Planes of fewer pixels than a strip of the micro-kernel (a deep layer of a small image, down
// to 1x1): the products one per sample would fill their strips mostly with padding and read
// all of A once per sample, so run_gathered takes a group's samples kGatherCols columns at a
// time: their B matrices side by side as one explicit (k, ns * P) matrix, one GEMM on the
// threads, then each sample's C copied to its place.  Each C(i, j) is summed as the per-sample
// tile sums it (the same packed A, the same B values, blocks of steps and micro-kernel: the
// GEMM's order does not depend on the other columns), so the bits are those of the products
// one per sample, whatever the batch.
constexpr idx kGatherCols = 256;

// Sample gs's B (bg.k, bg.P) into columns [j0, j0 + P) of cols (leading dimension ld): its
// im2col matrix (Im2col's definition: row (c, u, v) = c * kh * kw + u * kw + v, column
// oh * ow + ow, zero in the padding), or its row-major matrix.
template <typename T>
void gather_b(const BatchGemm<T>& bg, const GemmArgs<T>& gs, T* cols, idx ld, idx j0) {
  const idx P = bg.P;
  if (!bg.im) {
    for (idx p = 0; p < bg.k; ++p) std::copy(gs.b + p * P, gs.b + (p + 1) * P, cols + p * ld + j0);
    return;
  }
  const Im2col& g = *bg.im;
  for (idx c = 0; c < g.c; ++c)
    for (idx u = 0; u < g.kh; ++u)
      for (idx v = 0; v < g.kw; ++v) {
        T* d = cols + ((c * g.kh + u) * g.kw + v) * ld + j0;
        for (idx oh = 0; oh < g.oh; ++oh) {
          const idx i = oh * g.sh + u * g.dh - g.ph;
          for (idx ow = 0; ow < g.ow; ++ow) {
            const idx j = ow * g.sw + v * g.dw - g.pw;
            d[oh * g.ow + ow] = i >= 0 && i < g.h && j >= 0 && j < g.w
                                    ? gs.b[(c * g.h + i) * g.w + j]
                                    : T(0);
          }
        }
      }
}

template <typename T>
void run_gathered(const GemmImpl<T>& impl, const BatchGemm<T>& bg, int nthreads) {
  const idx per = bg.samples > 0 ? bg.samples : bg.n, P = bg.P, m = bg.m;
  const idx block = std::min(per, std::max<idx>(1, kGatherCols / P));
  Workspace<T> cols(bg.k * block * P), cs(m * block * P), xs(bg.aux ? m * block * P : 0);
  for (idx gi = 0; gi < bg.n / per; ++gi)
    for (idx s0 = 0; s0 < per; s0 += block) {
      const idx ns = std::min(block, per - s0), ld = ns * P;
      parallel_for(threads_for(nthreads, ns, ns * bg.k * P), ns, [&](idx j) {
        const GemmArgs<T> gs = bg.sample(gi * per + s0 + j);
        gather_b(bg, gs, cols.data(), ld, j * P);
        if (bg.aux)
          for (idx i = 0; i < m; ++i)
            std::copy(gs.aux + i * P, gs.aux + (i + 1) * P, xs.data() + i * ld + j * P);
      });
      GemmArgs<T> g = bg.sample(gi * per + s0);  // the group's A, bias and epilogue
      g.n = ld;
      g.b = cols.data();
      g.im = nullptr;
      g.rsb = ld;
      g.csb = 1;
      g.c = cs.data();
      g.ldc = ld;
      g.c2 = nullptr;
      g.m2 = 0;
      if (bg.aux) {
        g.aux = xs.data();
        g.ldx = ld;
      }
      detail::run_gemm(impl, g, nthreads);
      parallel_for(threads_for(nthreads, ns, ns * m * P), ns, [&](idx j) {
        const GemmArgs<T> gs = bg.sample(gi * per + s0 + j);
        for (idx i = 0; i < m; ++i) {
          T* dst = gs.c2 && i >= gs.m2 ? gs.c2 + (i - gs.m2) * P : gs.c + i * P;
          std::copy(cs.data() + i * ld + j * P, cs.data() + i * ld + (j + 1) * P, dst);
        }
      });
    }
}

template <typename T>
void run_batch(const GemmImpl<T>& impl, const BatchGemm<T>& bg, int nthreads) {
  if (bg.n <= 0) return;
  if (bg.P < impl.nr && (bg.samples > 0 ? bg.samples : bg.n) > 1) {
    run_gathered(impl, bg, nthreads);
    return;
  }
  const idx strips = (bg.P + impl.nr - 1) / impl.nr;  // pixel strips per sample
  const idx units = bg.n * strips;
  const int nt = threads_for(nthreads, units * ((bg.m + impl.mr - 1) / impl.mr),
                             bg.n * bg.m * bg.P * bg.k);
  if (nt <= 1) {
    Workspace<T> buf(detail::tile_scratch_size(impl, bg.sample(0), bg.m, bg.P).total());
    for (idx s = 0; s < bg.n; ++s)
      detail::run_tile(impl, bg.sample(s), 0, bg.m, 0, bg.P, buf.data());
    return;
  }
  const detail::Split sp =
      detail::choose_split(bg.m, units * impl.nr, bg.k, impl.mr, impl.nr, nt, false);
  const idx sm = (bg.m + impl.mr - 1) / impl.mr;
  // the pixel strips in chunks, at least about four tasks per thread where there are enough,
  // on a dynamic schedule: a thread the operating system takes away holds up one chunk (every
  // strip's im2col panel is packed by the one task that multiplies it, either way)
  const idx chunks = std::min<idx>(units, std::max<idx>(sp.tn, (4 * nt + sp.tm - 1) / sp.tm));
  const detail::TileScratch ts =
      detail::tile_scratch_size(impl, bg.sample(0), (sm + sp.tm - 1) / sp.tm * impl.mr,
                                std::min(bg.P, (units + chunks - 1) / chunks * impl.nr));
  Workspace<T> buf(ts.total(), nt);
  parallel_for_dynamic(nt, sp.tm * chunks, [&](idx t) {
    idx lo_m, hi_m, u0, u1;
    detail::share(sm, sp.tm, static_cast<int>(t / chunks), lo_m, hi_m);
    detail::share(units, static_cast<int>(chunks), static_cast<int>(t % chunks), u0, u1);
    const idx i0 = lo_m * impl.mr, i1 = std::min(hi_m * impl.mr, bg.m);
    for (idx u = u0; u < u1 && i0 < i1;) {
      const idx s = u / strips, first = u % strips;
      const idx last = std::min(strips, first + (u1 - u));  // strips of sample s in [u0, u1)
      detail::run_tile(impl, bg.sample(s), i0, i1, first * impl.nr,
                       std::min(last * impl.nr, bg.P), buf.part(thread_index()));
      u += last - first;
    }
  });
}

// x[c, i, j] += cols[(c, u, v), (p, q)] for channels c0 <= c < c1 (transpose of im2col, with
// g's stride, padding and dilation); x must be zeroed by the caller.  Each x element sums its
// (u, v) terms in ascending order.
template <typename T>
void col2im(const T* cols, T* x, const Window2d& g, idx c0, idx c1) {
  const idx oh = g.oh(), ow = g.ow(), P = oh * ow;
  for (idx c = c0; c < c1; ++c)
    for (idx u = 0; u < g.kh; ++u)
      for (idx v = 0; v < g.kw; ++v) {
        const T* row = cols + ((c * g.kh + u) * g.kw + v) * P;
        for (idx p = 0; p < oh; ++p) {
          const idx i = p * g.sh + u * g.dh - g.ph;
          if (i < 0 || i >= g.h) continue;
          T* dst = x + (c * g.h + i) * g.w;
          const T* src = row + p * ow;
          for (idx q = 0; q < ow; ++q) {
            const idx j = q * g.sw + v * g.dw - g.pw;
            if (j >= 0 && j < g.w) dst[j] += src[q];
          }
        }
      }
}

// y[i] = epilogue(y[i], aux[i]) for i < size: the fused step where no GEMM stores y (col2im,
// the depthwise kernels), right after y is made, while it is in cache.
template <typename T>
void epilogue_pass(T* y, const T* aux, idx size, detail::Epilogue e) {
  using detail::Epilogue;
  if (e == Epilogue::relu) {
#pragma omp simd
    for (idx i = 0; i < size; ++i) y[i] = detail::epilogue_scalar(Epilogue::relu, y[i], T(0));
  } else if (e == Epilogue::mask) {
#pragma omp simd
    for (idx i = 0; i < size; ++i) y[i] = detail::epilogue_scalar(Epilogue::mask, y[i], aux[i]);
  } else if (e == Epilogue::scale) {
#pragma omp simd
    for (idx i = 0; i < size; ++i) y[i] = detail::epilogue_scalar(Epilogue::scale, y[i], aux[i]);
  }
}

// epilogue_pass over `planes` planes of `plane` elements, in parallel over planes.
template <typename T>
void epilogue_planes(T* y, const T* aux, idx planes, idx plane, detail::Epilogue e,
                     int nthreads) {
  if (e == detail::Epilogue::none) return;
  const int nt = threads_for(nthreads, planes, planes * plane);
  parallel_for(nt, planes, [&](idx t) {
    epilogue_pass(y + t * plane, aux ? aux + t * plane : nullptr, plane, e);
  });
}

// Throws unless `groups` divides c_in and c_out.
void check_groups(const Window2d& g, idx c_out, idx groups) {
  RELPROP_CHECK(groups >= 1, "groups must be positive, got ", groups);
  RELPROP_CHECK(g.c % groups == 0, "groups=", groups, " must divide the ", g.c,
                " input channels");
  RELPROP_CHECK(c_out > 0 && c_out % groups == 0, "groups=", groups, " must divide the ", c_out,
                " output channels");
}

}  // namespace

template <typename T>
idx conv2d_packed_size(const Window2d& g, idx c_out, idx groups, ConvAlgo algo) {
  check_conv_algo(algo, g, c_out, groups, false);
  RELPROP_CHECK(conv_algo_tile(algo) == 0, "Winograd's packing is winograd_pack's");
  if (algo == ConvAlgo::depthwise) return c_out * g.kh * g.kw;
  const idx K = g.c / groups * g.kh * g.kw;
  return groups * detail::active_gemm<T>().packed_a_size(c_out / groups, K);
}

template <typename T>
void conv2d_pack(const T* w, const Window2d& g, idx c_out, idx groups, ConvAlgo algo, T* dst) {
  check_groups(g, c_out, groups);
  check_conv_algo(algo, g, c_out, groups, false);
  if (algo == ConvAlgo::depthwise) {  // the direct kernel reads w as it is
    std::copy(w, w + c_out * g.kh * g.kw, dst);
    return;
  }
  const auto& impl = detail::active_gemm<T>();
  const idx m = c_out / groups, K = g.c / groups * g.kh * g.kw;
  const idx block = impl.packed_a_size(m, K);
  for (idx gi = 0; gi < groups; ++gi) impl.pack_a(impl, w + gi * m * K, K, 1, m, K, dst + gi * block);
}

namespace {

// conv2d_forward_split by gemm, gemm1x1 or depthwise, with an epilogue on y (relu, or none;
// split == c_out for relu).
template <typename T>
void forward_impl(const T* x, const T* w, const T* b, T* y, T* y2, const Window2d& g,
                  idx c_out, idx split, idx groups, ConvAlgo algo, int nthreads, const T* packed,
                  detail::Epilogue epi) {
  g.validate();
  check_groups(g, c_out, groups);
  check_conv_algo(algo, g, c_out, groups, false);
  RELPROP_CHECK(split > 0 && split <= c_out, "split must be in [1, ", c_out, "], got ", split);
  RELPROP_CHECK(split % groups == 0, "split=", split, " must be a multiple of groups=", groups,
                " (both halves are grouped convolutions)");
  if (g.n == 0) return;
  if (algo == ConvAlgo::depthwise) {
    depthwise_forward<T>(x, packed ? packed : w, b, y, y2, g, c_out, split, nthreads);
    epilogue_planes<T>(y, nullptr, g.n * split, g.oh() * g.ow(), epi, nthreads);
    return;
  }
  const auto& impl = detail::active_gemm<T>();
  const idx cig = g.c / groups, K = cig * g.kh * g.kw, P = g.oh() * g.ow();
  const idx m = c_out / groups, m1 = split / groups;
  // Two halves of a grouped convolution: group gi's GEMM runs on the stacked rows
  // [w1_gi; w2_gi] (and biases), copied here into one weight of the grouped layout.
  const bool stack = groups > 1 && split < c_out;
  RELPROP_CHECK(!(stack && packed), "conv2d_forward_split with groups > 1 packs its weights "
                "itself: packed must be null");
  Workspace<T> ws(stack ? c_out * K : 0), bs(stack && b ? c_out : 0);
  if (stack) {
    const idx m2 = m - m1;
    for (idx gi = 0; gi < groups; ++gi) {
      std::copy(w + gi * m1 * K, w + (gi + 1) * m1 * K, ws.data() + gi * m * K);
      std::copy(w + (split + gi * m2) * K, w + (split + (gi + 1) * m2) * K,
                ws.data() + (gi * m + m1) * K);
      if (b) {
        std::copy(b + gi * m1, b + (gi + 1) * m1, bs.data() + gi * m);
        std::copy(b + split + gi * m2, b + split + (gi + 1) * m2, bs.data() + gi * m + m1);
      }
    }
    w = ws.data();
    if (b) b = bs.data();
  }
  Workspace<T> wp(packed ? 0 : conv2d_packed_size<T>(g, c_out, groups, algo));
  if (!packed) {
    conv2d_pack(w, g, c_out, groups, algo, wp.data());
    packed = wp.data();
  }
  Im2col im{cig, g.h, g.w, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.oh(), g.ow()};
  im.dh = g.dh;
  im.dw = g.dw;
  // gemm1x1: a 1x1 stride-1 unpadded convolution multiplies by x itself, a (c_in, h*w) matrix.
  const bool plain = algo == ConvAlgo::gemm1x1;
  BatchGemm<T> bg{g.n * groups, m, K, P, packed, plain ? nullptr : &im,
                  x, g.c * g.h * g.w, y, split * P, b};
  bg.samples = g.n;
  bg.a_gstride = impl.packed_a_size(m, K);
  bg.x_gstride = cig * g.h * g.w;
  bg.y_gstride = m1 * P;
  if (split < c_out) {
    bg.y2 = y2;
    bg.y2_stride = (c_out - split) * P;
    bg.y2_gstride = (m - m1) * P;
    bg.m2 = m1;
  }
  bg.epi = epi;
  run_batch(impl, bg, nthreads);
}

}  // namespace

template <typename T>
void conv2d_forward(const T* x, const T* w, const T* b, T* y, const Window2d& g, idx c_out,
                    idx groups, ConvAlgo algo, int nthreads, const T* packed, bool relu) {
  if (const int tile = conv_algo_tile(algo)) {
    check_conv_algo(algo, g, c_out, groups, false);
    winograd_forward<T>(x, w, b, y, nullptr, g, c_out, c_out, tile, nthreads, packed, 0, relu);
    return;
  }
  forward_impl<T>(x, w, b, y, nullptr, g, c_out, c_out, groups, algo, nthreads, packed,
                  relu ? detail::Epilogue::relu : detail::Epilogue::none);
}

template <typename T>
void conv2d_forward_split(const T* x, const T* w, const T* b, T* y, T* y2, const Window2d& g,
                          idx c_out, idx split, idx groups, ConvAlgo algo, int nthreads,
                          const T* packed) {
  if (const int tile = conv_algo_tile(algo)) {
    check_conv_algo(algo, g, c_out, groups, false);
    winograd_forward<T>(x, w, b, y, y2, g, c_out, split, tile, nthreads, packed);
    return;
  }
  forward_impl<T>(x, w, b, y, y2, g, c_out, split, groups, algo, nthreads, packed,
                  detail::Epilogue::none);
}

// The backward pass multiplies by one of two matrices made from each group's weights w_g:
// flipped (and gemm1x1), the flipped kernel W'[c, o, u, v] = w_g[o, c, kh-1-u, kw-1-v]
// (c_in/G, c_out/G*kh*kw) of the transposed convolution gx = conv(gy, W') (same dilation,
// padding dh*(kh-1)-ph, dw*(kw-1)-pw); col2im, W_g^T (K, c_out/G) into columns that col2im
// adds up.  Depthwise convolutions take neither (dwconv.cpp).
template <typename T>
idx conv2d_backward_packed_size(const Window2d& g, idx c_out, idx groups, ConvAlgo algo) {
  check_conv_algo(algo, g, c_out, groups, true);
  RELPROP_CHECK(conv_algo_tile(algo) == 0, "Winograd's packing is winograd_pack's");
  if (algo == ConvAlgo::depthwise) return c_out * g.kh * g.kw;
  const auto& impl = detail::active_gemm<T>();
  const idx cig = g.c / groups, cog = c_out / groups, K = cig * g.kh * g.kw;
  return groups * (algo == ConvAlgo::col2im ? impl.packed_a_size(K, cog)
                                            : impl.packed_a_size(cig, cog * g.kh * g.kw));
}

template <typename T>
void conv2d_pack_backward(const T* w, const Window2d& g, idx c_out, idx groups, ConvAlgo algo,
                          T* dst) {
  check_groups(g, c_out, groups);
  check_conv_algo(algo, g, c_out, groups, true);
  if (algo == ConvAlgo::depthwise) {
    std::copy(w, w + c_out * g.kh * g.kw, dst);
    return;
  }
  const auto& impl = detail::active_gemm<T>();
  const idx khw = g.kh * g.kw, cig = g.c / groups, cog = c_out / groups, K = cig * khw;
  if (algo == ConvAlgo::col2im) {
    const idx block = impl.packed_a_size(K, cog);
    for (idx gi = 0; gi < groups; ++gi)
      impl.pack_a(impl, w + gi * cog * K, 1, K, K, cog, dst + gi * block);
    return;
  }
  const idx K2 = cog * khw, block = impl.packed_a_size(cig, K2);
  Workspace<T> wt(cig * K2);
  for (idx gi = 0; gi < groups; ++gi) {
    const T* wg = w + gi * cog * K;
    for (idx o = 0; o < cog; ++o)
      for (idx c = 0; c < cig; ++c) {
        const T* src = wg + (o * cig + c) * khw;
        T* d = wt.data() + c * K2 + o * khw;
        for (idx q = 0; q < khw; ++q) d[q] = src[khw - 1 - q];
      }
    impl.pack_a(impl, wt.data(), K2, 1, cig, K2, dst + gi * block);
  }
}

namespace {

// conv2d_backward with the epilogue epi (mask, scale: aux shaped like gx) on gx, by any
// backward algorithm (Winograd's kernels take the epilogue as their mask or their product).
template <typename T>
void backward_impl(const T* gy, const T* w, T* gx, const Window2d& g, idx c_out, idx groups,
                   ConvAlgo algo, int nthreads, const T* packed, detail::Epilogue epi,
                   const T* aux) {
  g.validate();
  check_groups(g, c_out, groups);
  check_conv_algo(algo, g, c_out, groups, true);
  if (g.n == 0) return;
  if (const int tile = conv_algo_tile(algo)) {
    RELPROP_CHECK(epi == detail::Epilogue::none || epi == detail::Epilogue::mask,
                  "Winograd's backward pass takes a mask, not this epilogue");
    winograd_backward<T>(gy, w, gx, g, c_out, tile, nthreads, packed, 0, aux);
    return;
  }
  if (algo == ConvAlgo::depthwise) {
    depthwise_backward<T>(gy, packed ? packed : w, gx, g, c_out, nthreads);
    epilogue_planes<T>(gx, aux, g.n * g.c, g.h * g.w, epi, nthreads);
    return;
  }
  const auto& impl = detail::active_gemm<T>();
  const idx P = g.oh() * g.ow(), S = g.c * g.h * g.w, khw = g.kh * g.kw;
  const idx cig = g.c / groups, cog = c_out / groups, K = cig * khw;
  Workspace<T> wp(packed ? 0 : conv2d_backward_packed_size<T>(g, c_out, groups, algo));
  if (!packed) {
    conv2d_pack_backward(w, g, c_out, groups, algo, wp.data());
    packed = wp.data();
  }
  if (algo != ConvAlgo::col2im) {  // flipped, gemm1x1
    Im2col im{cog, g.oh(), g.ow(), g.kh, g.kw, 1, 1, g.dh * (g.kh - 1) - g.ph,
              g.dw * (g.kw - 1) - g.pw, g.h, g.w};
    im.dh = g.dh;
    im.dw = g.dw;
    const bool plain = algo == ConvAlgo::gemm1x1;
    BatchGemm<T> bg{g.n * groups, cig, cog * khw, g.h * g.w, packed, plain ? nullptr : &im,
                    gy, c_out * P, gx, S, nullptr};
    bg.samples = g.n;
    bg.a_gstride = impl.packed_a_size(cig, cog * khw);
    bg.x_gstride = cog * P;
    bg.y_gstride = cig * g.h * g.w;
    bg.epi = epi;
    bg.aux = aux;
    run_batch(impl, bg, nthreads);
    return;
  }
  // Per (sample, group) unit u = gi * n + s: cols (K, P) = W_g^T (K, c_out/G) gy_u (c_out/G, P),
  // then col2im into the group's channels; units in parallel, or the GEMM and then col2im
  // (over channels) in parallel when there are few units.
  const idx units = g.n * groups, block = impl.packed_a_size(K, cog), plane = g.h * g.w;
  const auto unit = [&](idx u) {
    const idx gi = u / g.n, s = u % g.n;
    BatchGemm<T> one{1, K, cog, P, packed + gi * block, nullptr, gy + s * c_out * P + gi * cog * P,
                     0, nullptr, 0, nullptr};
    return std::make_pair(one, gx + s * S + gi * cig * plane);
  };
  const int nt = threads_for(nthreads, units * K, units * P * K * cog);
  if (nt > 1 && units >= nt) {
    // one cols buffer and the GEMM's packing buffers per thread, allocated here, outside the
    // parallel region
    Workspace<T> all_cols(K * P, nt);
    Workspace<T> tiles(detail::tile_scratch_size(impl, unit(0).first.sample(0), K, P).total(), nt);
    parallel_for(nt, units, [&](idx u) {
      T* cols = all_cols.part(thread_index());
      auto [one, gxu] = unit(u);
      one.y = cols;
      detail::run_tile(impl, one.sample(0), 0, K, 0, P, tiles.part(thread_index()));
      std::fill(gxu, gxu + cig * plane, T(0));
      col2im(cols, gxu, g, 0, cig);
      if (aux) epilogue_pass(gxu, aux + (gxu - gx), cig * plane, epi);
    });
    return;
  }
  Workspace<T> cols(K * P);
  for (idx u = 0; u < units; ++u) {
    auto [one, gxu] = unit(u);
    one.y = cols.data();
    run_batch(impl, one, nthreads);
    [[maybe_unused]] const int ntc = threads_for(nthreads, cig, K * P);
#pragma omp parallel for schedule(static) num_threads(ntc)
    for (idx c = 0; c < cig; ++c) {
      std::fill(gxu + c * plane, gxu + (c + 1) * plane, T(0));
      col2im(cols.data(), gxu, g, c, c + 1);
      if (aux) epilogue_pass(gxu + c * plane, aux + (gxu - gx) + c * plane, plane, epi);
    }
  }
}

}  // namespace

template <typename T>
void conv2d_backward(const T* gy, const T* w, T* gx, const Window2d& g, idx c_out, idx groups,
                     ConvAlgo algo, int nthreads, const T* packed, const T* mask) {
  backward_impl<T>(gy, w, gx, g, c_out, groups, algo, nthreads, packed,
                   mask ? detail::Epilogue::mask : detail::Epilogue::none, mask);
}

// ---------------------------------------------------------------------------------------------
// Fused: convolution + bias + ReLU + 2x2 max pooling (the pooled layer's forward pass), the
// backward pass from the pooled gradient, LRP-epsilon.

namespace {

// Throws unless the 2x2 pooling of the output of g can be made: output width below 2**30 (the
// pooling kernel's lane offsets).
void check_pool(const Window2d& g) {
  RELPROP_CHECK(g.ow() < (idx(1) << 30), "2x2 max pooling needs an output width below 2**30, got ",
                g.ow());
}

}  // namespace

template <typename T>
void conv2d_forward_relu_maxpool(const T* x, const T* w, const T* b, T* pooled,
                                 std::int64_t* arg, const Window2d& g, idx c_out, idx groups,
                                 ConvAlgo algo, int nthreads, const T* packed, idx block_tiles) {
  g.validate();
  check_groups(g, c_out, groups);
  check_conv_algo(algo, g, c_out, groups, false);
  check_pool(g);
  if (const int tile = conv_algo_tile(algo)) {
    winograd_forward_relu_maxpool<T>(x, w, b, pooled, arg, g, c_out, tile, nthreads, packed,
                                     block_tiles);
    return;
  }
  const idx oh = g.oh(), ow = g.ow(), ph = oh / 2, pw = ow / 2, P = oh * ow;
  if (g.n == 0 || ph == 0 || pw == 0) return;
  if (groups > 1) {
    // grouped and depthwise: the convolution with its ReLU into a workspace, then the pooling
    // plane by plane (the same arithmetic, unfused)
    Workspace<T> y(g.n * c_out * P);
    forward_impl<T>(x, w, b, y.data(), nullptr, g, c_out, c_out, groups, algo, nthreads, packed,
                    detail::Epilogue::relu);
    const int nt = threads_for(nthreads, g.n * c_out, g.n * c_out * P);
    parallel_for(nt, g.n * c_out, [&](idx t) {
      detail::maxpool_2x2_plane(y.data() + t * P, pooled + t * ph * pw, arg + t * ph * pw, ow,
                                ph, pw);
    });
    return;
  }
  const auto& impl = detail::active_gemm<T>();
  const idx K = g.c * g.kh * g.kw, m = c_out;
  Workspace<T> wp(packed ? 0 : conv2d_packed_size<T>(g, c_out, 1, algo));
  if (!packed) {
    conv2d_pack(w, g, c_out, 1, algo, wp.data());
    packed = wp.data();
  }
  Im2col im{g.c, g.h, g.w, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, oh, ow};
  im.dh = g.dh;
  im.dw = g.dw;
  const bool plain = algo == ConvAlgo::gemm1x1;
  // Bands of rb pooled rows (2 rb rows of the convolution, in the trailing odd row, which no
  // window reads, none): a thread computes a band's channels [i0, i1) into its scratch (bias
  // and ReLU in the GEMM's store), then pools them from there: the convolution's output never
  // goes to memory.  A band's scratch is kept within kBandBytes (it stays in L2) but holds at
  // least one pooled row; the band size depends on the layer and one sample's size only.
  constexpr idx kBandBytes = idx(256) << 10;
  const idx row_bytes = 2 * ow * m * idx(sizeof(T));
  const idx rb = std::min(ph, std::max<idx>(1, kBandBytes / row_bytes));
  const idx bands = (ph + rb - 1) / rb, units = g.n * bands, band_px = 2 * rb * ow;
  const int nt = threads_for(nthreads, units * ((m + impl.mr - 1) / impl.mr),
                             g.n * m * 2 * ph * ow * K);
  const detail::Split sp = nt <= 1 ? detail::Split{}
                                   : detail::choose_split(m, units * impl.nr, K, impl.mr,
                                                          impl.nr, nt, false);
  const idx sm = (m + impl.mr - 1) / impl.mr;
  const idx rows_max = (sm + sp.tm - 1) / sp.tm * impl.mr;
  // bands in chunks on a dynamic schedule, as run_batch (a scratch per thread)
  const int ntt = sp.tm * sp.tn;
  const idx chunks = std::min<idx>(units, std::max<idx>(sp.tn, (4 * ntt + sp.tm - 1) / sp.tm));
  Workspace<T> bands_out(rows_max * band_px, ntt);
  GemmArgs<T> shape;  // the GEMM of a band, as far as its packing buffers go
  shape.k = K;
  shape.apack = packed;
  shape.im = plain ? nullptr : &im;
  shape.csb = 1;
  Workspace<T> tiles(detail::tile_scratch_size(impl, shape, rows_max, band_px).total(), ntt);
  parallel_for_dynamic(ntt, sp.tm * chunks, [&](idx t) {
    idx lo_m, hi_m, u0, u1;
    detail::share(sm, sp.tm, static_cast<int>(t / chunks), lo_m, hi_m);
    detail::share(units, static_cast<int>(chunks), static_cast<int>(t % chunks), u0, u1);
    const idx i0 = lo_m * impl.mr, i1 = std::min(hi_m * impl.mr, m);
    T* c = bands_out.part(thread_index());
    for (idx u = u0; u < u1 && i0 < i1; ++u) {
      const idx si = u / bands, band = u % bands;
      const idx p0 = band * rb, prows = std::min(rb, ph - p0), r0 = 2 * p0;
      const idx px = 2 * prows * ow;
      Im2col imb = im;  // the band's rows: output rows r0, r0 + 1, ... as rows 0, 1, ...
      imb.oh = 2 * prows;
      imb.ph = im.ph - r0 * im.sh;
      GemmArgs<T> ga;
      ga.m = m;
      ga.n = px;
      ga.k = K;
      ga.apack = packed;
      ga.b = x + si * g.c * g.h * g.w + (plain ? r0 * ow : 0);
      ga.im = plain ? nullptr : &imb;
      ga.rsb = P;
      ga.csb = 1;
      ga.c = ga.c2 = c;  // rows from m2 = i0 on go to c2 + (i - i0) * ldc
      ga.m2 = i0;
      ga.ldc = px;
      ga.row_bias = b;
      ga.epilogue = detail::Epilogue::relu;
      detail::run_tile(impl, ga, i0, i1, 0, px, tiles.part(thread_index()));
      for (idx i = i0; i < i1; ++i) {
        const idx at = (si * m + i) * ph * pw + p0 * pw;
        detail::maxpool_2x2_plane(c + (i - i0) * px, pooled + at, arg + at, ow, prows, pw,
                                  r0 * ow);
      }
    }
  });
}

template <typename T>
void conv2d_backward_pooled(const T* gp, const std::int64_t* arg, const T* pooled, const T* w,
                            T* gx, const Window2d& g, idx c_out, idx groups, ConvAlgo algo,
                            int nthreads, const T* packed, const T* mask) {
  g.validate();
  check_groups(g, c_out, groups);
  check_conv_algo(algo, g, c_out, groups, true);
  check_pool(g);
  if (const int tile = conv_algo_tile(algo)) {
    winograd_backward_pooled<T>(gp, arg, pooled, w, gx, g, c_out, tile, nthreads, packed, mask);
    return;
  }
  if (g.n == 0) return;
  const idx oh = g.oh(), ow = g.ow();
  // the convolution's output gradient: the pooled gradient at the winners (where pooled > 0:
  // the ReLU between the convolution and the pooling), 0 elsewhere; then the backward pass
  // with the ReLU mask of the layer below in its store
  Workspace<T> gy(g.n * c_out * oh * ow);
  const Window2d pg{g.n, c_out, oh, ow, 2, 2, 2, 2, 0, 0};
  maxpool2d_backward_masked<T>(gp, arg, pooled, gy.data(), pg, nthreads);
  backward_impl<T>(gy.data(), w, gx, g, c_out, groups, algo, nthreads, packed,
                   mask ? detail::Epilogue::mask : detail::Epilogue::none, mask);
}

template <typename T>
void conv2d_lrp_epsilon(const T* r, const T* z, const T* a, const T* w, T* ra, const Window2d& g,
                        idx c_out, idx groups, ConvAlgo algo, double eps, int nthreads,
                        const T* packed) {
  g.validate();
  check_groups(g, c_out, groups);
  check_conv_algo(algo, g, c_out, groups, true);
  if (const int tile = conv_algo_tile(algo)) {
    winograd_lrp_epsilon<T>(r, z, a, w, ra, g, c_out, tile, eps, nthreads, packed);
    return;
  }
  if (g.n == 0) return;
  // s = r / stab(z) into a workspace (one pass), then the backward pass with the product by
  // a in its store
  const idx len = c_out * g.oh() * g.ow();
  Workspace<T> s(g.n * len);
  lrp_divide<T>(r, z, nullptr, s.data(), g.n, len, eps, nthreads);
  backward_impl<T>(s.data(), w, ra, g, c_out, groups, algo, nthreads, packed,
                   detail::Epilogue::scale, a);
}

#define RELPROP_INSTANTIATE(T)                                                                 \
  template void conv2d_forward_relu_maxpool<T>(const T*, const T*, const T*, T*, std::int64_t*, \
                                               const Window2d&, idx, idx, ConvAlgo, int,        \
                                               const T*, idx);                                  \
  template void conv2d_backward_pooled<T>(const T*, const std::int64_t*, const T*, const T*, T*, \
                                          const Window2d&, idx, idx, ConvAlgo, int, const T*,    \
                                          const T*);                                            \
  template void conv2d_lrp_epsilon<T>(const T*, const T*, const T*, const T*, T*,               \
                                      const Window2d&, idx, idx, ConvAlgo, double, int,         \
                                      const T*);                                                \
  template idx conv2d_packed_size<T>(const Window2d&, idx, idx, ConvAlgo);                      \
  template void conv2d_pack<T>(const T*, const Window2d&, idx, idx, ConvAlgo, T*);               \
  template void conv2d_forward<T>(const T*, const T*, const T*, T*, const Window2d&, idx, idx,  \
                                  ConvAlgo, int, const T*, bool);                               \
  template void conv2d_forward_split<T>(const T*, const T*, const T*, T*, T*, const Window2d&,  \
                                        idx, idx, idx, ConvAlgo, int, const T*);                \
  template void conv2d_backward<T>(const T*, const T*, T*, const Window2d&, idx, idx, ConvAlgo, \
                                   int, const T*, const T*);                                    \
  template idx conv2d_backward_packed_size<T>(const Window2d&, idx, idx, ConvAlgo);             \
  template void conv2d_pack_backward<T>(const T*, const Window2d&, idx, idx, ConvAlgo, T*);
RELPROP_INSTANTIATE(float)
RELPROP_INSTANTIATE(double)
#undef RELPROP_INSTANTIATE

}  // namespace relprop

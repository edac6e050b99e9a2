// Winograd convolution F(m x m, 3x3) on the GEMM core (scheme in winograd_impl.hpp): weight
// packing and the driver (blocks of tiles, threads), compiled for the baseline instruction
// set; the input and output transforms come from the per-ISA units (winograd_transforms.hpp).
//
// Threads split blocks of tiles or output channels (see run).  Every value is computed by
// exactly one task, in an order fixed by the geometry (a tile's transforms use its own data;
// each GEMM column is reduced over c_in in the GEMM core's fixed order, whichever rows and
// columns a task holds), so results are bitwise identical for any thread count, block size
// and batch.
#include "relprop/winograd.hpp"

#include <algorithm>
#include <atomic>
#include <exception>

#include "gemm_driver.hpp"  // block_k: the GEMM core's blocks of steps (packed-B layout)
#include "relprop/check.hpp"
#include "relprop/parallel.hpp"
#include "relprop/workspace.hpp"
#include "winograd_impl.hpp"
#include "isa_table.hpp"

namespace relprop {

namespace {

using detail::GemmArgs;
using detail::GemmImpl;
using detail::WinoGeom;
using detail::WinoKernels;

// G of F(m x m, 3x3) (alpha x 3), for the points of winograd_transforms.hpp: for F(4x4) the
// points 0, 1, -1, 1/2, -2 (and infinity), G[j] = (1, p, p^2) / prod_{q != p} (p - q).
constexpr double kG4[6][3] = {{1.0, 0.0, 0.0},
                              {1.0 / 3, 1.0 / 3, 1.0 / 3},
                              {-1.0 / 3, 1.0 / 3, -1.0 / 3},
                              {-16.0 / 15, -8.0 / 15, -4.0 / 15},
                              {1.0 / 15, -2.0 / 15, 4.0 / 15},
                              {0.0, 0.0, 1.0}};
constexpr double kG2[4][3] = {{1.0, 0.0, 0.0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0.0, 0.0, 1.0}};

inline int alpha_of(int tile) { return tile + 2; }

template <typename T>
const WinoKernels<T>& active_wino() {
  return *detail::isa_table().kernels<T>().winograd;
}

void check_tile(int tile) {
  RELPROP_CHECK(tile == 2 || tile == 4, "Winograd tile must be 2 or 4 (F(2x2, 3x3) or ",
                "F(4x4, 3x3)), got ", tile);
}

void check_window(const Window2d& g) {
  g.validate();
  RELPROP_CHECK(g.kh == 3 && g.kw == 3, "Winograd convolution needs a 3x3 kernel, got (", g.kh,
                ", ", g.kw, ")");
  RELPROP_CHECK(g.sh == 1 && g.sw == 1, "Winograd convolution needs stride 1, got (", g.sh, ", ",
                g.sw, ")");
  RELPROP_CHECK(g.ph <= 2 && g.pw <= 2, "Winograd convolution needs padding 0, 1 or 2, got (",
                g.ph, ", ", g.pw, ")");
}

// Tiles per block (the GEMMs' n), a multiple of the micro-kernel's nr.  Each block reads all of
// the transformed weights U (alpha^2 c_in c_out values) and writes and reads its transformed
// inputs V and products M (alpha^2 (c_in + c_out) nb values): nb = c_in c_out / (c_in + c_out)
// balances the two, which measured best (1 thread, AVX-512: 64 channels flat from 32 to 128
// tiles, 128 best at 32-64, 256 at 128-256, 512 at 256: 25.5 ms against 27.8 at 128 and 29.1
// at 96 for 512 -> 512 on 28x28, batch 4, where U (38 MB) comes from memory for every block).
// At least 64 tiles (fixed costs per block), at most what keeps a thread's V and M within
// kMaxBlockBytes (512 -> 512 channels: 224 tiles on AVX-512).
constexpr idx kMaxBlockBytes = idx(32) << 20;

template <typename T>
idx choose_block_tiles(const WinoGeom& g, const GemmImpl<T>& impl) {
  const idx a2 = alpha_of(g.m) * alpha_of(g.m), nr = impl.nr;
  const idx balance = std::max<idx>(g.c_in * g.c_out / (g.c_in + g.c_out), 64);
  const idx cap = kMaxBlockBytes / (a2 * (g.c_in + g.c_out) * idx(sizeof(T)));
  const idx tiles = (balance + nr - 1) / nr * nr;
  return tiles <= cap ? tiles : std::max<idx>(nr, cap / nr * nr);
}

// The elements of a block's transformed inputs V (c_in x nb, padded to the micro-kernel's nr)
// and products M (c_out x nb), alpha^2 of each: a thread's buffers, with the transforms' work.
template <typename T>
idx block_v_size(const WinoGeom& g, const GemmImpl<T>& impl, idx nb) {
  return alpha_of(g.m) * alpha_of(g.m) * detail::wino_stride(g.c_in * ((nb + impl.nr - 1) /
                                                                        impl.nr * impl.nr));
}

inline idx block_m_size(const WinoGeom& g, idx nb) {
  return alpha_of(g.m) * alpha_of(g.m) * detail::wino_stride(g.c_out * nb);
}

// out (y and y2, or the pooled output; see WinoOut) = the convolution described by g of x with
// the packed transformed weights u.
//
// Threads, in one parallel region without barriers inside:
//  - with at least two blocks per thread (and room for a block's buffers per thread), the
//    blocks are tasks: a thread runs a whole block (input transform, GEMMs, output transform)
//    in its own buffers;
//  - otherwise (few tiles: small images, large channel counts) each thread takes a share of
//    the output channels (whole strips of the GEMM's mr rows) for every block: it transforms
//    the block's input itself (the input transform costs a few percent of a GEMM with many
//    output channels, less than a barrier on a busy machine), runs its rows of the GEMMs and
//    transforms its channels' output.
// Either way each value is computed by one task in the same order.
template <typename T>
void run(const WinoGeom& g, const T* x, const T* u, const detail::WinoOut<T>& out,
         int nthreads, idx block_tiles) {
  const GemmImpl<T>& impl = detail::active_gemm<T>();
  const WinoKernels<T>& kern = active_wino<T>();
  RELPROP_CHECK(impl.nr <= detail::kMaxLanes, "GEMM strips of ", impl.nr,
                " columns are wider than the Winograd transforms' ", detail::kMaxLanes);
  const int mi = g.m == 4 ? 1 : 0;
  const idx a2 = alpha_of(g.m) * alpha_of(g.m);
  const idx tiles = g.n * g.th * g.tw;
  const idx macs = tiles * a2 * g.c_in * g.c_out;  // multiply-adds of the GEMMs
  const int nt0 = threads_for(nthreads, tiles, macs);
  idx nb_max = std::min(tiles, block_tiles > 0 ? block_tiles : choose_block_tiles(g, impl));
  // Too few blocks for two per thread: either smaller blocks (up to 2 nt0 blocks, each reading
  // all alpha^2 c_in c_out transformed weights) or the schedule below, where each thread
  // transforms every block's input (alpha^2 c_in values per tile).  Smaller blocks when the
  // weights they read are at most twice the inputs the other schedule transforms again
  // (2 nt0 c_out <= 2 tiles; an input transform costs more per value than a weight read).
  if (block_tiles <= 0 && nt0 > 1 && (tiles + nb_max - 1) / nb_max < 2 * nt0 &&
      g.c_out * 2 * nt0 <= 2 * tiles) {
    const idx nr = impl.nr;
    nb_max = std::max(nr, (tiles + 2 * nt0 - 1) / (2 * nt0) / nr * nr);
  }
  const idx blocks = (tiles + nb_max - 1) / nb_max;
  const idx psize = impl.packed_a_size(g.c_out, g.c_in);
  const idx kb = detail::block_k(impl.kc, g.c_in);
  const idx work_size = detail::wino_work_size(g.m, impl.nr);
  const idx v_size = block_v_size(g, impl, nb_max), m_size = block_m_size(g, nb_max);
  const idx strips = (g.c_out + impl.mr - 1) / impl.mr;  // of output channels
  const int nt = threads_for(nthreads, std::max(blocks, strips), macs);
  const auto block = [&](idx bi) {
    const idx j0 = bi * nb_max, j1 = std::min(tiles, j0 + nb_max);
    const idx npad = (j1 - j0 + impl.nr - 1) / impl.nr * impl.nr;
    return detail::WinoBlock{j0,   j1, impl.nr, kb, npad, detail::wino_stride(g.c_in * npad),
                             detail::wino_stride(g.c_out * (j1 - j0))};
  };
  // output channels [o0, o1) (o0 a multiple of mr) of block bi in one thread's buffers:
  // V -> M (those rows only) -> y
  const auto rows = [&](idx bi, idx o0, idx o1, T* v, T* mm, T* work) {
    detail::WinoBlock b = block(bi);
    b.m_stride = detail::wino_stride((o1 - o0) * (b.j1 - b.j0));
    kern.input[mi](g, b, x, 0, g.c_in, v, work);
    for (idx xi = 0; xi < a2; ++xi) {
      GemmArgs<T> ga;
      ga.m = g.c_out;
      ga.n = b.j1 - b.j0;
      ga.k = g.c_in;
      ga.apack = u + xi * psize;
      ga.bpack = v + xi * b.v_stride;
      ga.c = ga.c2 = mm + xi * b.m_stride;  // rows from m2 = o0 on go to c2 + (i - o0) * ldc
      ga.m2 = o0;
      ga.ldc = ga.n;
      detail::run_tile<T>(impl, ga, o0, o1, 0, ga.n, nullptr);  // both packed: no buffers
    }
    kern.output[mi](g, b, mm, o0, o1, out, work);
  };
  // every buffer is allocated here, before the parallel region: one set per thread
  const idx per_thread = v_size + m_size + work_size;
  if (nt == 1 || blocks >= 2 * nt || strips < 2) {
    const int ntb = static_cast<int>(std::min<idx>(nt, blocks));
    Workspace<T> buf(per_thread, ntb);
    parallel_for_dynamic(ntb, blocks, [&](idx bi) {
      T* v = buf.part(thread_index());
      rows(bi, 0, g.c_out, v, v + v_size, v + v_size + m_size);
    });
    return;
  }
  const int ntc = static_cast<int>(std::min<idx>(nt, strips));
  Workspace<T> buf(per_thread, ntc);
  parallel_for(ntc, ntc, [&](idx t) {
    idx s0, s1;
    detail::share(strips, ntc, static_cast<int>(t), s0, s1);
    const idx o0 = s0 * impl.mr, o1 = std::min(s1 * impl.mr, g.c_out);
    T* v = buf.part(t);
    for (idx bi = 0; bi < blocks; ++bi) rows(bi, o0, o1, v, v + v_size, v + v_size + m_size);
  });
}

WinoGeom geometry(int tile, idx n, idx c_in, idx c_out, idx h, idx w, idx ph, idx pw) {
  WinoGeom g;
  g.m = tile;
  g.n = n;
  g.c_in = c_in;
  g.c_out = c_out;
  g.h = h;
  g.w = w;
  g.ph = ph;
  g.pw = pw;
  g.oh = h + 2 * ph - 2;
  g.ow = w + 2 * pw - 2;
  g.th = (g.oh + tile - 1) / tile;
  g.tw = (g.ow + tile - 1) / tile;
  return g;
}

}  // namespace

void winograd_validate(const Window2d& g, int tile) {
  check_window(g);
  check_tile(tile);
}

template <typename T>
idx winograd_workspace(const Window2d& g, idx c_out, int tile, bool backward) {
  winograd_validate(g, tile);
  const WinoGeom wg = backward ? geometry(tile, 1, c_out, g.c, g.oh(), g.ow(), 2 - g.ph, 2 - g.pw)
                               : geometry(tile, 1, g.c, c_out, g.h, g.w, g.ph, g.pw);
  const GemmImpl<T>& impl = detail::active_gemm<T>();
  const idx nb = std::min(wg.th * wg.tw, choose_block_tiles(wg, impl));
  return (block_v_size(wg, impl, nb) + block_m_size(wg, nb) +
          detail::wino_work_size(wg.m, impl.nr)) * idx(sizeof(T));
}

template <typename T>
idx winograd_packed_size(idx c_out, idx c_in, int tile, bool backward) {
  check_tile(tile);
  const auto& impl = detail::active_gemm<T>();
  const idx a = alpha_of(tile);
  return a * a * (backward ? impl.packed_a_size(c_in, c_out) : impl.packed_a_size(c_out, c_in));
}

template <typename T>
void winograd_pack(const T* w, idx c_out, idx c_in, int tile, bool backward, T* dst,
                   int nthreads) {
  check_tile(tile);
  RELPROP_CHECK(c_out > 0 && c_in > 0, "weight channels must be positive, got (", c_out, ", ",
                c_in, ")");
  const auto& impl = detail::active_gemm<T>();
  const int a = alpha_of(tile);
  const idx a2 = a * a;
  // U_xi is rows x k: (c_out, c_in) forward, (c_in, c_out) backward
  const idx rows = backward ? c_in : c_out, k = backward ? c_out : c_in;
  Workspace<T> u(a2 * rows * k);
  // One output row of every transform position at a time (row = o forward, c backward): the
  // a2 values of each (row, col) pair go to a2 planes, so they are gathered per row in `line`
  // and each plane's row is written contiguously (writing them pair by pair scattered a2
  // stores over a2 planes: 76 ms instead of about 2 for 512 x 512 channels).
  [[maybe_unused]] const int nt = threads_for(nthreads, rows, c_out * c_in * a2 * 8);
  Workspace<double> lines(9 * k, nt);  // the kernels of one row per thread
  const double(*G)[3] = tile == 4 ? kG4 : kG2;
#pragma omp parallel for schedule(static) num_threads(nt)
  for (idx row = 0; row < rows; ++row) {
    // U[i, j] of every col, a vector of cols at a time (the loops over cols vectorize): the
    // kernels f[p][q], then G f, then (G f) G^T, in float64
    double* fl = lines.part(thread_index());  // f[p][q], every col
    for (idx col = 0; col < k; ++col) {
      const idx o = backward ? col : row, c = backward ? row : col;
      const T* src = w + (o * c_in + c) * 9;
      for (int e = 0; e < 9; ++e)  // flipped for the backward pass
        fl[e * k + col] = static_cast<double>(backward ? src[8 - e] : src[e]);
    }
    double gf[6 * 3 * 512];  // (G f)[i][q] for a block of cols
    for (idx c0 = 0; c0 < k; c0 += 512) {
      const idx nc = std::min<idx>(512, k - c0);
      for (int i = 0; i < a; ++i)
        for (int q = 0; q < 3; ++q) {
          double* out = gf + (i * 3 + q) * 512;
          for (idx cc = 0; cc < nc; ++cc) out[cc] = 0;
          for (int p = 0; p < 3; ++p) {
            const double gip = G[i][p];
            const double* in = fl + (p * 3 + q) * k + c0;
            for (idx cc = 0; cc < nc; ++cc) out[cc] += gip * in[cc];
          }
        }
      for (int i = 0; i < a; ++i)
        for (int j = 0; j < a; ++j) {
          T* dst_row = u.data() + ((i * a + j) * rows + row) * k + c0;
          const double* g0 = gf + (i * 3 + 0) * 512;
          const double* g1 = gf + (i * 3 + 1) * 512;
          const double* g2 = gf + (i * 3 + 2) * 512;
          const double h0 = G[j][0], h1 = G[j][1], h2 = G[j][2];
          for (idx cc = 0; cc < nc; ++cc)
            dst_row[cc] = static_cast<T>((g0[cc] * h0 + g1[cc] * h1) + g2[cc] * h2);
        }
    }
  }
  const idx psize = impl.packed_a_size(rows, k);
  for (idx xi = 0; xi < a2; ++xi)
    impl.pack_a(impl, u.data() + xi * rows * k, k, 1, rows, k, dst + xi * psize);
}

namespace {

// The backward pass (the forward convolution of gy, (n, c_out, oh, ow), with padding 2 - p,
// giving c_in channels) with the epilogue epi (mask, scale: aux shaped like gx).
template <typename T>
void backward_impl(const T* gy, const T* w, T* gx, const Window2d& g, idx c_out, int tile,
                   int nthreads, const T* packed, idx block_tiles, detail::Epilogue epi,
                   const T* aux) {
  winograd_validate(g, tile);
  RELPROP_CHECK(c_out > 0, "c_out must be positive, got ", c_out);
  if (g.n == 0) return;
  Workspace<T> wp(packed ? 0 : winograd_packed_size<T>(c_out, g.c, tile, true));
  if (!packed) {
    winograd_pack(w, c_out, g.c, tile, true, wp.data(), nthreads);
    packed = wp.data();
  }
  const WinoGeom bg = geometry(tile, g.n, c_out, g.c, g.oh(), g.ow(), 2 - g.ph, 2 - g.pw);
  detail::WinoOut<T> out;
  out.y = gx;
  out.split = g.c;
  out.epi = epi;
  out.aux = aux;
  run(bg, gy, packed, out, nthreads, block_tiles);
}

}  // namespace

template <typename T>
void winograd_forward(const T* x, const T* w, const T* b, T* y, T* y2, const Window2d& g,
                      idx c_out, idx split, int tile, int nthreads, const T* packed,
                      idx block_tiles, bool relu) {
  winograd_validate(g, tile);
  RELPROP_CHECK(c_out > 0, "c_out must be positive, got ", c_out);
  RELPROP_CHECK(split > 0 && split <= c_out, "split must be in [1, ", c_out, "], got ", split);
  RELPROP_CHECK(split == c_out || y2, "split < c_out needs a second output");
  if (g.n == 0) return;
  Workspace<T> wp(packed ? 0 : winograd_packed_size<T>(c_out, g.c, tile, false));
  if (!packed) {
    winograd_pack(w, c_out, g.c, tile, false, wp.data(), nthreads);
    packed = wp.data();
  }
  detail::WinoOut<T> out;
  out.bias = b;
  out.y = y;
  out.y2 = y2;
  out.split = split;
  out.epi = relu ? detail::Epilogue::relu : detail::Epilogue::none;
  run(geometry(tile, g.n, g.c, c_out, g.h, g.w, g.ph, g.pw), x, packed, out, nthreads,
      block_tiles);
}

template <typename T>
void winograd_forward_relu_maxpool(const T* x, const T* w, const T* b, T* pooled,
                                   std::int64_t* arg, const Window2d& g, idx c_out, int tile,
                                   int nthreads, const T* packed, idx block_tiles) {
  winograd_validate(g, tile);
  RELPROP_CHECK(c_out > 0, "c_out must be positive, got ", c_out);
  RELPROP_CHECK(g.ow() < (idx(1) << 30), "2x2 max pooling needs an output width below 2**30, got ",
                g.ow());
  if (g.n == 0 || g.oh() < 2 || g.ow() < 2) return;
  Workspace<T> wp(packed ? 0 : winograd_packed_size<T>(c_out, g.c, tile, false));
  if (!packed) {
    winograd_pack(w, c_out, g.c, tile, false, wp.data(), nthreads);
    packed = wp.data();
  }
  detail::WinoOut<T> out;
  out.bias = b;
  out.split = c_out;
  out.epi = detail::Epilogue::relu;
  out.pooled = pooled;
  out.arg = arg;
  run(geometry(tile, g.n, g.c, c_out, g.h, g.w, g.ph, g.pw), x, packed, out, nthreads,
      block_tiles);
}

template <typename T>
void winograd_backward(const T* gy, const T* w, T* gx, const Window2d& g, idx c_out, int tile,
                       int nthreads, const T* packed, idx block_tiles, const T* mask) {
  backward_impl(gy, w, gx, g, c_out, tile, nthreads, packed, block_tiles,
                mask ? detail::Epilogue::mask : detail::Epilogue::none, mask);
}

template <typename T>
void winograd_backward_pooled(const T* gp, const std::int64_t* arg, const T* pooled, const T* w,
                              T* gx, const Window2d& g, idx c_out, int tile, int nthreads,
                              const T* packed, const T* mask) {
  winograd_validate(g, tile);
  RELPROP_CHECK(c_out > 0, "c_out must be positive, got ", c_out);
  if (g.n == 0) return;
  const idx oh = g.oh(), ow = g.ow();
  Workspace<T> gy(g.n * c_out * oh * ow);
  const Window2d pg{g.n, c_out, oh, ow, 2, 2, 2, 2, 0, 0};
  maxpool2d_backward_masked<T>(gp, arg, pooled, gy.data(), pg, nthreads);
  backward_impl(gy.data(), w, gx, g, c_out, tile, nthreads, packed, 0,
                mask ? detail::Epilogue::mask : detail::Epilogue::none, mask);
}

template <typename T>
void winograd_lrp_epsilon(const T* r, const T* z, const T* a, const T* w, T* ra,
                          const Window2d& g, idx c_out, int tile, double eps, int nthreads,
                          const T* packed) {
  winograd_validate(g, tile);
  RELPROP_CHECK(c_out > 0, "c_out must be positive, got ", c_out);
  if (g.n == 0) return;
  const idx len = c_out * g.oh() * g.ow();
  Workspace<T> s(g.n * len);
  lrp_divide<T>(r, z, nullptr, s.data(), g.n, len, eps, nthreads);
  backward_impl(s.data(), w, ra, g, c_out, tile, nthreads, packed, 0, detail::Epilogue::scale, a);
}

#define RELPROP_INSTANTIATE(T)                                                                 \
  template idx winograd_packed_size<T>(idx, idx, int, bool);                                    \
  template idx winograd_workspace<T>(const Window2d&, idx, int, bool);                          \
  template void winograd_pack<T>(const T*, idx, idx, int, bool, T*, int);                      \
  template void winograd_forward<T>(const T*, const T*, const T*, T*, T*, const Window2d&, idx, \
                                    idx, int, int, const T*, idx, bool);                        \
  template void winograd_forward_relu_maxpool<T>(const T*, const T*, const T*, T*,               \
                                                 std::int64_t*, const Window2d&, idx, int, int,  \
                                                 const T*, idx);                                 \
  template void winograd_backward<T>(const T*, const T*, T*, const Window2d&, idx, int, int,    \
                                     const T*, idx, const T*);                                  \
  template void winograd_backward_pooled<T>(const T*, const std::int64_t*, const T*, const T*,  \
                                            T*, const Window2d&, idx, int, int, const T*,       \
                                            const T*);                                          \
  template void winograd_lrp_epsilon<T>(const T*, const T*, const T*, const T*, T*,             \
                                        const Window2d&, idx, int, double, int, const T*);
RELPROP_INSTANTIATE(float)
RELPROP_INSTANTIATE(double)
#undef RELPROP_INSTANTIATE

}  // namespace relprop

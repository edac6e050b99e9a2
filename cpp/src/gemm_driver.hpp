// The GEMM driver, packing routines and the micro-kernel templates, compiled once per ISA: each
// micro-kernel translation unit (gemm_generic.cpp, gemm_avx2.cpp, gemm_avx512.cpp) includes this
// file and instantiates it with its own kernel policy and compiler flags.  Everything here has
// internal linkage (anonymous namespace) and uses no standard-library templates, so that no copy
// compiled with AVX instructions can be picked by the linker for the baseline code.
//
// A kernel policy K provides
//   using T;  static constexpr int MR, NR;
//   template <int M> static void run(idx kc, const T* a, const T* b, T* c, idx ldc, int n,
//                                    const Store<T>& st);
// which computes the M x NR product of an A strip (kc x MR, element (p, i) at a[p*MR + i]) and
// a B strip (kc x NR, element (p, j) at b[p*NR + j]), each entry accumulated in ascending p from
// zero, and stores its first n columns into C as `st` says (store_tile).
#pragma once
#include <cstring>

#include "gemm_impl.hpp"

namespace relprop {
namespace detail {
namespace {

// Register arrays are only kept in registers when their loops are fully unrolled.
#if defined(__clang__)
#define RELPROP_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define RELPROP_UNROLL _Pragma("GCC unroll 32")
#else
#define RELPROP_UNROLL
#endif

inline idx min_idx(idx a, idx b) { return a < b ? a : b; }
inline idx max_idx(idx a, idx b) { return a > b ? a : b; }

// The reduction block: k split into ceil(k / kc_max) nearly equal blocks (no short last block).
// A function of k and the ISA's kc_max only, so the summation order never depends on threads.
inline idx block_k(idx kc_max, idx k) {
  const idx blocks = (k + kc_max - 1) / kc_max;
  return blocks > 0 ? (k + blocks - 1) / blocks : 1;
}

// How a finished block sum `acc` enters C.
enum Init { kOverwrite, kAccumulate, kRowBias, kColBias };

// How one tile's block sums enter C: init, then (on the last block of steps only) the
// epilogue.  Pointers are at the tile's first row (rb), first column (cb) or origin (aux).
template <typename T>
struct Store {
  Init init;
  const T* rb;  // kRowBias: rb[i]
  const T* cb;  // kColBias: cb[j]
  Epilogue epi;
  const T* aux;  // mask, scale: aux[i*ldx + j]
  idx ldx;
};

// C(i, j) = epilogue(init + acc[i*NR + j]) for i < m, j < n.
template <typename T, int NR>
inline void store_tile(const T* acc, int m, int n, T* c, idx ldc, const Store<T>& st) {
  for (int i = 0; i < m; ++i) {
    T* ci = c + i * ldc;
    const T* ai = acc + i * NR;
    const T* xi = st.aux ? st.aux + i * st.ldx : nullptr;
    for (int j = 0; j < n; ++j) {
      T v;
      if (st.init == kOverwrite)
        v = ai[j];
      else if (st.init == kAccumulate)
        v = ci[j] + ai[j];
      else if (st.init == kRowBias)
        v = st.rb[i] + ai[j];
      else
        v = st.cb[j] + ai[j];
      ci[j] = epilogue_scalar(st.epi, v, xi ? xi[j] : T(0));
    }
  }
}

// Portable micro-kernel: plain loops the compiler vectorizes for the baseline instruction set.
template <typename T_, int MR_, int NR_>
struct ScalarKernel {
  using T = T_;
  static constexpr int MR = MR_, NR = NR_;
  template <int M>
  static void run(idx kc, const T* a, const T* b, T* c, idx ldc, int n, const Store<T>& st) {
    T acc[M * NR];
    for (int e = 0; e < M * NR; ++e) acc[e] = T(0);
    for (idx p = 0; p < kc; ++p, a += MR, b += NR) {
      for (int i = 0; i < M; ++i) {
        const T ai = a[i];
        for (int j = 0; j < NR; ++j) acc[i * NR + j] += ai * b[j];
      }
    }
    store_tile<T, NR>(acc, M, n, c, ldc, st);
  }
  // d[q] = src[q] for lo <= q < hi, else 0 (q < NR); src[q] outside [lo, hi) is never read.
  static void copy_range(T* d, const T* src, idx lo, idx hi) {
    for (int q = 0; q < NR; ++q) d[q] = (q >= lo && q < hi) ? src[q] : T(0);
  }
  // The same, where src[0, NR) may all be read.
  static void copy_within(T* d, const T* src, idx lo, idx hi) { copy_range(d, src, lo, hi); }
  static void copy_full(T* d, const T* src) { std::memcpy(d, src, NR * sizeof(T)); }
  // One full strip of B(p, j) = b[j*csb + p] (columns of B contiguous): d[p*NR + j].
  static void pack_bt(T* d, const T* b, idx csb, idx kc) {
    for (int j = 0; j < NR; ++j)
      for (idx p = 0; p < kc; ++p) d[p * NR + j] = b[j * csb + p];
  }
  // acc[j] += a * x[j] for j < n, as run() accumulates (the same expression)
  static void axpy(T* acc, T a, const T* x, idx n) {
    for (idx j = 0; j < n; ++j) acc[j] += a * x[j];
  }
};

// SIMD micro-kernel over a vector policy V (using T, R; W lanes; zero, load, bcast, fma, add,
// store; load_range(p, lo, hi): lanes lo <= l < hi of p, zero elsewhere, reading no memory
// outside them; load_masked(p, lo, hi): the same, reading all W lanes of p; transpose(src, ld, dst, ldd): dst[q*ldd + r] = src[r*ld + q] for r, q < W): an M x (NV*W) tile of C in M*NV registers, one fused multiply-add per entry and step.
template <class V, int MR_, int NV>
struct VecKernel {
  using T = typename V::T;
  using R = typename V::R;
  static constexpr int MR = MR_, NR = NV * V::W;
  // The epilogue of one vector (x: aux's lanes, unread for none and relu), as
  // epilogue_scalar: relu keeps v where v > 0 or v is NaN (not-less-or-equal, unordered).
  static R epilogue(Epilogue e, R v, const T* x) {
    switch (e) {
      case Epilogue::relu:
        return V::relu(v);
      case Epilogue::mask:
        return V::mask_positive(V::load(x), v);
      case Epilogue::scale:
        return V::mul(v, V::load(x));
      default:
        return v;
    }
  }
  template <int M>
  static void run(idx kc, const T* a, const T* b, T* c, idx ldc, int n, const Store<T>& st) {
    R acc[M][NV];
    RELPROP_UNROLL
    for (int i = 0; i < M; ++i)
      RELPROP_UNROLL
      for (int v = 0; v < NV; ++v) acc[i][v] = V::zero();
#if defined(__GNUC__)
    for (int i = 0; i < M; ++i) {  // the C tile is read or written after the loop
      __builtin_prefetch(c + i * ldc, 1, 3);
      __builtin_prefetch(c + i * ldc + NR - 1, 1, 3);
    }
    if (st.aux)  // and the epilogue's aux tile read (uncached, it stalls every tile's store)
      for (int i = 0; i < M; ++i) {
        __builtin_prefetch(st.aux + i * st.ldx, 0, 3);
        __builtin_prefetch(st.aux + i * st.ldx + NR - 1, 0, 3);
      }
#endif
    for (idx p = 0; p < kc; ++p, a += MR, b += NR) {
      R bv[NV];
      RELPROP_UNROLL
      for (int v = 0; v < NV; ++v) bv[v] = V::load(b + v * V::W);
      RELPROP_UNROLL
      for (int i = 0; i < M; ++i) {
        const R ai = V::bcast(a + i);
        RELPROP_UNROLL
        for (int v = 0; v < NV; ++v) acc[i][v] = V::fma(ai, bv[v], acc[i][v]);
      }
    }
    if (n == NR && st.epi == Epilogue::none) {
      if (st.init == kOverwrite) {
        RELPROP_UNROLL
        for (int i = 0; i < M; ++i)
          RELPROP_UNROLL
          for (int v = 0; v < NV; ++v) V::store(c + i * ldc + v * V::W, acc[i][v]);
      } else if (st.init == kAccumulate) {
        RELPROP_UNROLL
        for (int i = 0; i < M; ++i)
          RELPROP_UNROLL
          for (int v = 0; v < NV; ++v) {
            T* cv = c + i * ldc + v * V::W;
            V::store(cv, V::add(V::load(cv), acc[i][v]));
          }
      } else if (st.init == kRowBias) {
        RELPROP_UNROLL
        for (int i = 0; i < M; ++i) {
          const R bi = V::bcast(st.rb + i);
          RELPROP_UNROLL
          for (int v = 0; v < NV; ++v) V::store(c + i * ldc + v * V::W, V::add(bi, acc[i][v]));
        }
      } else {
        R bj[NV];
        RELPROP_UNROLL
        for (int v = 0; v < NV; ++v) bj[v] = V::load(st.cb + v * V::W);
        RELPROP_UNROLL
        for (int i = 0; i < M; ++i)
          RELPROP_UNROLL
          for (int v = 0; v < NV; ++v) V::store(c + i * ldc + v * V::W, V::add(bj[v], acc[i][v]));
      }
    } else if (n == NR) {  // a full tile with an epilogue (the last block of steps)
      RELPROP_UNROLL
      for (int i = 0; i < M; ++i)
        RELPROP_UNROLL
        for (int v = 0; v < NV; ++v) {
          T* cv = c + i * ldc + v * V::W;
          R s = acc[i][v];
          if (st.init == kAccumulate)
            s = V::add(V::load(cv), s);
          else if (st.init == kRowBias)
            s = V::add(V::bcast(st.rb + i), s);
          else if (st.init == kColBias)
            s = V::add(V::load(st.cb + v * V::W), s);
          V::store(cv, epilogue(st.epi, s, st.aux ? st.aux + i * st.ldx + v * V::W : nullptr));
        }
    } else {
      alignas(64) T tmp[M * NR];
      RELPROP_UNROLL
      for (int i = 0; i < M; ++i)
        RELPROP_UNROLL
        for (int v = 0; v < NV; ++v) V::store(tmp + i * NR + v * V::W, acc[i][v]);
      store_tile<T, NR>(tmp, M, n, c, ldc, st);
    }
  }
  static void copy_range(T* d, const T* src, idx lo, idx hi) {
    RELPROP_UNROLL
    for (int v = 0; v < NV; ++v)
      V::store(d + v * V::W, V::load_range(src + v * V::W, lo - v * V::W, hi - v * V::W));
  }
  static void copy_within(T* d, const T* src, idx lo, idx hi) {  // src[0, NR) is readable
    RELPROP_UNROLL
    for (int v = 0; v < NV; ++v)
      V::store(d + v * V::W, V::load_masked(src + v * V::W, lo - v * V::W, hi - v * V::W));
  }
  static void copy_full(T* d, const T* src) {
    RELPROP_UNROLL
    for (int v = 0; v < NV; ++v) V::store(d + v * V::W, V::load(src + v * V::W));
  }
  // One full strip of B(p, j) = b[j*csb + p]: W x W register transposes, then the tail.
  static void pack_bt(T* d, const T* b, idx csb, idx kc) {
    constexpr int W = V::W;
    const idx whole = kc / W * W;
    for (int v = 0; v < NV; ++v)  // W source rows (streams) at a time
      for (idx p = 0; p < whole; p += W)
        V::transpose(b + v * W * csb + p, csb, d + p * NR + v * W, NR);
    for (idx p = whole; p < kc; ++p)
      for (int j = 0; j < NR; ++j) d[p * NR + j] = b[j * csb + p];
  }
  // acc[j] = fma(a, x[j], acc[j]) for j < n, with run()'s fused multiply-add
  static void axpy(T* acc, T a, const T* x, idx n) {
    const R av = V::bcast(&a);
    idx j = 0;
    for (; j + 4 * V::W <= n; j += 4 * V::W)
      RELPROP_UNROLL
      for (int v = 0; v < 4; ++v) {
        T* cv = acc + j + v * V::W;
#if defined(__GNUC__)
        __builtin_prefetch(x + j + v * V::W + 2048 / sizeof(T), 0, 0);  // B streams from memory
#endif
        V::store(cv, V::fma(av, V::load(x + j + v * V::W), V::load(cv)));
      }
    for (; j + V::W <= n; j += V::W) V::store(acc + j, V::fma(av, V::load(x + j), V::load(acc + j)));
    if (j < n)
      V::store_range(acc + j, V::fma(av, V::load_range(x + j, 0, n - j),
                                     V::load_range(acc + j, 0, n - j)), n - j);
  }
};

// The kernel for m (1 <= m <= K::MR) rows.
template <class K, int M = K::MR>
inline void kernel_rows(int m, idx kc, const typename K::T* a, const typename K::T* b,
                        typename K::T* c, idx ldc, int n, const Store<typename K::T>& st) {
  if constexpr (M > 1) {
    if (m < M) {
      kernel_rows<K, M - 1>(m, kc, a, b, c, ldc, n, st);
      return;
    }
  }
  K::template run<M>(kc, a, b, c, ldc, n, st);
}

// kernel_rows for a tile whose first m_top rows go to c_top and the others to c_bot (a tile
// that straddles the two outputs of a split C): computed in a local tile, then copied.  (No
// aux epilogue: run_gemm refuses aux with a split C.)
template <class K>
void kernel_rows_split(int m, int m_top, idx kc, const typename K::T* a, const typename K::T* b,
                       typename K::T* c_top, typename K::T* c_bot, idx ldc, int n,
                       const Store<typename K::T>& st) {
  using T = typename K::T;
  constexpr int NR = K::NR;
  alignas(64) T tmp[K::MR * NR];
  auto row = [&](int i) { return i < m_top ? c_top + i * ldc : c_bot + (i - m_top) * ldc; };
  if (st.init == kAccumulate)
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) tmp[i * NR + j] = row(i)[j];
  kernel_rows<K>(m, kc, a, b, tmp, NR, n, st);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) row(i)[j] = tmp[i * NR + j];
}

// Packs rows [0, mc) x steps [0, kc) of A(i, p) = a[i*rsa + p*csa] into MR-high strips:
// strip s at dst + s*MR*kc, element (p, i) of the strip at p*MR + i.  Rows of a last, partial
// strip beyond mc are left unset (the kernel for that many rows never reads them).
// With den (the prologue of GemmArgs::a_den, den at a's strides): a / stab(den) instead of a.
template <class K>
void pack_a_block(const typename K::T* a, idx rsa, idx csa, idx mc, idx kc, typename K::T* dst,
                  const typename K::T* den = nullptr, typename K::T eps = 0) {
  constexpr int MR = K::MR;
  if (den) {
    for (idx s = 0; s < mc; s += MR, dst += MR * kc) {
      const idx rows = min_idx(MR, mc - s);
      for (idx i = 0; i < rows; ++i) {
        const auto* ai = a + (s + i) * rsa;
        const auto* di = den + (s + i) * rsa;
        for (idx p = 0; p < kc; ++p)
          dst[p * MR + i] = stabilized_divide(ai[p * csa], di[p * csa], eps);
      }
    }
    return;
  }
  for (idx s = 0; s < mc; s += MR, dst += MR * kc) {
    const auto* as = a + s * rsa;
    const idx rows = min_idx(MR, mc - s);
    if (rows == MR && rsa == 1) {  // columns of A contiguous: one run of MR per step
      for (idx p = 0; p < kc; ++p)
        for (int i = 0; i < MR; ++i) dst[p * MR + i] = as[p * csa + i];
    } else if (rows == MR && csa == 1) {  // rows contiguous: MR streams, written in order
      for (idx p = 0; p < kc; ++p)
        for (int i = 0; i < MR; ++i) dst[p * MR + i] = as[i * rsa + p];
    } else {  // one row of A at a time (contiguous when csa == 1)
      for (idx i = 0; i < rows; ++i) {
        const auto* ai = as + i * rsa;
        if (csa == 1) {
          for (idx p = 0; p < kc; ++p) dst[p * MR + i] = ai[p];
        } else {
          for (idx p = 0; p < kc; ++p) dst[p * MR + i] = ai[p * csa];
        }
      }
    }
  }
}

// Packs steps [pc, pc + kc) x columns [jc, jc + nc) of B into NR-wide strips: strip t at
// dst + t*NR*kc, element (p, j) at p*NR + j; columns of a last, partial strip are zero.
// Source rows (csb == 1) or columns (rsb == 1) are read front to back.
template <class K>
void pack_b_strided(const typename K::T* b, idx rsb, idx csb, idx pc, idx kc, idx jc, idx nc,
                    typename K::T* dst) {
  using T = typename K::T;
  constexpr int NR = K::NR;
  const idx full = nc / NR * NR;
  b += pc * rsb + jc * csb;
  if (csb == 1) {
    // rows of B in blocks of kRows, strip by strip: a strip's rows of a block are one
    // contiguous write (the strips are kc NR apart: a row at a time would write to every
    // strip in turn, at a power-of-two stride for power-of-two sizes, all in the same cache
    // sets: 3x slower on 1024 columns)
    constexpr idx kRows = 8;
    for (idx p0 = 0; p0 < kc; p0 += kRows) {
      const idx p1 = min_idx(kc, p0 + kRows);
      for (idx t = 0; t < full; t += NR) {
        T* d = dst + t * kc;
        for (idx p = p0; p < p1; ++p) std::memcpy(d + p * NR, b + p * rsb + t, NR * sizeof(T));
      }
    }
  } else if (rsb == 1) {
    for (idx t = 0; t < full; t += NR) K::pack_bt(dst + t * kc, b + t * csb, csb, kc);
  } else {
    for (idx t = 0; t < full; t += NR) {
      T* d = dst + t * kc;
      for (idx p = 0; p < kc; ++p)
        for (int j = 0; j < NR; ++j) d[p * NR + j] = b[p * rsb + (t + j) * csb];
    }
  }
  if (full < nc) {
    T* d = dst + full * kc;
    const idx cols = nc - full;
    for (idx p = 0; p < kc; ++p) {
      for (idx j = 0; j < cols; ++j) d[p * NR + j] = b[p * rsb + (full + j) * csb];
      for (idx j = cols; j < NR; ++j) d[p * NR + j] = T(0);
    }
  }
}

// A run of an im2col strip: lanes e + [0, len) of the strip are output pixels of one output
// row.  For one kernel tap (u, v) (input row oh*sh + u*dh - ph, columns from
// ow*sw + v*dw - pw), lane e + q (lo <= q < hi) reads x_c[off + q*sw] of every input
// channel x_c; the others are zero (padding).  Which lanes those are depends on the tap, not
// on the channel, so pack_b_im2col works them out once per tap and strip.
struct ImRun {  // no default values: pack_b_im2col keeps arrays of these on its stack
  idx e, len, off, lo, hi;
};

inline ImRun im_run(const Im2col& g, idx oh, idx ow, idx e, idx len, idx u, idx v) {
  ImRun r{e, len, 0, 0, 0};
  const idx i = oh * g.sh + u * g.dh - g.ph;
  if (i < 0 || i >= g.h) return r;  // a padding row: lo = hi = 0
  const idx col0 = ow * g.sw + v * g.dw - g.pw;
  r.off = i * g.w + col0;
  r.lo = min_idx(len, col0 >= 0 ? 0 : (g.sw - 1 - col0) / g.sw);  // first q with column >= 0
  r.hi = max_idx(r.lo, min_idx(len, col0 >= g.w ? 0 : (g.w - col0 + g.sw - 1) / g.sw));
  return r;
}

// As pack_b_strided for the implicit im2col matrix of the image x (see Im2col): each strip is
// cut into runs of pixels of one output row (one run when the strip lies in one row, the
// common case), each a (strided) row of x, zero outside it.
template <class K>
void pack_b_im2col(const typename K::T* x, const Im2col& g, idx pc, idx kc, idx jc, idx nc,
                   typename K::T* dst) {
  using T = typename K::T;
  constexpr int NR = K::NR;
  constexpr idx kMaxRuns = 128;  // runs kept per strip: taps x runs (a 3x3 kernel: 9 x 1-3)
  const idx khw = g.kh * g.kw, plane = g.h * g.w;
  // run q of channel c to d[0, NR): whole, or masked where all NR lanes from the run's start
  // lie inside the image x (so may be read), else with a load that reads only [lo, hi)
  const auto copy = [&](T* d, idx c, const ImRun& q) {
    const idx at = c * plane + q.off;
    const T* src = x + at;
    if (q.lo == 0 && q.hi == NR)
      K::copy_full(d, src);
    else if (q.hi > q.lo && at >= 0 && at + NR <= g.c * plane)
      K::copy_within(d, src, q.lo, q.hi);
    else
      K::copy_range(d, src, q.lo, q.hi);
  };
  ImRun strip[NR], runs[kMaxRuns];
  alignas(64) T tmp[2 * NR];
  for (idx t = 0; t < nc; t += NR, dst += NR * kc) {
    const idx cols = min_idx(NR, nc - t);
    idx nrun = 0, oh[NR], ow[NR];
    for (idx e = 0, j = jc + t; e < cols; ++nrun) {
      oh[nrun] = j / g.ow;
      ow[nrun] = j % g.ow;
      strip[nrun].e = e;
      strip[nrun].len = min_idx(cols - e, g.ow - ow[nrun]);
      e += strip[nrun].len;
      j += strip[nrun].len;
    }
    const auto make_run = [&](idx r, idx k) {
      return im_run(g, oh[k], ow[k], strip[k].e, strip[k].len, r / g.kw, r % g.kw);
    };
    const bool table = khw * nrun <= kMaxRuns;
    if (table)
      for (idx r = 0; r < khw; ++r)
        for (idx k = 0; k < nrun; ++k) runs[r * nrun + k] = make_run(r, k);
    const auto run = [&](idx r, idx k) { return table ? runs[r * nrun + k] : make_run(r, k); };
    const bool direct = g.sw == 1 && nrun == 1 && cols == NR;  // straight into dst
    idx c = pc / khw, r = pc % khw;
    for (idx p = 0; p < kc; ++p) {
      T* d = dst + p * NR;
      const T* xc = x + c * plane;
      if (direct) {
        copy(d, c, table ? runs[r] : make_run(r, 0));
      } else if (g.sw == 1) {
        // each run fills NR lanes of tmp from its start e (zero past its end); the next run
        // overwrites those past the end, and the last one leaves lanes >= cols zero
        for (idx k = 0; k < nrun; ++k) copy(tmp + strip[k].e, c, run(r, k));
        K::copy_full(d, tmp);
      } else {
        for (idx k = 0; k < nrun; ++k) {
          const ImRun q = run(r, k);
          for (idx i = 0; i < q.len; ++i)
            d[q.e + i] = (i >= q.lo && i < q.hi) ? xc[q.off + i * g.sw] : T(0);
        }
        for (idx i = cols; i < NR; ++i) d[i] = T(0);
      }
      if (++r == khw) {
        r = 0;
        ++c;
      }
    }
  }
}

template <class K>
void pack_b(const GemmArgs<typename K::T>& g, idx pc, idx kc, idx jc, idx nc, typename K::T* dst) {
  if (g.im)
    pack_b_im2col<K>(g.b, *g.im, pc, kc, jc, nc, dst);
  else
    pack_b_strided<K>(g.b, g.rsb, g.csb, pc, kc, jc, nc, dst);
}

template <class K>
void tile(const GemmImpl<typename K::T>& impl, const GemmArgs<typename K::T>& g, idx i0, idx i1,
          idx j0, idx j1, typename K::T* wa, typename K::T* wb) {
  using T = typename K::T;
  constexpr int MR = K::MR, NR = K::NR;
  const idx mpad = (g.m + MR - 1) / MR * MR;
  const idx kb = block_k(impl.kc, g.k);
  // Rows that fit one mc block: each B strip is packed right before its only use, so it goes
  // to L1 and back instead of through a kc x nc panel (same arithmetic, same order).  Not for
  // row-major B, whose rows are best read whole (pack_b_strided).
  const bool stream_b = !g.bpack && i1 - i0 <= impl.mc && (g.im || g.csb != 1);
  const idx npad = (g.n + NR - 1) / NR * NR;
  // rows [ic, ic + mc) x columns [col, col + n) of C from steps [pc, pc + kc) (ap, bp)
  const auto rows = [&](idx ic, idx mc, idx col, int n, idx kc, const T* ap, const T* bp,
                        Store<T> st) {
    for (idx ir = 0; ir < mc; ir += MR) {
      const int m = static_cast<int>(min_idx(MR, mc - ir));
      const idx row = ic + ir;
      st.rb = g.row_bias ? g.row_bias + row : nullptr;
      if (st.aux) st.aux = g.aux + row * g.ldx + col;
      if (!g.c2 || row + m <= g.m2) {
        kernel_rows<K>(m, kc, ap + ir * kc, bp, g.c + row * g.ldc + col, g.ldc, n, st);
      } else if (row >= g.m2) {
        kernel_rows<K>(m, kc, ap + ir * kc, bp, g.c2 + (row - g.m2) * g.ldc + col, g.ldc, n,
                       st);
      } else {
        kernel_rows_split<K>(m, static_cast<int>(g.m2 - row), kc, ap + ir * kc, bp,
                             g.c + row * g.ldc + col, g.c2 + col, g.ldc, n, st);
      }
    }
  };
  // init of the block of steps from pc, for the columns from col; the epilogue on the last
  const auto store_of = [&](idx pc, idx kc, idx col) {
    Store<T> st;
    st.init = (pc > 0 || g.accumulate) ? kAccumulate
              : g.row_bias             ? kRowBias
              : g.col_bias             ? kColBias
                                       : kOverwrite;
    st.rb = nullptr;
    st.cb = g.col_bias ? g.col_bias + col : nullptr;
    const bool last = pc + kc >= g.k;
    st.epi = last ? g.epilogue : Epilogue::none;
    st.aux = last && g.aux ? g.aux : nullptr;  // (rows() points it at the tile)
    st.ldx = g.ldx;
    return st;
  };
  // All of A packed and B streamed: either each strip of C goes through every block of steps
  // before the next strip (its tiles stay in L1, all of A is read once per strip), or each
  // block of steps goes through every strip (A's block is read once, the C block of up to
  // mc x nc once per block of steps).  The first where A is the smaller to read again from
  // L2: it fits there (<= 256 KiB, half of a small L2) or is at most half the C block.
  // Same sums in the same order either way.
  const idx a_bytes = (i1 - i0) * g.k * idx(sizeof(T));
  const idx c_bytes = (i1 - i0) * min_idx(impl.nc, j1 - j0) * idx(sizeof(T));
  if (stream_b && g.apack && (a_bytes <= (idx(256) << 10) || 2 * a_bytes <= c_bytes)) {
    for (idx jr = j0; jr < j1; jr += NR) {
      const int n = static_cast<int>(min_idx(NR, j1 - jr));
      for (idx pc = 0; pc < g.k; pc += kb) {
        const idx kc = min_idx(kb, g.k - pc);
        pack_b<K>(g, pc, kc, jr, n, wb);
        rows(i0, i1 - i0, jr, n, kc, g.apack + pc * mpad + i0 * kc, wb, store_of(pc, kc, jr));
      }
    }
    return;
  }
  for (idx jc = j0; jc < j1; jc += impl.nc) {
    const idx nc = min_idx(impl.nc, j1 - jc);
    for (idx pc = 0; pc < g.k; pc += kb) {
      const idx kc = min_idx(kb, g.k - pc);
      if (!stream_b && !g.bpack) pack_b<K>(g, pc, kc, jc, nc, wb);
      for (idx ic = i0; ic < i1; ic += impl.mc) {
        const idx mc = min_idx(impl.mc, i1 - ic);
        const T* ap = g.apack + pc * mpad + ic * kc;
        if (!g.apack && g.a_den && g.csa == 1) {
          // the prologue: the block's quotients row by row (vectorized), then packed from
          // there (they follow the packed block in wa: see tile_scratch_size)
          T* q = wa + min_idx(impl.mc, (i1 - i0 + MR - 1) / MR * MR) * kb;
          for (idx i = 0; i < mc; ++i) {
            const T* ai = g.a + (ic + i) * g.rsa + pc;
            const T* di = g.a_den + (ic + i) * g.rsa + pc;
            T* qi = q + i * kc;
            const T eps = g.a_eps;
            for (idx p = 0; p < kc; ++p) qi[p] = stabilized_divide(ai[p], di[p], eps);
          }
          pack_a_block<K>(q, kc, 1, mc, kc, wa);
          ap = wa;
        } else if (!g.apack) {
          const idx at = ic * g.rsa + pc * g.csa;
          pack_a_block<K>(g.a + at, g.rsa, g.csa, mc, kc, wa, g.a_den ? g.a_den + at : nullptr,
                          g.a_eps);
          ap = wa;
        }
        for (idx jr = 0; jr < nc; jr += NR) {
          const int n = static_cast<int>(min_idx(NR, nc - jr));
          const T* bp = g.bpack ? g.bpack + pc * npad + (jc + jr) * kc : wb + jr * kc;
          if (stream_b) {
            pack_b<K>(g, pc, kc, jc + jr, n, wb);
            bp = wb;
          }
          rows(ic, mc, jc + jr, n, kc, ap, bp, store_of(pc, kc, jc + jr));
        }
      }
    }
  }
}

// GemmImpl::gemv: C(0, j) for j0 <= j < j1 of a problem with m = 1 and row-major B
// (csb == 1): per chunk of columns and block of steps, the block sums of the chunk as rank-1
// updates (B's rows read front to back), then stored as tile() stores them.
template <class K>
void gemv(const GemmImpl<typename K::T>& impl, const GemmArgs<typename K::T>& g, idx j0, idx j1,
          typename K::T* tmp) {
  using T = typename K::T;
  const idx kb = block_k(impl.kc, g.k);
  for (idx jc = j0; jc < j1; jc += impl.gemv_chunk) {
    const idx n = min_idx(impl.gemv_chunk, j1 - jc);
    T* c = g.c + jc;
    for (idx pc = 0; pc < g.k; pc += kb) {
      const idx kc = min_idx(kb, g.k - pc);
      for (idx j = 0; j < n; ++j) tmp[j] = T(0);
      for (idx p = pc; p < pc + kc; ++p) {
        const T a = g.a_den ? stabilized_divide(g.a[p * g.csa], g.a_den[p * g.csa], g.a_eps)
                            : g.a[p * g.csa];
        K::axpy(tmp, a, g.b + p * g.rsb + jc, n);
      }
      const bool acc = pc > 0 || g.accumulate;
      const Epilogue e = pc + kc >= g.k ? g.epilogue : Epilogue::none;
      const T* x = g.aux ? g.aux + jc : nullptr;
      const T rb = g.row_bias && !acc ? g.row_bias[0] : T(0);
      for (idx j = 0; j < n; ++j) {
        const T v = acc ? c[j] + tmp[j]
                    : g.row_bias ? rb + tmp[j]
                    : g.col_bias ? g.col_bias[jc + j] + tmp[j]
                                 : tmp[j];
        c[j] = epilogue_scalar(e, v, x ? x[j] : T(0));
      }
    }
  }
}

// The whole of A packed for GemmArgs::apack: the block of steps [pc, pc + kc) at
// dst + pc * round_up(m, MR), laid out as pack_a_block lays out one block.
template <class K>
void pack_a_full(const GemmImpl<typename K::T>& impl, const typename K::T* a, idx rsa, idx csa,
                 idx m, idx k, typename K::T* dst) {
  const idx mpad = (m + K::MR - 1) / K::MR * K::MR;
  const idx kb = block_k(impl.kc, k);
  for (idx pc = 0; pc < k; pc += kb)
    pack_a_block<K>(a + pc * csa, rsa, csa, m, min_idx(kb, k - pc), dst + pc * mpad);
}

// The whole of B packed for GemmArgs::bpack: the block of steps [pc, pc + kc) at
// dst + pc * round_up(n, NR), laid out as pack_b_strided lays out one panel of all n columns.
template <class K>
void pack_b_full(const GemmImpl<typename K::T>& impl, const typename K::T* b, idx rsb, idx csb,
                 idx k, idx n, typename K::T* dst) {
  const idx npad = (n + K::NR - 1) / K::NR * K::NR;
  const idx kb = block_k(impl.kc, k);
  for (idx pc = 0; pc < k; pc += kb)
    pack_b_strided<K>(b, rsb, csb, pc, min_idx(kb, k - pc), 0, n, dst + pc * npad);
}

}  // namespace
}  // namespace detail
}  // namespace relprop

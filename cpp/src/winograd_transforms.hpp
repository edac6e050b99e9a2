// The Winograd input and output transforms, compiled once per ISA: each transform translation
// unit (winograd_generic.cpp, winograd_avx2.cpp, winograd_avx512.cpp) includes this file and
// builds its WinoKernels table with its own compiler flags.  As in gemm_driver.hpp, everything
// has internal linkage and no standard-library template is used, so that no copy compiled with
// AVX instructions can be picked by the linker for the baseline code.
//
// Both transforms vectorize across tiles: they work on runs of a block's tiles (the input
// transform one GEMM strip at a time, the output transform kOutLanes at a time), across tile
// rows and samples; every array below is indexed by the tile u of the run, and every loop body
// applies the same operations to every u, so a tile's result depends on its own data only (not
// on its position in a vector, the block, the batch or the thread; the compiler contracts
// a*b+c into a fused multiply-add alike in vector loops and scalar remainders).
//
// Matrices (the points 0, 1, -1, 1/2, -2 and infinity for F(4x4, 3x3), which Barabasz et al.
// 2020 found to give a several times smaller float32 error than Lavin & Gray's 0, +-1, +-2;
// 0, +-1 and infinity for F(2x2, 3x3), as in Lavin & Gray).  Every entry is exact in binary.
#pragma once
#include <cstdint>
#include <type_traits>

#include "winograd_impl.hpp"

namespace relprop {
namespace detail {
namespace {

#if defined(__GNUC__) && !defined(__clang__)
#define RELPROP_IVDEP _Pragma("GCC ivdep")
#elif defined(__clang__)
#define RELPROP_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#else
#define RELPROP_IVDEP
#endif

template <int M>
struct WinoMat;

template <>
struct WinoMat<2> {
  static constexpr int m = 2, a = 4;
  static constexpr double BT[4][4] = {
      {1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
  static constexpr double AT[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};
};

template <>
struct WinoMat<4> {
  static constexpr int m = 4, a = 6;
  static constexpr double BT[6][6] = {{1, -1.5, -2, 1.5, 1, 0},  {0, -1, 0.5, 2.5, 1, 0},
                                      {0, 1, -2.5, 0.5, 1, 0},   {0, -2, -1, 2, 1, 0},
                                      {0, 0.5, -1, -0.5, 1, 0},  {0, 1, -1.5, -2, 1.5, 1}};
  static constexpr double AT[4][6] = {{1, 1, 1, 1, 1, 0},
                                      {0, 1, -1, 0.5, -2, 0},
                                      {0, 1, 1, 0.25, 4, 0},
                                      {0, 1, -1, 0.125, -8, 1}};
};

template <int I>
struct Int {
  static constexpr int value = I;
};

// f(Int<I>) for I = B, ..., E - 1 (unrolled at compile time)
template <int B, int E, class F>
inline void static_for(F&& f) {
  if constexpr (B < E) {
    f(Int<B>{});
    static_for<B + 1, E>(f);
  }
}

// sum_{i >= I} c_i d[i] added to acc in ascending i, c_i = Row::c(i) known at compile time:
// zero terms are skipped, +-1 terms added or subtracted (no multiply).
template <class Row, int I, int N, typename T>
inline T dot_rest(T acc, const T* d) {
  if constexpr (I == N) {
    return acc;
  } else {
    constexpr double c = Row::c(I);
    if constexpr (c == 0.0)
      return dot_rest<Row, I + 1, N>(acc, d);
    else if constexpr (c == 1.0)
      return dot_rest<Row, I + 1, N>(acc + d[I], d);
    else if constexpr (c == -1.0)
      return dot_rest<Row, I + 1, N>(acc - d[I], d);
    else
      return dot_rest<Row, I + 1, N>(acc + T(c) * d[I], d);
  }
}

// sum_i c_i d[i], i < N, started from the first nonzero term.
template <class Row, int I, int N, typename T>
inline T dot(const T* d) {
  static_assert(I < N, "a transform row is all zero");
  constexpr double c = Row::c(I);
  if constexpr (c == 0.0)
    return dot<Row, I + 1, N>(d);
  else if constexpr (c == 1.0)
    return dot_rest<Row, I + 1, N>(d[I], d);
  else if constexpr (c == -1.0)
    return dot_rest<Row, I + 1, N>(-d[I], d);
  else
    return dot_rest<Row, I + 1, N>(T(c) * d[I], d);
}

template <int M, int R>
struct RowBT {
  static constexpr double c(int i) { return WinoMat<M>::BT[R][i]; }
};
template <int M, int R>
struct RowAT {
  static constexpr double c(int i) { return WinoMat<M>::AT[R][i]; }
};

inline idx floor_div(idx a, idx b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
inline idx min_of(idx a, idx b) { return a < b ? a : b; }
inline idx max_of(idx a, idx b) { return a > b ? a : b; }

// A piece of a run of block columns that lies in one tile row: tiles t0 .. t0 + len - 1 of
// tile row ti of `sample`, at lane u of the run.  (No default member values: kept in arrays.)
struct Piece {
  idx sample, ti, t0, len, u;
};

// The pieces of block columns [col0, col0 + n) (n <= kMaxLanes); returns their number.
inline int pieces_of(const WinoGeom& g, const WinoBlock& b, idx col0, idx n, Piece* out) {
  const idx per_sample = g.th * g.tw;
  int count = 0;
  for (idx j = b.j0 + col0, end = j + n; j < end; ++count) {
    const idx sample = j / per_sample, rem = j % per_sample, t0 = rem % g.tw;
    const idx len = min_of(g.tw - t0, end - j);
    out[count] = Piece{sample, rem / g.tw, t0, len, j - b.j0 - col0};
    j += len;
  }
  return count;
}

// P[s * L + q] = x_row[(t0 + q) * M + s - pw] (0 outside [0, w)) for s < M + 2, q < len: the
// input row under tiles t0 .. t0 + len - 1, in the M + 2 column phases of a patch.  Phases
// 0 .. M-1 are gathered for len + 1 tiles (one past the piece: P[s * L + len] is overwritten
// by the next piece), phases M and M+1 are phases 0 and 1 of the next tile.
template <typename T, int M>
void gather_row(const T* xr, idx w, idx pw, idx t0, idx len, T* P, idx L) {
  // q whose M columns (t0 + q) * M - pw + [0, M) all lie in the row: [q0, q1)
  const idx q0 = min_of(max_of((pw + M - 1) / M - t0, 0), len + 1);
  const idx q1 = max_of(q0, min_of(floor_div(w + pw - M, M) + 1 - t0, len + 1));
  const auto edge = [&](idx q) {
    for (int s = 0; s < M; ++s) {
      const idx col = (t0 + q) * M + s - pw;
      P[s * L + q] = (col >= 0 && col < w) ? xr[col] : T(0);
    }
  };
  for (idx q = 0; q < q0; ++q) edge(q);
  const T* src = xr + t0 * M - pw;
  RELPROP_IVDEP
  for (idx q = q0; q < q1; ++q)
    static_for<0, M>([&](auto s) { P[s.value * L + q] = src[q * M + s.value]; });
  for (idx q = q1; q <= len; ++q) edge(q);
  for (int s = M; s < M + 2; ++s) {
    T* ps = P + s * L;
    const T* p0 = P + (s - M) * L + 1;
    RELPROP_IVDEP
    for (idx q = 0; q < len; ++q) ps[q] = p0[q];
  }
}

template <typename T, int M>
void input_transform(const WinoGeom& g, const WinoBlock& b, const T* x, idx c0, idx c1, T* v,
                     T* work) {
  constexpr int A = M + 2;
  const idx nr = b.nr, L = wino_lanes(nr), nb = b.j1 - b.j0;
  const idx xi_stride = b.v_stride;  // between the V of two transform positions
  T* P = work;              // [A][A][L]: input row i of the patches, column phase s
  T* Q = work + A * A * L;  // [A][A][L]: B^T applied down the columns of P
  Piece pieces[kMaxLanes];
  for (idx col0 = 0; col0 < nb; col0 += nr) {  // one strip of V at a time
    const idx n = min_of(nr, nb - col0);
    const int count = pieces_of(g, b, col0, n, pieces);
    for (idx c = c0; c < c1; ++c) {
      for (int k = 0; k < count; ++k) {
        const Piece& pc = pieces[k];
        const T* plane = x + (pc.sample * g.c_in + c) * g.h * g.w;
        for (int i = 0; i < A; ++i) {
          const idx row = pc.ti * M - g.ph + i;
          T* Pi = P + i * A * L + pc.u;
          if (row < 0 || row >= g.h) {
            for (int s = 0; s < A; ++s)
              for (idx q = 0; q < pc.len; ++q) Pi[s * L + q] = T(0);
          } else {
            gather_row<T, M>(plane + row * g.w, g.w, g.pw, pc.t0, pc.len, Pi, L);
          }
        }
      }
      // Q[k][s][u] = sum_i BT[k][i] P[i][s][u]
      for (int s = 0; s < A; ++s) {
        const T* Ps = P + s * L;
        T* Qs = Q + s * L;
        RELPROP_IVDEP
        for (idx u = 0; u < n; ++u) {
          T d[A];
          static_for<0, A>([&](auto i) { d[i.value] = Ps[i.value * A * L + u]; });
          static_for<0, A>([&](auto k) {
            Qs[k.value * A * L + u] = dot<RowBT<M, decltype(k)::value>, 0, A>(d);
          });
        }
      }
      // V[k*A + l][c][col0 + u] = sum_j BT[l][j] Q[k][j][u]: channel c's row of the strip
      const idx pc = c / b.kb * b.kb, kcb = min_of(b.kb, g.c_in - pc);
      T* vs = v + pc * b.npad + col0 / nr * kcb * nr + (c - pc) * nr;
      for (int k = 0; k < A; ++k) {
        const T* Qk = Q + k * A * L;
        T* vk = vs + k * A * xi_stride;
        RELPROP_IVDEP
        for (idx u = 0; u < n; ++u) {
          T e[A];
          static_for<0, A>([&](auto j) { e[j.value] = Qk[j.value * L + u]; });
          static_for<0, A>([&](auto l) {
            vk[l.value * xi_stride + u] = dot<RowBT<M, decltype(l)::value>, 0, A>(e);
          });
        }
        for (idx u = n; u < nr; ++u)  // padding columns of the last strip
          static_for<0, A>([&](auto l) { vk[l.value * xi_stride + u] = T(0); });
      }
    }
  }
}

// The pooling's comparison (pooling.cpp's beats, with internal linkage here): `val` replaces
// the running maximum `best` if it is larger, or if it is the first NaN.
template <typename T>
inline bool wino_beats(T val, T best) {
  return val > best || (val != val && best == best);
}

// Writes the finished tiles Y (element (i, j) of the tile in lane u at Y[(i*M + j)*L + u]) of
// output channel o for the pieces of a run into y (or y2).
template <typename T, int M>
void write_tiles(const WinoGeom& g, const Piece* pieces, int count, idx o, const WinoOut<T>& out,
                 const T* Y) {
  constexpr idx L = kOutLanes;
  const idx plane = g.oh * g.ow, full = g.ow / M;  // tiles of a row wholly inside the output
  for (int k = 0; k < count; ++k) {
    const Piece& pc = pieces[k];
    T* yo = o < out.split ? out.y + (pc.sample * out.split + o) * plane
                          : out.y2 + (pc.sample * (g.c_out - out.split) + (o - out.split)) * plane;
    const idx whole = min_of(full - pc.t0, pc.len);  // tiles wholly inside the output
    for (int i = 0; i < M; ++i) {
      const idx row = pc.ti * M + i;
      if (row >= g.oh) break;
      T* yr = yo + row * g.ow + pc.t0 * M;
      const T* Yi = Y + i * M * L + pc.u;
      RELPROP_IVDEP
      for (idx q = 0; q < whole; ++q)
        static_for<0, M>([&](auto j) { yr[q * M + j.value] = Yi[j.value * L + q]; });
      if (whole < pc.len)  // the last tile of the row, cut by the output's edge
        for (idx col = whole * M; col < g.ow - pc.t0 * M; ++col)
          yr[col] = Yi[(col % M) * L + whole];
    }
  }
}

// The epilogue E (mask or scale, aux shaped like y; split = c_out) on the output of a block's
// tiles for output channels [o0, o1), after the output transform wrote it (it is still in
// cache): channel by channel, each run of the block's tiles in one tile row a few contiguous
// row segments of the channel's plane, so y and aux are read in order.
template <typename T, int M, int E>
void block_epilogue(const WinoGeom& g, const WinoBlock& b, idx o0, idx o1, const WinoOut<T>& out) {
  constexpr Epilogue epi = static_cast<Epilogue>(E);
  const idx plane = g.oh * g.ow, per_sample = g.th * g.tw;
  for (idx o = o0; o < o1; ++o) {
    for (idx j = b.j0; j < b.j1;) {
      const idx sample = j / per_sample, rem = j % per_sample, t0 = rem % g.tw, ti = rem / g.tw;
      const idx len = min_of(g.tw - t0, b.j1 - j);
      j += len;
      const idx c0 = t0 * M, c1 = min_of((t0 + len) * M, g.ow);
      const idx at = (sample * g.c_out + o) * plane;
      for (idx row = ti * M; row < min_of(ti * M + M, g.oh); ++row) {
        T* yr = out.y + at + row * g.ow;
        const T* xr = out.aux + at + row * g.ow;
        RELPROP_IVDEP
        for (idx col = c0; col < c1; ++col) yr[col] = epilogue_scalar(epi, yr[col], xr[col]);
      }
    }
  }
}

template <typename T, int M>
void finish_block(const WinoGeom& g, const WinoBlock& b, idx o0, idx o1, const WinoOut<T>& out) {
  if (out.epi == Epilogue::mask)
    block_epilogue<T, M, static_cast<int>(Epilogue::mask)>(g, b, o0, o1, out);
  else if (out.epi == Epilogue::scale)
    block_epilogue<T, M, static_cast<int>(Epilogue::scale)>(g, b, o0, o1, out);
}

// The 2x2 stride-2 max pooling of the finished tiles Y of output channel o (see write_tiles)
// into out.pooled and out.arg: the windows of pooled rows and columns inside the output
// (2p + 1 < oh, 2q + 1 < ow), each inside one tile; comparisons as maxpool2d_forward's (the
// first maximum in row-major window order wins, and the first NaN).  For each pair of tile
// rows, the winners of all n lanes of the run at once (vectorized), then each piece's pooled
// row segment from them.
template <typename T, int M>
void pool_tiles(const WinoGeom& g, const Piece* pieces, int count, idx n, idx o,
                const WinoOut<T>& out, const T* Y) {
  static_assert(M % 2 == 0, "pooling windows must not cross tiles");
  constexpr idx L = kOutLanes, H = M / 2;
  // lane offsets of T's width (the loop below vectorizes only with one lane width); ow < 2**30
  using I = typename std::conditional<sizeof(T) == 4, std::int32_t, std::int64_t>::type;
  const idx ph = g.oh / 2, pw = g.ow / 2, full = g.ow / M;
  const I ow = static_cast<I>(g.ow);
  alignas(64) T best[H][L];
  alignas(64) I off[H][L];
  for (int i = 0; i < M; i += 2) {
    const T* Y0 = Y + i * M * L;
    const T* Y1 = Y0 + M * L;
    for (idx h = 0; h < H; ++h) {
      const T* a = Y0 + 2 * h * L;
      const T* b = a + L;
      const T* c = Y1 + 2 * h * L;
      const T* d = c + L;
      T* bh = best[h];
      I* oh = off[h];
      RELPROP_IVDEP
      for (idx u = 0; u < n; ++u) {
        T m = a[u];
        I f = 0;
        T v = b[u];
        bool t = v > m || (v != v && m == m);
        m = t ? v : m;
        f = t ? I(1) : f;
        v = c[u];
        t = v > m || (v != v && m == m);
        m = t ? v : m;
        f = t ? ow : f;
        v = d[u];
        t = v > m || (v != v && m == m);
        m = t ? v : m;
        f = t ? I(ow + 1) : f;
        bh[u] = m;
        oh[u] = f;
      }
    }
    for (int k = 0; k < count; ++k) {
      const Piece& pc = pieces[k];
      const idx row = pc.ti * M + i;
      if (row + 1 >= g.oh) continue;
      const idx whole = min_of(full - pc.t0, pc.len);
      // windows of a cut last tile of the row
      const idx tail = whole < pc.len ? min_of(H, (g.ow - (pc.t0 + whole) * M) / 2) : 0;
      const idx at = (pc.sample * g.c_out + o) * ph * pw + (row / 2) * pw + pc.t0 * H;
      T* pr = out.pooled + at;
      std::int64_t* ar = out.arg + at;
      const std::int64_t base = row * g.ow + pc.t0 * M;
      const idx u0 = pc.u;
      RELPROP_IVDEP
      for (idx q = 0; q < whole; ++q)
        static_for<0, H>([&](auto h) {
          pr[q * H + h.value] = best[h.value][u0 + q];
          ar[q * H + h.value] = base + q * M + 2 * h.value + off[h.value][u0 + q];
        });
      for (idx h = 0; h < tail; ++h) {
        pr[whole * H + h] = best[h][u0 + whole];
        ar[whole * H + h] = base + whole * M + 2 * h + off[h][u0 + whole];
      }
    }
  }
}

template <typename T, int M>
void output_transform(const WinoGeom& g, const WinoBlock& b, const T* mm, idx o0, idx o1,
                      const WinoOut<T>& out, T* work) {
  constexpr int A = M + 2;
  constexpr idx L = kOutLanes;
  const idx nb = b.j1 - b.j0;
  const idx xi_stride = b.m_stride;
  const bool relu = out.epi == Epilogue::relu;
  T* H = work;              // [A][M][L]: A applied along the rows of M
  T* Y = work + A * M * L;  // [M][M][L]: the output tiles, element (i, j)
  Piece pieces[kMaxLanes];
  for (idx col0 = 0; col0 < nb; col0 += L) {
    const idx n = min_of(L, nb - col0);
    const int count = pieces_of(g, b, col0, n, pieces);
    for (idx o = o0; o < o1; ++o) {
      const T bo = out.bias ? out.bias[o] : T(0);
      const T* mo = mm + (o - o0) * nb + col0;
      // H[k][j][u] = sum_l AT[j][l] M[k*A + l][u]
      for (int k = 0; k < A; ++k) {
        const T* mk = mo + k * A * xi_stride;
        T* Hk = H + k * M * L;
        RELPROP_IVDEP
        for (idx u = 0; u < n; ++u) {
          T e[A];
          static_for<0, A>([&](auto l) { e[l.value] = mk[l.value * xi_stride + u]; });
          static_for<0, M>([&](auto j) {
            Hk[j.value * L + u] = dot<RowAT<M, decltype(j)::value>, 0, A>(e);
          });
        }
      }
      // Y[i][j][u] = sum_k AT[i][k] H[k][j][u] + bias (then the ReLU, if fused)
      for (int j = 0; j < M; ++j) {
        const T* Hj = H + j * L;
        T* Yj = Y + j * L;
        RELPROP_IVDEP
        for (idx u = 0; u < n; ++u) {
          T e[A];
          static_for<0, A>([&](auto k) { e[k.value] = Hj[k.value * M * L + u]; });
          static_for<0, M>([&](auto i) {
            Yj[i.value * M * L + u] = dot<RowAT<M, decltype(i)::value>, 0, A>(e) + bo;
          });
        }
        if (relu) {
          for (int i = 0; i < M; ++i) {
            T* Yij = Yj + i * M * L;
            RELPROP_IVDEP
            for (idx u = 0; u < n; ++u)
              Yij[u] = epilogue_scalar(Epilogue::relu, Yij[u], T(0));
          }
        }
      }
      if (out.pooled)
        pool_tiles<T, M>(g, pieces, count, n, o, out, Y);
      else
        write_tiles<T, M>(g, pieces, count, o, out, Y);
    }
  }
  if (!out.pooled) finish_block<T, M>(g, b, o0, o1, out);
}

template <typename T>
constexpr WinoKernels<T> wino_kernels() {
  return WinoKernels<T>{{&input_transform<T, 2>, &input_transform<T, 4>},
                        {&output_transform<T, 2>, &output_transform<T, 4>}};
}

}  // namespace
}  // namespace detail
}  // namespace relprop

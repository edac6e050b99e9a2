// The Winograd input and output transforms, compiled once per ISA: each transform translation
// unit (winograd_generic.cpp, winograd_avx2.cpp, winograd_avx512.cpp) includes this file and
// builds its WinoKernels table with its own compiler flags.  As in gemm_driver.hpp, everything
// has internal linkage and no standard-library template is used, so that no copy compiled with
// AVX instructions can be picked by the linker for the baseline code.
//
// Both transforms work on one tile row at a time and vectorize across its tiles: every array
// below is indexed by the tile t of the row (contiguous), and every loop body applies the same
// operations to every t, so a tile's result depends on its own data only (not on its position
// in a vector, the block, the batch or the thread).
//
// Matrices (the points 0, 1, -1, 1/2, -2 and infinity for F(4x4, 3x3), which Barabasz et al.
// 2020 found to give a several times smaller float32 error than Lavin & Gray's 0, +-1, +-2;
// 0, +-1 and infinity for F(2x2, 3x3), as in Lavin & Gray).  Every entry is exact in binary.
#pragma once
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

// P[s * L + t] = x_row[t*M + s - pw] (0 outside [0, w)) for s < M, t <= tw: the row split into
// its M column phases.
template <typename T, int M>
void split_phases(const T* xr, idx w, idx pw, idx tw, T* P, idx L) {
  // tiles t whose M columns t*M - pw + [0, M) all lie in the row: [t0, t1)
  idx t0 = (pw + M - 1) / M, t1 = floor_div(w + pw - M, M) + 1;
  if (t1 > tw + 1) t1 = tw + 1;
  if (t1 < t0) t1 = t0;
  const auto edge = [&](idx t) {
    for (int s = 0; s < M; ++s) {
      const idx col = t * M + s - pw;
      P[s * L + t] = (col >= 0 && col < w) ? xr[col] : T(0);
    }
  };
  for (idx t = 0; t < t0 && t <= tw; ++t) edge(t);
  const T* src = xr - pw;
  RELPROP_IVDEP
  for (idx t = t0; t < t1; ++t)
    static_for<0, M>([&](auto s) { P[s.value * L + t] = src[t * M + s.value]; });
  for (idx t = t1 > t0 ? t1 : t0; t <= tw; ++t) edge(t);
}

template <typename T, int M>
void input_transform(const WinoGeom& g, const T* x, idx r0, idx r1, idx c0, idx c1, T* v,
                     T* work) {
  constexpr int A = M + 2;
  const idx tw = g.tw, L = wino_lane_stride(tw), nb = (r1 - r0) * tw;
  const idx xi_stride = g.c_in * nb;  // between the V of two transform positions
  T* P = work;              // [A][M][L]: input row i of the patch, column phase s
  T* Q = work + A * M * L;  // [A][M][L]: B^T applied down the columns of P
  for (idx c = c0; c < c1; ++c) {
    for (idx r = r0; r < r1; ++r) {
      const idx sample = r / g.th, ti = r % g.th;
      const T* plane = x + (sample * g.c_in + c) * g.h * g.w;
      for (int i = 0; i < A; ++i) {
        const idx row = ti * M - g.ph + i;
        T* Pi = P + i * M * L;
        if (row < 0 || row >= g.h) {
          for (int s = 0; s < M; ++s)
            for (idx t = 0; t <= tw; ++t) Pi[s * L + t] = T(0);
        } else {
          split_phases<T, M>(plane + row * g.w, g.w, g.pw, tw, Pi, L);
        }
      }
      // Q[k][s][t] = sum_i BT[k][i] P[i][s][t]
      for (int s = 0; s < M; ++s) {
        const T* Ps = P + s * L;
        T* Qs = Q + s * L;
        RELPROP_IVDEP
        for (idx t = 0; t <= tw; ++t) {
          T d[A];
          static_for<0, A>([&](auto i) { d[i.value] = Ps[i.value * M * L + t]; });
          static_for<0, A>([&](auto k) {
            Qs[k.value * M * L + t] = dot<RowBT<M, decltype(k)::value>, 0, A>(d);
          });
        }
      }
      // V[k*A + l][c][tile t] = sum_j BT[l][j] Q[k][j % M][t + j / M]
      T* vc = v + c * nb + (r - r0) * tw;
      for (int k = 0; k < A; ++k) {
        const T* Qk = Q + k * M * L;
        T* vk = vc + k * A * xi_stride;
        RELPROP_IVDEP
        for (idx t = 0; t < tw; ++t) {
          T e[A];
          static_for<0, A>([&](auto j) {
            e[j.value] = Qk[(j.value % M) * L + t + j.value / M];
          });
          static_for<0, A>([&](auto l) {
            vk[l.value * xi_stride + t] = dot<RowBT<M, decltype(l)::value>, 0, A>(e);
          });
        }
      }
    }
  }
}

template <typename T, int M>
void output_transform(const WinoGeom& g, const T* mm, idx r0, idx r1, idx o0, idx o1,
                      const T* bias, T* y, T* y2, idx split, T* work) {
  constexpr int A = M + 2;
  const idx tw = g.tw, L = wino_lane_stride(tw), nb = (r1 - r0) * tw;
  const idx xi_stride = g.c_out * nb, plane = g.oh * g.ow;
  const idx full = g.ow / M;  // tiles of the row that lie wholly inside the output
  T* H = work;              // [A][M][L]: A applied along the rows of M
  T* Y = work + A * M * L;  // [M][M][L]: the output tile, element (i, j)
  for (idx o = o0; o < o1; ++o) {
    const T bo = bias ? bias[o] : T(0);
    for (idx r = r0; r < r1; ++r) {
      const idx sample = r / g.th, ti = r % g.th;
      const T* mo = mm + o * nb + (r - r0) * tw;
      // H[k][j][t] = sum_l AT[j][l] M[k*A + l][t]
      for (int k = 0; k < A; ++k) {
        const T* mk = mo + k * A * xi_stride;
        T* Hk = H + k * M * L;
        RELPROP_IVDEP
        for (idx t = 0; t < tw; ++t) {
          T e[A];
          static_for<0, A>([&](auto l) { e[l.value] = mk[l.value * xi_stride + t]; });
          static_for<0, M>([&](auto j) {
            Hk[j.value * L + t] = dot<RowAT<M, decltype(j)::value>, 0, A>(e);
          });
        }
      }
      // Y[i][j][t] = sum_k AT[i][k] H[k][j][t] + bias
      for (int j = 0; j < M; ++j) {
        const T* Hj = H + j * L;
        T* Yj = Y + j * L;
        RELPROP_IVDEP
        for (idx t = 0; t < tw; ++t) {
          T e[A];
          static_for<0, A>([&](auto k) { e[k.value] = Hj[k.value * M * L + t]; });
          static_for<0, M>([&](auto i) {
            Yj[i.value * M * L + t] = dot<RowAT<M, decltype(i)::value>, 0, A>(e) + bo;
          });
        }
      }
      T* yo = o < split ? y + (sample * split + o) * plane
                        : y2 + (sample * (g.c_out - split) + (o - split)) * plane;
      for (int i = 0; i < M; ++i) {
        const idx row = ti * M + i;
        if (row >= g.oh) break;
        T* yr = yo + row * g.ow;
        const T* Yi = Y + i * M * L;
        RELPROP_IVDEP
        for (idx t = 0; t < full; ++t)
          static_for<0, M>([&](auto j) { yr[t * M + j.value] = Yi[j.value * L + t]; });
        for (idx col = full * M; col < g.ow; ++col) yr[col] = Yi[(col % M) * L + full];
      }
    }
  }
}

template <typename T>
constexpr WinoKernels<T> wino_kernels() {
  return WinoKernels<T>{{&input_transform<T, 2>, &input_transform<T, 4>},
                        {&output_transform<T, 2>, &output_transform<T, 4>}};
}

}  // namespace
}  // namespace detail
}  // namespace relprop

// Internals of the Winograd convolution shared by its driver (winograd.cpp, baseline
// instruction set) and the per-ISA transform units (winograd_generic.cpp, winograd_avx2.cpp,
// winograd_avx512.cpp, each compiled with its own flags like the GEMM micro-kernels).
//
// F(m x m, 3x3) (Lavin & Gray 2016) computes each m x m tile of a stride-1 3x3 convolution from
// the alpha x alpha input patch d under it (alpha = m + 2) as
//     Y = A^T [ sum_c (G g_c G^T) .* (B^T d_c B) ] A,
// i.e. one GEMM per transform position xi = (k, l) of the alpha x alpha grid:
//     M_xi (c_out, tiles) = U_xi (c_out, c_in) V_xi (c_in, tiles),
//     U_xi[o, c] = (G w[o, c] G^T)[k, l],  V_xi[c, tile] = (B^T d_c B)[k, l].
// The driver cuts the batch's tiles into blocks; for each block the input transform writes V
// (already packed for the GEMM), the GEMM core (packed U times packed V) writes M, and the
// output transform writes y.
//
// This header only declares plain structs (nothing here is compiled with ISA-specific flags).
#pragma once
#include <cstdint>

#include "gemm_impl.hpp"

namespace relprop {
namespace detail {

// One Winograd convolution: x (n, c_in, h, w), zero padding (ph, pw) in [0, 2], output
// (n, c_out, oh, ow) with oh = h + 2 ph - 2, in th x tw tiles of m x m (the last ones cut).
// Tiles are numbered through the batch: tile j is column j % tw of tile row (j / tw) % th of
// sample j / (th * tw).
struct WinoGeom {
  int m;  // output tile: 2 or 4 (alpha = m + 2)
  idx n, c_in, c_out, h, w, ph, pw, oh, ow, th, tw;
};

// A block of tiles [j0, j1): its nb = j1 - j0 tiles are the columns of the GEMMs, tile j at
// column j - j0.  The transformed input of position xi is the GEMM's B (c_in x nb), kept in the
// GEMM core's packed layout (GemmArgs::bpack): strips of nr columns, steps in blocks of kb
// (the core's block_k for k = c_in), npad = nb rounded up to nr; V_xi starts at
// v + xi * v_stride and holds (c, col) at
//     (c / kb * kb) * npad + col / nr * kcb * nr + c % kb * nr + col % nr,
//     kcb = min(kb, c_in - c / kb * kb)   (the size of c's block of steps).
// The products M_xi of the output channels [o0, o1) a task computes are row-major at
// mm + xi * m_stride, channel o at row o - o0.  The strides are a cache
// line more than the matrices (wino_stride): the transforms read or write all positions of a
// tile together, and at a multiple of 4 KiB those streams would share the same cache sets.
struct WinoBlock {
  idx j0, j1;
  idx nr, kb, npad;
  idx v_stride, m_stride;
};

// The transforms vectorize across the tiles of a run of block columns: the input transform
// one strip (nr <= kMaxLanes tiles) at a time, the output transform kOutLanes at a time.
constexpr idx kMaxLanes = 64;
constexpr idx kOutLanes = 64;

// (Internal linkage: no copy compiled with ISA-specific flags can be picked by the linker for
// another unit.)
// Elements per phase array of the input transform: a strip and one more tile, rounded up to a
// 64-byte multiple.
static inline idx wino_lanes(idx nr) { return (nr + 1 + 15) / 16 * 16; }
// Elements between the matrices of two transform positions (see WinoBlock) for `size` each.
static inline idx wino_stride(idx size) { return (size + 15) / 16 * 16 + 16; }
// Elements of the transforms' work space for tile m and strips of nr.
static inline idx wino_work_size(int m, idx nr) {
  const idx a = m + 2, in = 2 * a * a * wino_lanes(nr), out = (a * m + m * m) * kOutLanes;
  return in > out ? in : out;
}

// What the output transform writes: y = epi(A^T M A + bias[o]) for output channel o, channel
// o < split to y (n, split, oh, ow), the others to y2 (n, c_out - split, oh, ow); aux (mask,
// scale) shaped like y (split = c_out).  relu is applied to the tiles before they are written;
// mask and scale to the block's output once it is written (channel by channel, in memory
// order: reading aux in the transform's order, a row segment of every channel in turn, cost
// as much as a separate pass).  With pooled (then epi is relu or none and split =
// c_out), the 2x2 stride-2 max pooling of that instead (y unused): pooled and arg
// (n, c_out, oh / 2, ow / 2), arg the winner's flat index in the oh x ow plane, as
// maxpool2d_forward (every window lies in one tile: m is even and tiles start at multiples of
// m).
template <typename T>
struct WinoOut {
  const T* bias = nullptr;
  T* y = nullptr;
  T* y2 = nullptr;
  idx split = 0;
  Epilogue epi = Epilogue::none;
  const T* aux = nullptr;
  T* pooled = nullptr;
  std::int64_t* arg = nullptr;
};

// The transforms of one ISA and element type, for m = 2 (index 0) and m = 4 (index 1);
// `work` holds wino_work_size(m, nr) elements.
template <typename T>
struct WinoKernels {
  // V_xi[c, tile] = (B^T d B)[xi] for channels c0 <= c < c1 (and zero in the padding columns
  // nb <= col < npad of those channels).
  void (*input[2])(const WinoGeom& g, const WinoBlock& b, const T* x, idx c0, idx c1, T* v,
                   T* work);
  // The output (see WinoOut) of output channels o0 <= o < o1 (M holds those rows only).
  void (*output[2])(const WinoGeom& g, const WinoBlock& b, const T* mm, idx o0, idx o1,
                    const WinoOut<T>& out, T* work);
};

namespace generic {
extern const WinoKernels<float> wino_f32;
extern const WinoKernels<double> wino_f64;
}  // namespace generic
#if defined(RELPROP_HAVE_AVX2)
namespace avx2 {
extern const WinoKernels<float> wino_f32;
extern const WinoKernels<double> wino_f64;
}  // namespace avx2
#endif
#if defined(RELPROP_HAVE_AVX512)
namespace avx512 {
extern const WinoKernels<float> wino_f32;
extern const WinoKernels<double> wino_f64;
}  // namespace avx512
#endif

}  // namespace detail
}  // namespace relprop

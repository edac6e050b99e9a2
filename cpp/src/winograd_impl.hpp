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
// The driver cuts the batch's tile rows into blocks; for each block the input transform writes
// V, the GEMM core (packed U) writes M, and the output transform writes y.
//
// This header only declares plain structs (nothing here is compiled with ISA-specific flags).
#pragma once
#include "gemm_impl.hpp"

namespace relprop {
namespace detail {

// One Winograd convolution: x (n, c_in, h, w), zero padding (ph, pw) in [0, 2], output
// (n, c_out, oh, ow) with oh = h + 2 ph - 2, in th x tw tiles of m x m (the last ones cut).
// Tile row r of the batch (0 <= r < n * th) is tile row r % th of sample r / th.
struct WinoGeom {
  int m;  // output tile: 2 or 4 (alpha = m + 2)
  idx n, c_in, c_out, h, w, ph, pw, oh, ow, th, tw;
};

// Elements of one column-phase array of the transforms' work space: tw + 1 entries (the
// input transform reads one tile past the row), rounded up to a 64-byte multiple.  (Internal
// linkage: no copy compiled with ISA-specific flags can be picked by the linker elsewhere.)
static inline idx wino_lane_stride(idx tw) { return (tw + 1 + 15) / 16 * 16; }

// The transforms of one ISA and element type, for m = 2 (index 0) and m = 4 (index 1).  A block
// is the tile rows [r0, r1); its nb = (r1 - r0) * tw tiles are the GEMM columns, tile t of row
// r at column (r - r0) * tw + t.  `work` holds 2 alpha m wino_lane_stride(tw) elements.
template <typename T>
struct WinoKernels {
  // V[(xi * c_in + c) * nb + col] = (B^T d B)[xi] for channels c0 <= c < c1.
  void (*input[2])(const WinoGeom& g, const T* x, idx r0, idx r1, idx c0, idx c1, T* v,
                   T* work);
  // y = A^T M A + bias[o] for output channels o0 <= o < o1 from M[(xi * c_out + o) * nb + col];
  // channel o < split goes to y (n, split, oh, ow), the others to y2 (n, c_out - split, oh, ow).
  void (*output[2])(const WinoGeom& g, const T* mm, idx r0, idx r1, idx o0, idx o1,
                    const T* bias, T* y, T* y2, idx split, T* work);
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

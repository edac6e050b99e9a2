// Winograd convolution F(m x m, 3x3), m = 2 or 4, for stride-1 3x3 convolutions (zero padding
// 0..2, no groups, no dilation): the same result as conv2d_forward / conv2d_backward up to
// rounding, with 36 (m = 4) or 16 (m = 2) GEMMs of c_out x c_in on tiles instead of one of
// c_out x 9 c_in on pixels: 4x (m = 4) or 2.25x (m = 2) fewer multiply-adds.  See
// cpp/src/winograd_impl.hpp for the scheme.
//
// Results are bitwise identical for any thread count and do not depend on the batch (a sample's
// output depends on that sample only); they depend on the ISA, as the GEMM's do.
#pragma once
#include "relprop/kernels.hpp"

namespace relprop {

// The weights transformed and packed for winograd_forward (backward = false: U_xi = G w G^T as
// c_out x c_in matrices) or winograd_backward (backward = true: the same for the flipped,
// channel-transposed kernel w'[c, o, u, v] = w[o, c, 2-u, 2-v], c_in x c_out matrices), in the
// GEMM layout of the ISA in use; computed in double and rounded once.
// w (c_out, c_in, 3, 3); tile = 2 or 4; winograd_packed_size elements.
// Throws std::invalid_argument unless g is a geometry Winograd runs (3x3 kernel, stride 1,
// padding 0..2 in each direction) and tile is 2 or 4.
void winograd_validate(const Window2d& g, int tile);

template <typename T>
idx winograd_packed_size(idx c_out, idx c_in, int tile, bool backward);

// Bytes of the buffers a Winograd pass of one sample takes on one thread (its transformed
// inputs and products of one block of tiles, and the transforms' work).
template <typename T>
idx winograd_workspace(const Window2d& g, idx c_out, int tile, bool backward);
template <typename T>
void winograd_pack(const T* w, idx c_out, idx c_in, int tile, bool backward, T* dst,
                   int nthreads);

// y = conv2d_forward(x, w, b) for g: x (n, c_in, h, w), kernel 3x3, stride 1, padding 0..2;
// channels o < split to y (n, split, oh, ow), the others to y2 (n, c_out - split, oh, ow)
// (split = c_out: y only).  packed: null, or winograd_pack(w, ..., tile, false) under the ISA in
// use (then w is unused).  block_tiles > 0 sets the tiles per block (tests; results do not
// depend on it), 0 chooses.  relu: y = max(y, 0) (NaN kept) in the output transform, bitwise
// relu_forward of the plain y.
template <typename T>
void winograd_forward(const T* x, const T* w, const T* b, T* y, T* y2, const Window2d& g,
                      idx c_out, idx split, int tile, int nthreads, const T* packed = nullptr,
                      idx block_tiles = 0, bool relu = false);

// pooled, arg = maxpool2d_forward(relu(winograd_forward(x, w, b))) with a 2x2 window, stride 2,
// no padding, bitwise (arg: flat index in the oh x ow plane of the convolution's output):
// the output transform applies bias and ReLU and pools each tile (m is even, so every window
// lies in one tile); the convolution's output never goes to memory.  pooled, arg
// (n, c_out, oh / 2, ow / 2).
template <typename T>
void winograd_forward_relu_maxpool(const T* x, const T* w, const T* b, T* pooled,
                                   std::int64_t* arg, const Window2d& g, idx c_out, int tile,
                                   int nthreads, const T* packed = nullptr, idx block_tiles = 0);

// gx = conv2d_backward(gy, w) for the forward geometry g (gy (n, c_out, oh, ow) -> gx shaped
// like x): the stride-1 convolution of gy with the flipped, channel-transposed kernel and
// padding 2 - padding.  packed: null or winograd_pack(w, ..., tile, true).  mask (shaped like
// gx) or null: gx = 0 where mask <= 0 (or NaN), in the output transform, bitwise
// relu_backward(gx, mask).
template <typename T>
void winograd_backward(const T* gy, const T* w, T* gx, const Window2d& g, idx c_out, int tile,
                       int nthreads, const T* packed = nullptr, idx block_tiles = 0,
                       const T* mask = nullptr);

// conv2d_backward_pooled (relprop/kernels.hpp) by Winograd: the convolution's output gradient
// from the pooled one (a workspace, one pass), then winograd_backward with the mask.
template <typename T>
void winograd_backward_pooled(const T* gp, const std::int64_t* arg, const T* pooled, const T* w,
                              T* gx, const Window2d& g, idx c_out, int tile, int nthreads,
                              const T* packed = nullptr, const T* mask = nullptr);

// conv2d_lrp_epsilon (relprop/kernels.hpp) by Winograd: ra = a * winograd_backward(
// lrp_divide(r, z, eps), w), bitwise; the product with a in the output transform.
template <typename T>
void winograd_lrp_epsilon(const T* r, const T* z, const T* a, const T* w, T* ra,
                          const Window2d& g, idx c_out, int tile, double eps, int nthreads,
                          const T* packed = nullptr);

}  // namespace relprop

// Internals of the depthwise convolution (dwconv.cpp): the per-ISA row kernels and their
// table, chosen at run time with the GEMM's instruction set (relprop/cpu.hpp).
//
// The driver (dwconv.cpp, baseline flags) reduces every depthwise pass over one plane to
// sums of shifted copies of a zero-padded source buffer it builds per plane:
//   out[r*ldo + q] = bias + sum_k wc[tap_k.wi] * base[tap_k.off + r*lds + q]
// for r < rows, q < cols, accumulated in the order of the taps (see dwconv.cpp for how the
// forward and backward passes, any stride and dilation, map onto it).  Only these row kernels
// and the copies that build or scatter the buffers are compiled per ISA.
#pragma once
#include "gemm_impl.hpp"

namespace relprop {
namespace detail {

struct DwTap {
  idx off;  // offset of the tap's first source element from the buffer base
  idx wi;   // index of the tap's weight within the channel's filters
};

template <typename T>
struct DwImpl {
  Isa isa;
  int w;   // vector lanes
  int nb;  // vectors of outputs per register block (rows of up to nb vectors: several at once)
  // out[r*ldo + q] = bias + sum_k wc[taps[k].wi] * base[taps[k].off + r*lds + q]  (r < rows,
  // q < cols), summed in tap order; reads base up to one vector past each row's end.
  void (*rows)(T* out, idx ldo, idx rows, idx cols, const T* base, idx lds, const DwTap* taps,
               idx ntaps, const T* wc, T bias);
  // dst[r*ldd + c] = src[r*lds + c*stride] for r < rows, c < cols
  void (*gather)(T* dst, idx ldd, const T* src, idx lds, idx rows, idx cols, idx stride);
  // dst[r*ldd + c*stride] = src[r*lds + c] for r < rows, c < cols
  void (*scatter)(T* dst, idx ldd, const T* src, idx lds, idx rows, idx cols, idx stride);
  // dst[r*ldd + 2i] = a[r*lds + i] (i < na), dst[r*ldd + 2i + 1] = b[r*lds + i] (i < nb)
  void (*zip)(T* dst, idx ldd, const T* a, const T* b, idx lds, idx rows, idx na, idx nb);
  // Channel-blocked layout (one vector = one pixel of w channels), for small planes:
  //   out[r*ors + q*ocs + l] = bias[l] + sum_k wts[wi_k*w + l] * base[off_k + r*srs + q*scs + l]
  // for r < rows, q < cols, lanes l < w (strides and offsets in elements, multiples of w).
  void (*cb_rows)(T* out, idx ors, idx ocs, idx rows, idx cols, const T* base, idx srs, idx scs,
                  const DwTap* taps, idx ntaps, const T* wts, const T* bias);
  // dst[r*drs + c*w + l] = src[l*scs + r*srs + c] for l < lanes, r < rows, c < cols
  void (*cb_pack)(T* dst, idx drs, const T* src, idx scs, idx srs, idx rows, idx cols, int lanes);
  // dst[l*dcs + t] = src[t*w + l] for l < lanes, t < n
  void (*cb_unpack)(T* dst, idx dcs, const T* src, idx n, int lanes);
};

namespace generic {
extern const DwImpl<float> dw_f32;
extern const DwImpl<double> dw_f64;
}  // namespace generic
#if defined(RELPROP_HAVE_AVX2)
namespace avx2 {
extern const DwImpl<float> dw_f32;
extern const DwImpl<double> dw_f64;
}  // namespace avx2
#endif
#if defined(RELPROP_HAVE_AVX512)
namespace avx512 {
extern const DwImpl<float> dw_f32;
extern const DwImpl<double> dw_f64;
}  // namespace avx512
#endif

}  // namespace detail
}  // namespace relprop

// The depthwise convolution's row kernels over a vector policy V (simd_*.hpp), compiled once per
// ISA by dwconv_generic.cpp, dwconv_avx2.cpp and dwconv_avx512.cpp.  Internal linkage and no
// standard-library templates (see gemm_driver.hpp: no copy compiled with AVX instructions may
// be picked by the linker for baseline code).
#pragma once
#include <cstring>

#include "dwconv_impl.hpp"

namespace relprop {
namespace detail {
namespace {

#if defined(__clang__)
#define RELPROP_DW_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define RELPROP_DW_UNROLL _Pragma("GCC unroll 16")
#else
#define RELPROP_DW_UNROLL
#endif

// NV vectors of one output row: acc = bias + sum_k wc[wi_k] * src_k, in registers; the last
// vector stores only its first `last` lanes.
template <class V, int NV>
inline void dw_block(typename V::T* out, const typename V::T* base, idx at, const DwTap* taps,
                     idx ntaps, const typename V::T* wc, typename V::T bias, idx last) {
  using R = typename V::R;
  R acc[NV];
  const R b = V::bcast(&bias);
  RELPROP_DW_UNROLL
  for (int v = 0; v < NV; ++v) acc[v] = b;
  for (idx k = 0; k < ntaps; ++k) {
    const R wv = V::bcast(wc + taps[k].wi);
    const typename V::T* s = base + taps[k].off + at;
    RELPROP_DW_UNROLL
    for (int v = 0; v < NV; ++v) acc[v] = V::fma(wv, V::load(s + v * V::W), acc[v]);
  }
  RELPROP_DW_UNROLL
  for (int v = 0; v + 1 < NV; ++v) V::store(out + v * V::W, acc[v]);
  if (last == V::W)
    V::store(out + (NV - 1) * V::W, acc[NV - 1]);
  else
    V::store_range(out + (NV - 1) * V::W, acc[NV - 1], last);
}

template <class V>
void dw_rows(typename V::T* out, idx ldo, idx rows, idx cols, const typename V::T* base, idx lds,
             const DwTap* taps, idx ntaps, const typename V::T* wc, typename V::T bias) {
  constexpr int W = V::W, NB = 4;  // 4 vectors per block: the loads, not the FMAs, bound it
  for (idx r = 0; r < rows; ++r) {
    typename V::T* o = out + r * ldo;
    const idx row = r * lds;
    idx q = 0;
    for (; q + NB * W <= cols; q += NB * W) dw_block<V, NB>(o + q, base, row + q, taps, ntaps, wc, bias, W);
    const idx rem = cols - q;
    if (rem <= 0) continue;
    const idx nv = (rem + W - 1) / W, last = rem - (nv - 1) * W;
    switch (nv) {
      case 1:
        dw_block<V, 1>(o + q, base, row + q, taps, ntaps, wc, bias, last);
        break;
      case 2:
        dw_block<V, 2>(o + q, base, row + q, taps, ntaps, wc, bias, last);
        break;
      case 3:
        dw_block<V, 3>(o + q, base, row + q, taps, ntaps, wc, bias, last);
        break;
      default:  // rem < NB * W: at most NB vectors
        dw_block<V, NB>(o + q, base, row + q, taps, ntaps, wc, bias, last);
        break;
    }
  }
}

// Strided copies (the compiler vectorizes the stride-1 and stride-2 loops for the ISA).
template <typename T>
void dw_gather(T* dst, const T* src, idx n, idx stride) {
  if (stride == 1) {
    if (n > 0) std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(T));
  } else if (stride == 2) {
    for (idx c = 0; c < n; ++c) dst[c] = src[2 * c];
  } else {
    for (idx c = 0; c < n; ++c) dst[c] = src[c * stride];
  }
}

template <typename T>
void dw_scatter(T* dst, const T* src, idx n, idx stride) {
  if (stride == 1) {
    if (n > 0) std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(T));
  } else if (stride == 2) {
    for (idx c = 0; c < n; ++c) dst[2 * c] = src[c];
  } else {
    for (idx c = 0; c < n; ++c) dst[c * stride] = src[c];
  }
}

template <class V>
constexpr DwImpl<typename V::T> dw_table(Isa isa) {
  return DwImpl<typename V::T>{isa, V::W, &dw_rows<V>, &dw_gather<typename V::T>,
                               &dw_scatter<typename V::T>};
}

}  // namespace
}  // namespace detail
}  // namespace relprop

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

// RB rows of NV vectors each: acc = bias + sum_k wc[wi_k] * src_k, all RB*NV in registers;
// the last vector of each row stores only its first `last` lanes.
template <class V, int RB, int NV>
inline void dw_block(typename V::T* out, idx ldo, const typename V::T* base, idx lds,
                     const DwTap* taps, idx ntaps, const typename V::T* wc, typename V::T bias,
                     idx last) {
  using R = typename V::R;
  R acc[RB][NV];
  const R b = V::bcast(&bias);
  RELPROP_DW_UNROLL
  for (int r = 0; r < RB; ++r)
    RELPROP_DW_UNROLL
    for (int v = 0; v < NV; ++v) acc[r][v] = b;
  for (idx k = 0; k < ntaps; ++k) {
    const R wv = V::bcast(wc + taps[k].wi);
    const typename V::T* s = base + taps[k].off;
    RELPROP_DW_UNROLL
    for (int r = 0; r < RB; ++r)
      RELPROP_DW_UNROLL
      for (int v = 0; v < NV; ++v) acc[r][v] = V::fma(wv, V::load(s + r * lds + v * V::W), acc[r][v]);
  }
  RELPROP_DW_UNROLL
  for (int r = 0; r < RB; ++r) {
    typename V::T* o = out + r * ldo;
    RELPROP_DW_UNROLL
    for (int v = 0; v + 1 < NV; ++v) V::store(o + v * V::W, acc[r][v]);
    if (last == V::W)
      V::store(o + (NV - 1) * V::W, acc[r][NV - 1]);
    else
      V::store_range(o + (NV - 1) * V::W, acc[r][NV - 1], last);
  }
}

// dw_block<V, rb, nv> for run-time 1 <= rb <= RB, 1 <= nv <= NV with rb * nv <= NB.
template <class V, int NB, int NV, int RB>
inline void dw_block_rb(int rb, typename V::T* out, idx ldo, const typename V::T* base, idx lds,
                        const DwTap* taps, idx ntaps, const typename V::T* wc,
                        typename V::T bias, idx last) {
  if constexpr (RB > 1) {
    if (rb < RB) {
      dw_block_rb<V, NB, NV, RB - 1>(rb, out, ldo, base, lds, taps, ntaps, wc, bias, last);
      return;
    }
  }
  dw_block<V, RB, NV>(out, ldo, base, lds, taps, ntaps, wc, bias, last);
}

template <class V, int NB, int NV = NB>
inline void dw_block_any(int rb, int nv, typename V::T* out, idx ldo, const typename V::T* base,
                         idx lds, const DwTap* taps, idx ntaps, const typename V::T* wc,
                         typename V::T bias, idx last) {
  if constexpr (NV > 1) {
    if (nv < NV) {
      dw_block_any<V, NB, NV - 1>(rb, nv, out, ldo, base, lds, taps, ntaps, wc, bias, last);
      return;
    }
  }
  dw_block_rb<V, NB, NV, NB / NV>(rb, out, ldo, base, lds, taps, ntaps, wc, bias, last);
}

// Rows of at most NB vectors are computed NB / (vectors per row) rows at a time; longer rows
// in blocks of NB vectors and a shorter last block.
template <class V, int NB>
void dw_rows(typename V::T* out, idx ldo, idx rows, idx cols, const typename V::T* base, idx lds,
             const DwTap* taps, idx ntaps, const typename V::T* wc, typename V::T bias) {
  constexpr int W = V::W;
  const idx nv = (cols + W - 1) / W, last = cols - (nv - 1) * W;
  if (nv <= NB) {
    const idx rb = NB / nv;
    for (idx r = 0; r < rows; r += rb) {
      const int n = static_cast<int>(rows - r < rb ? rows - r : rb);
      dw_block_any<V, NB>(n, static_cast<int>(nv), out + r * ldo, ldo, base + r * lds, lds, taps,
                          ntaps, wc, bias, last);
    }
    return;
  }
  for (idx r = 0; r < rows; ++r) {
    typename V::T* o = out + r * ldo;
    const typename V::T* src = base + r * lds;
    idx q = 0;
    for (; q + NB * W < cols; q += NB * W)
      dw_block<V, 1, NB>(o + q, 0, src + q, 0, taps, ntaps, wc, bias, W);
    const idx rest = (cols - q + W - 1) / W;  // 1..NB vectors, the last one `last` lanes
    dw_block_any<V, NB>(1, static_cast<int>(rest), o + q, 0, src + q, 0, taps, ntaps, wc, bias,
                        last);
  }
}

// dst[0, n) = src[0, n) in vectors (rows too short for a memcpy call to pay); reads no
// element of src past n.
template <class V>
inline void dw_copy(typename V::T* dst, const typename V::T* src, idx n) {
  constexpr int W = V::W;
  idx c = 0;
  for (; c + W <= n; c += W) V::store(dst + c, V::load(src + c));
  if (c < n) V::store_range(dst + c, V::load_range(src + c, 0, n - c), n - c);
}

// dst[r*ldd + c] = src[r*lds + c*stride]
template <class V>
void dw_gather(typename V::T* dst, idx ldd, const typename V::T* src, idx lds, idx rows, idx cols,
               idx stride) {
  constexpr int W = V::W;
  for (idx r = 0; r < rows; ++r, dst += ldd, src += lds) {
    if (stride == 1) {
      dw_copy<V>(dst, src, cols);
      continue;
    }
    idx c = 0;
    if (stride == 2)  // the even lanes of two vectors: reads src[2c, 2c + 2W), all <= 2*(cols - 1)
      for (; 2 * (c + W) <= 2 * cols - 1; c += W) V::store(dst + c, V::evens(src + 2 * c));
    for (; c < cols; ++c) dst[c] = src[c * stride];
  }
}

// dst[r*ldd + 2i] = a[r*lds + i] for i < na, dst[r*ldd + 2i + 1] = b[r*lds + i] for i < nb
// (na - nb is 0 or 1): two phase rows of a stride-2 backward pass interleaved into gx rows.
template <class V>
void dw_zip(typename V::T* dst, idx ldd, const typename V::T* a, const typename V::T* b, idx lds,
            idx rows, idx na, idx nb) {
  constexpr int W = V::W;
  for (idx r = 0; r < rows; ++r, dst += ldd, a += lds, b += lds) {
    idx i = 0;
    for (; i + W <= nb; i += W) V::zip(dst + 2 * i, V::load(a + i), V::load(b + i));
    for (; i < nb; ++i) {
      dst[2 * i] = a[i];
      dst[2 * i + 1] = b[i];
    }
    if (na > nb) dst[2 * nb] = a[nb];
  }
}

// dst[r*ldd + c*stride] = src[r*lds + c]
template <class V>
void dw_scatter(typename V::T* dst, idx ldd, const typename V::T* src, idx lds, idx rows,
                idx cols, idx stride) {
  for (idx r = 0; r < rows; ++r, dst += ldd, src += lds) {
    if (stride == 1) {
      dw_copy<V>(dst, src, cols);
      continue;
    }
    for (idx c = 0; c < cols; ++c) dst[c * stride] = src[c];
  }
}

// ---- channel-blocked kernels: one vector holds one pixel of W channels -------------------

// Q consecutive output pixels, each a vector: acc_e = bias + sum_k wts[wi_k] * src_k(e), with
// src_k(e) = base + off_k + e*scs, stored at out + e*ocs.
template <class V, int Q>
inline void cb_block(typename V::T* out, idx ocs, const typename V::T* base, idx scs,
                     const DwTap* taps, idx ntaps, const typename V::T* wts,
                     const typename V::T* bias) {
  using R = typename V::R;
  R acc[Q];
  const R b = V::load(bias);
  RELPROP_DW_UNROLL
  for (int e = 0; e < Q; ++e) acc[e] = b;
  for (idx k = 0; k < ntaps; ++k) {
    const R wv = V::load(wts + taps[k].wi * V::W);
    const typename V::T* s = base + taps[k].off;
    RELPROP_DW_UNROLL
    for (int e = 0; e < Q; ++e) acc[e] = V::fma(wv, V::load(s + e * scs), acc[e]);
  }
  RELPROP_DW_UNROLL
  for (int e = 0; e < Q; ++e) V::store(out + e * ocs, acc[e]);
}

template <class V, int Q>
inline void cb_block_any(int q, typename V::T* out, idx ocs, const typename V::T* base, idx scs,
                         const DwTap* taps, idx ntaps, const typename V::T* wts,
                         const typename V::T* bias) {
  if constexpr (Q > 1) {
    if (q < Q) {
      cb_block_any<V, Q - 1>(q, out, ocs, base, scs, taps, ntaps, wts, bias);
      return;
    }
  }
  cb_block<V, Q>(out, ocs, base, scs, taps, ntaps, wts, bias);
}

// out[r*ors + q*ocs] = bias + sum_k wts[wi_k] * base[off_k + r*srs + q*scs]  (vectors of W
// channels; r < rows, q < cols), NB pixels of a row at a time.
template <class V, int NB>
void cb_rows(typename V::T* out, idx ors, idx ocs, idx rows, idx cols, const typename V::T* base,
             idx srs, idx scs, const DwTap* taps, idx ntaps, const typename V::T* wts,
             const typename V::T* bias) {
  for (idx r = 0; r < rows; ++r)
    for (idx q = 0; q < cols; q += NB) {
      const int n = static_cast<int>(cols - q < NB ? cols - q : NB);
      cb_block_any<V, NB>(n, out + r * ors + q * ocs, ocs, base + r * srs + q * scs, scs, taps,
                          ntaps, wts, bias);
    }
}

// dst[r*drs + c*W + l] = src[l*scs + r*srs + c] for l < lanes, r < rows, c < cols (lanes >=
// `lanes` of the pixels are left as they are).  Whole blocks of W channels go through W x W
// register transposes: of W consecutive pixels of contiguous planes (srs == cols, any row
// length) via a tile, else of W pixels of a row.
template <class V>
void cb_pack(typename V::T* dst, idx drs, const typename V::T* src, idx scs, idx srs, idx rows,
             idx cols, int lanes) {
  using T = typename V::T;
  constexpr int W = V::W;
  if (lanes == W && srs == cols) {
    alignas(64) T tile[W * W];
    const idx n = rows * cols;
    idx t = 0, r = 0, c = 0;  // pixel t is (r, c)
    for (; t + W <= n; t += W) {
      V::transpose(src + t, scs, tile, W);
      for (int e = 0; e < W; ++e) {
        V::store(dst + r * drs + c * W, V::load(tile + e * W));
        if (++c == cols) c = 0, ++r;
      }
    }
    for (; t < n; ++t) {
      for (int l = 0; l < W; ++l) dst[r * drs + c * W + l] = src[l * scs + t];
      if (++c == cols) c = 0, ++r;
    }
    return;
  }
  for (idx r = 0; r < rows; ++r) {
    T* d = dst + r * drs;
    const T* sr = src + r * srs;
    idx c = 0;
    if (lanes == W)
      for (; c + W <= cols; c += W) V::transpose(sr + c, scs, d + c * W, W);
    for (; c < cols; ++c)
      for (int l = 0; l < lanes; ++l) d[c * W + l] = sr[l * scs + c];
  }
}

// dst[l*dcs + t] = src[t*W + l] for l < lanes, t < n.
template <class V>
void cb_unpack(typename V::T* dst, idx dcs, const typename V::T* src, idx n, int lanes) {
  constexpr int W = V::W;
  idx t = 0;
  if (lanes == W)
    for (; t + W <= n; t += W) V::transpose(src + t * W, W, dst + t, dcs);
  for (; t < n; ++t)
    for (int l = 0; l < lanes; ++l) dst[l * dcs + t] = src[t * W + l];
}

// NB: vectors of outputs kept in registers per block (as many accumulators as the FMA
// latency times the FMA pipes needs, within the register file).
template <class V, int NB>
constexpr DwImpl<typename V::T> dw_table(Isa isa) {
  return DwImpl<typename V::T>{isa,           V::W,         NB,          &dw_rows<V, NB>,
                               &dw_gather<V>, &dw_scatter<V>, &dw_zip<V>,  &cb_rows<V, NB>,
                               &cb_pack<V>,   &cb_unpack<V>};
}

}  // namespace
}  // namespace detail
}  // namespace relprop

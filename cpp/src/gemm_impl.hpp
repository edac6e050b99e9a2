// Internals of the GEMM core shared by the driver (gemm.cpp), the micro-kernel translation units
// (gemm_generic.cpp, gemm_avx2.cpp, gemm_avx512.cpp) and Conv2d (conv2d.cpp).
//
// Scheme (BLIS): C is cut into blocks of nc columns; for each block of kc reduction steps a
// kc x nc panel of B is packed into NR-wide column strips, then, for each block of mc rows, an
// mc x kc panel of A into MR-high row strips; the micro-kernel multiplies one A strip by one B
// strip, keeping the MR x NR tile of C in vector registers, and adds it to C once per kc block.
// So every C(i, j) is  (((init + s_0) + s_1) + ...)  where s_b is the sum over the b-th block of
// kc steps, each accumulated in ascending p; the block size is ceil(k / ceil(k / kc_max)) with
// kc_max fixed per ISA and element type: it depends on k alone, never on the thread count or
// on m and n.  Threads only split C into
// independent rectangles: results are bitwise identical for any thread count, and a row of C
// does not depend on the other rows (batch size) either.
//
// This header only declares plain structs and functions: nothing here is compiled with
// ISA-specific flags (see gemm_driver.hpp for the code that is).
#pragma once
#include <cstddef>

#include "relprop/cpu.hpp"
#include "relprop/gemm.hpp"

namespace relprop {
namespace detail {

// B as the implicit im2col matrix of one image x (c, h, w) for a window (kh, kw), stride
// (sh, sw), zero padding (ph, pw), dilation (dh, dw) and output size (oh, ow):
//   B(p, j) = x[c, oh_j*sh + u*dh - ph, ow_j*sw + v*dw - pw]   (0 outside the image)
//   with p = (c*kh + u)*kw + v and j = oh_j*ow + ow_j.
struct Im2col {
  idx c, h, w, kh, kw, sh, sw, ph, pw, oh, ow;
  idx dh = 1, dw = 1;
};

// What the GEMM does to each finished C(i, j) before it stores it (after the last block of
// steps, so the sum itself is the plain GEMM's): the fused element-wise step of the layer.
//   relu:  C = C if C > 0 or C is NaN, else +0          (relu_forward of the sum)
//   mask:  C = C if aux(i, j) > 0, else +0              (relu_backward with x = aux)
//   scale: C = C * aux(i, j)                            (LRP's product with the layer input)
// aux(i, j) = aux[i*ldx + j].  Each is bitwise the separate element-wise pass on the result.
enum class Epilogue : int { none = 0, relu = 1, mask = 2, scale = 3 };

// The scalar epilogue (v the finished sum, x = aux(i, j), unread for none and relu).
// (static: internal linkage, as everything the ISA units compile, see gemm_driver.hpp)
template <typename T>
static inline T epilogue_scalar(Epilogue e, T v, T x) {
  switch (e) {
    case Epilogue::relu:
      return (v > T(0) || v != v) ? v : T(0);
    case Epilogue::mask:
      return x > T(0) ? v : T(0);
    case Epilogue::scale:
      return v * x;
    default:
      return v;
  }
}

// A prologue on A (dense layers): A(i, p) = lrp_divide(a, den) = a / stab(den) with eps, where
// den(i, p) = den[i*rsa + p*csa] (A's own strides), made while A is packed (see pack_a_block).
// stab(d) = d + eps*sign(d), sign(0) = +1; 0 where that denominator is 0 (elementwise.cpp's
// stabilized_divide, bitwise).
template <typename T>
static inline T stabilized_divide(T r, T z, T eps) {
  const T d = z + (z >= T(0) ? eps : -eps);
  const T q = r / (d != T(0) ? d : T(1));
  return d != T(0) ? q : T(0);
}

// One GEMM problem:  C(i, j) = init(i, j) + sum_p A(i, p) B(p, j)   for i < m, j < n, p < k.
// init is C(i, j) if accumulate, else row_bias[i] if given, else col_bias[j] if given, else 0;
// then the epilogue.
template <typename T>
struct GemmArgs {
  idx m = 0, n = 0, k = 0;
  const T* a = nullptr;        // A(i, p) = a[i*rsa + p*csa] ...
  idx rsa = 0, csa = 0;
  const T* apack = nullptr;    // ... or A packed whole by GemmImpl::pack_a (then a is unused)
  const T* b = nullptr;        // B(p, j) = b[p*rsb + j*csb] ...
  idx rsb = 0, csb = 0;
  const Im2col* im = nullptr;  // ... or the im2col matrix of the image b ...
  const T* bpack = nullptr;    // ... or B packed whole by GemmImpl::pack_b (then b is unused)
  T* c = nullptr;              // C(i, j) = c[i*ldc + j] ...
  idx ldc = 0;
  T* c2 = nullptr;             // ... except rows i >= m2 when c2 is set: c2[(i - m2)*ldc + j]
  idx m2 = 0;                  //     (one GEMM writing two outputs, e.g. z and z+ of LRP)
  bool accumulate = false;
  const T* row_bias = nullptr;  // (m,) ignored if accumulate
  const T* col_bias = nullptr;  // (n,) ignored if accumulate or row_bias is set
  Epilogue epilogue = Epilogue::none;
  const T* aux = nullptr;       // mask and scale: aux(i, j) = aux[i*ldx + j] (c2 must be null)
  idx ldx = 0;
  const T* a_den = nullptr;     // prologue: A(i, p) = a(i, p) / stab(a_den(i, p)) (not apack)
  T a_eps = T(0);
};

// A problem with A(i, p) = a[i*rsa + p*csa] and C(i, j) = c[i*ldc + j]; B is the caller's to
// give (b, im or bpack).
template <typename T>
GemmArgs<T> gemm_args(idx m, idx n, idx k, const T* a, idx rsa, idx csa, T* c, idx ldc) {
  GemmArgs<T> g;
  g.m = m;
  g.n = n;
  g.k = k;
  g.a = a;
  g.rsa = rsa;
  g.csa = csa;
  g.c = c;
  g.ldc = ldc;
  return g;
}

// ... and B(p, j) = b[p*rsb + j*csb].
template <typename T>
GemmArgs<T> gemm_args(idx m, idx n, idx k, const T* a, idx rsa, idx csa, const T* b, idx rsb,
                      idx csb, T* c, idx ldc) {
  GemmArgs<T> g = gemm_args(m, n, k, a, rsa, csa, c, ldc);
  g.b = b;
  g.rsb = rsb;
  g.csb = csb;
  return g;
}

// The kernels of one ISA and element type, with its register tile and cache blocks.
template <typename T>
struct GemmImpl {
  Isa isa;
  int mr, nr;      // register tile of C
  idx mc, kc, nc;  // cache blocks (mc a multiple of mr, nc of nr)
  // C(i, j) for i0 <= i < i1, j0 <= j < j1 (i0 a multiple of mr), packing into wa and wb
  // (64-byte aligned, of the sizes tile_scratch_size gives; see tile() in gemm_driver.hpp).
  void (*tile)(const GemmImpl& impl, const GemmArgs<T>& g, idx i0, idx i1, idx j0, idx j1, T* wa,
               T* wb);
  // Packs the whole m x k matrix A(i, p) = a[i*rsa + p*csa] into dst, which holds
  // packed_a_size(m, k) elements, in the layout tile() reads through GemmArgs::apack.
  void (*pack_a)(const GemmImpl& impl, const T* a, idx rsa, idx csa, idx m, idx k, T* dst);
  // Packs the whole k x n matrix B(p, j) = b[p*rsb + j*csb] into dst, which holds
  // packed_b_size(k, n) elements, in the layout tile() reads through GemmArgs::bpack.
  void (*pack_b)(const GemmImpl& impl, const T* b, idx rsb, idx csb, idx k, idx n, T* dst);
  // Runs a register-resident FMA loop of `iters` iterations; returns the FLOP it executed.
  double (*fma_loop)(long iters);
  // C(0, j) for j0 <= j < j1 of a one-row problem (m = 1) whose B has contiguous rows
  // (csb == 1, no bpack): each block of steps as rank-1 updates of a row of block sums (B read
  // row by row, front to back), every C(0, j) summed in tile()'s order (bitwise its result).
  // tmp holds gemv_chunk elements.
  void (*gemv)(const GemmImpl& impl, const GemmArgs<T>& g, idx j0, idx j1, T* tmp);
  static constexpr idx gemv_chunk = 32768;

  // (Only the baseline translation units call these helpers; the ISA ones must not, so that
  // no copy of them is compiled with ISA-specific instructions.)
  idx packed_a_size(idx m, idx k) const { return (m + mr - 1) / mr * mr * k; }
  idx packed_b_size(idx k, idx n) const { return (n + nr - 1) / nr * nr * k; }
};

// Tables defined by the micro-kernel translation units (only those compiled for this target).
namespace generic {
extern const GemmImpl<float> f32;
extern const GemmImpl<double> f64;
}  // namespace generic
#if defined(RELPROP_HAVE_AVX2)
namespace avx2 {
extern const GemmImpl<float> f32;
extern const GemmImpl<double> f64;
}  // namespace avx2
#endif
#if defined(RELPROP_HAVE_AVX512)
namespace avx512 {
extern const GemmImpl<float> f32;
extern const GemmImpl<double> f64;
}  // namespace avx512
#endif

// The kernels of the active ISA (see relprop/cpu.hpp).
template <typename T>
const GemmImpl<T>& active_gemm();
template <>
const GemmImpl<float>& active_gemm<float>();
template <>
const GemmImpl<double>& active_gemm<double>();

// The buffers tile() packs into for tiles of g of at most rows x cols: A panels (wa; with the A
// prologue also a block of quotients) and B panels (wb), in elements, each a multiple of 64
// bytes.  A caller running tiles on nt threads makes Workspace<T>(wa + wb, nt) before its
// parallel region and gives each thread its part (relprop/workspace.hpp).
struct TileScratch {
  idx wa = 0, wb = 0;
  idx total() const { return wa + wb; }
};
template <typename T>
TileScratch tile_scratch_size(const GemmImpl<T>& impl, const GemmArgs<T>& g, idx rows, idx cols);

// A rectangle of C per thread: rows [i0, i1), columns [j0, j1).
struct Split {
  int tm = 1, tn = 1;  // threads along m and along n; tm * tn threads in all
};

// How to cut an m x n problem among nt threads (m in strips of mr, n of nr): balances the work
// and the packing each thread repeats (pack_a = false when A is packed beforehand).
Split choose_split(idx m, idx n, idx k, int mr, int nr, int nt, bool pack_a);

// [lo, hi) of the part-th of `parts` nearly equal pieces of [0, units)
inline void share(idx units, int parts, int part, idx& lo, idx& hi) {
  lo = units * part / parts;
  hi = units * (part + 1) / parts;
}

// Runs g on up to nthreads threads (one OpenMP region; rectangles of C per thread).
template <typename T>
void run_gemm(const GemmImpl<T>& impl, const GemmArgs<T>& g, int nthreads);

// Runs the rectangle [i0, i1) x [j0, j1) of g on the calling thread (any thread, also inside
// an OpenMP region), packing into buf: tile_scratch_size(impl, g, rows, cols).total()
// elements for some rows >= i1 - i0 and cols >= j1 - j0 (null when that is 0).
template <typename T>
void run_tile(const GemmImpl<T>& impl, const GemmArgs<T>& g, idx i0, idx i1, idx j0, idx j1,
              T* buf);

}  // namespace detail
}  // namespace relprop

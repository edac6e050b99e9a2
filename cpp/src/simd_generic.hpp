// Portable vector policy (GCC/Clang vector extensions: 16-byte vectors, SSE2 on baseline
// x86-64, NEON on AArch64, scalar code elsewhere) for the kernel templates of
// dwconv_kernels.hpp; the same interface as simd_avx2.hpp.  Internal linkage.
#pragma once
#include <cstring>

#include "gemm_impl.hpp"

namespace relprop {
namespace detail {
namespace {

template <typename T_>
struct PortableVec {
  using T = T_;
  static constexpr int W = static_cast<int>(16 / sizeof(T));
  typedef T R __attribute__((vector_size(16)));
  static R zero() { return R{}; }
  static R load(const T* p) {
    R v;
    std::memcpy(&v, p, sizeof(R));
    return v;
  }
  static R bcast(const T* p) { return R{} + *p; }
  static R fma(R a, R b, R c) { return a * b + c; }
  static R add(R a, R b) { return a + b; }
  static void store(T* p, R v) { std::memcpy(p, &v, sizeof(R)); }
  static void store_range(T* p, R v, idx n) {  // lanes [0, n) only
    for (idx l = 0; l < n && l < W; ++l) p[l] = v[l];
  }
  static R load_range(const T* p, idx lo, idx hi) {  // lanes lo <= l < hi, others 0, not read
    R v{};
    for (idx l = lo < 0 ? 0 : lo; l < hi && l < W; ++l) v[l] = p[l];
    return v;
  }
  static void transpose(const T* src, idx ld, T* dst, idx ldd) {  // dst[q*ldd + r] = src[r*ld + q]
    for (int r = 0; r < W; ++r)
      for (int q = 0; q < W; ++q) dst[q * ldd + r] = src[r * ld + q];
  }
  static void zip(T* p, R a, R b) {  // p[2l] = a[l], p[2l + 1] = b[l]
    for (int l = 0; l < W; ++l) {
      p[2 * l] = a[l];
      p[2 * l + 1] = b[l];
    }
  }
  static R evens(const T* p) {  // p[0], p[2], ..., p[2W - 2] (reads p[0, 2W))
    R v;
    for (int l = 0; l < W; ++l) v[l] = p[2 * l];
    return v;
  }
};

}  // namespace
}  // namespace detail
}  // namespace relprop

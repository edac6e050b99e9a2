// The one place where Dense and Conv2d multiply: a packed, register-blocked GEMM (BLIS scheme)
// with AVX-512, AVX2+FMA and portable micro-kernels, chosen at run time (relprop/cpu.hpp).
#pragma once
#include <cstdint>

namespace relprop {

using idx = std::int64_t;

// c[i, j] (+)= sum_p A(i, p) * B(p, j)   for i < m, j < n, p < k
//   A(i, p) = a[i * rsa + p * csa],  B(p, j) = b[p * rsb + j * csb],  c row-major with leading dim ldc.
// accumulate=false overwrites c.  Each c[i, j] is reduced over p in ascending order in blocks of
// a size fixed per ISA and type (whatever the thread count and the other rows/columns), so
// results are bitwise identical for any nthreads and batch size.  c must not overlap a or b.
template <typename T>
void gemm(idx m, idx n, idx k, const T* a, idx rsa, idx csa, const T* b, idx rsb, idx csb, T* c,
          idx ldc, bool accumulate, int nthreads);

// B packed once for many products (weights): packed_b_size(k, n) elements in the layout of the
// instruction set in use when pack_b ran; gemm_packed_b must run under the same one.  Results
// are bitwise those of gemm on the unpacked B.
template <typename T>
idx packed_b_size(idx k, idx n);
template <typename T>
void pack_b(idx k, idx n, const T* b, idx rsb, idx csb, T* dst);
template <typename T>
void gemm_packed_b(idx m, idx n, idx k, const T* a, idx rsa, idx csa, const T* bpack, T* c,
                   idx ldc, bool accumulate, int nthreads);

// The register tile (mr x nr) and cache blocks (mc, kc, nc) of an ISA's GEMM (its table:
// relprop/plan.hpp's isa_config).
struct GemmBlocks {
  int mr, nr;
  idx mc, kc, nc;
};

}  // namespace relprop

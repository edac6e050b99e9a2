// The one place where Dense and Conv2d multiply: a strided, cache-blocked GEMM.
#pragma once
#include <cstdint>

namespace relprop {

using idx = std::int64_t;

// c[i, j] (+)= sum_p A(i, p) * B(p, j)   for i < m, j < n, p < k
//   A(i, p) = a[i * rsa + p * csa],  B(p, j) = b[p * rsb + j * csb],  c row-major with leading dim ldc.
// accumulate=false overwrites c.  Each c[i, j] is reduced over p in ascending order in fixed-size
// blocks whatever the thread count, so results are bitwise identical for any nthreads.
template <typename T>
void gemm(idx m, idx n, idx k, const T* a, idx rsa, idx csa, const T* b, idx rsb, idx csb, T* c,
          idx ldc, bool accumulate, int nthreads);

}  // namespace relprop

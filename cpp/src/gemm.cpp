// Cache-blocked GEMM: c (+)= A B on strided operands.  Parallel over output tiles only.
#include "relprop/gemm.hpp"

#include <algorithm>
#include <vector>

#include "relprop/parallel.hpp"

namespace relprop {
namespace {

constexpr idx kMB = 64;   // rows of C per tile
constexpr idx kNB = 256;  // columns of C per tile
constexpr idx kKB = 256;  // reduction block

}  // namespace

template <typename T>
void gemm(idx m, idx n, idx k, const T* a, idx rsa, idx csa, const T* b, idx rsb, idx csb, T* c,
          idx ldc, bool accumulate, int nthreads) {
  if (m <= 0 || n <= 0) return;
  if (!accumulate) {
    for (idx i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, T(0));
  }
  if (k <= 0) return;
  const idx tm = (m + kMB - 1) / kMB, tn = (n + kNB - 1) / kNB;
  const int nt = threads_for(nthreads, tm * tn, m * n * k);
#pragma omp parallel num_threads(nt)
  {
    std::vector<T> ap(kMB * kKB), bp(kKB * kNB);
#pragma omp for collapse(2) schedule(static)
    for (idx ti = 0; ti < tm; ++ti) {
      for (idx tj = 0; tj < tn; ++tj) {
        const idx i0 = ti * kMB, j0 = tj * kNB;
        const idx mb = std::min(kMB, m - i0), nb = std::min(kNB, n - j0);
        for (idx p0 = 0; p0 < k; p0 += kKB) {
          const idx kb = std::min(kKB, k - p0);
          for (idx i = 0; i < mb; ++i)
            for (idx p = 0; p < kb; ++p) ap[i * kb + p] = a[(i0 + i) * rsa + (p0 + p) * csa];
          for (idx p = 0; p < kb; ++p)
            for (idx j = 0; j < nb; ++j) bp[p * nb + j] = b[(p0 + p) * rsb + (j0 + j) * csb];
          for (idx i = 0; i < mb; ++i) {
            T* ci = c + (i0 + i) * ldc + j0;
            for (idx p = 0; p < kb; ++p) {
              const T av = ap[i * kb + p];
              const T* bpp = bp.data() + p * nb;
#pragma omp simd
              for (idx j = 0; j < nb; ++j) ci[j] += av * bpp[j];
            }
          }
        }
      }
    }
  }
}

template void gemm<float>(idx, idx, idx, const float*, idx, idx, const float*, idx, idx, float*,
                          idx, bool, int);
template void gemm<double>(idx, idx, idx, const double*, idx, idx, const double*, idx, idx,
                           double*, idx, bool, int);

}  // namespace relprop

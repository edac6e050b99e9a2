// Thread-count helpers; compiles with and without OpenMP.
#pragma once
#include <cstdint>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace relprop {

// Below this many multiply-adds a loop runs on one thread (thread start-up dominates).
constexpr std::int64_t kMinParallelWork = 1 << 15;

inline bool has_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

// nthreads <= 0 means "the OpenMP default".
inline int resolve_threads(int nthreads) {
#ifdef _OPENMP
  return nthreads > 0 ? nthreads : omp_get_max_threads();
#else
  (void)nthreads;
  return 1;
#endif
}

// The calling thread's index within its OpenMP team (0 outside parallel regions).
inline int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Threads to use for `tasks` independent tasks of `work` multiply-adds in total.
inline int threads_for(int nthreads, std::int64_t tasks, std::int64_t work) {
  int t = resolve_threads(nthreads);
  if (work < kMinParallelWork) return 1;
  if (tasks < t) t = static_cast<int>(tasks < 1 ? 1 : tasks);
  return t;
}

}  // namespace relprop

// Thread-count helpers; compiles with and without OpenMP.
#pragma once
#include <atomic>
#include <cstdint>
#include <exception>
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

namespace detail {
// Whether this thread has asked for a team of several OpenMP threads, and whether it must not
// any more: in a forked child, the thread that forked runs kernels on one thread (see
// relprop/fork.hpp).
inline thread_local bool t_started_team = false;
inline thread_local bool t_one_thread = false;
}  // namespace detail

// nthreads <= 0 means "the OpenMP default".
inline int resolve_threads(int nthreads) {
#ifdef _OPENMP
  if (detail::t_one_thread) return 1;
  const int t = nthreads > 0 ? nthreads : omp_get_max_threads();
  if (t > 1) detail::t_started_team = true;
  return t;
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

// What an OpenMP loop's tasks share to carry an exception out of the region: no exception may
// leave an OpenMP region (the process would end).  Kernels allocate before their regions
// (relprop/workspace.hpp), so their tasks do not throw; should one, the exception is caught in
// its thread, the tasks not yet started are skipped, and the first exception is rethrown after
// the threads have joined, as hnswlib's ParallelFor does.
class TaskErrors {
 public:
  template <class Body>
  void run(Body& body, std::int64_t t) {
    if (failed_.load(std::memory_order_relaxed)) return;
    try {
      body(t);
    } catch (...) {
#pragma omp critical(relprop_task_errors)
      {
        if (!error_) error_ = std::current_exception();
      }
      failed_.store(true, std::memory_order_relaxed);
    }
  }
  void rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::exception_ptr error_;
  std::atomic<bool> failed_{false};
};

// Runs body(t) for t = 0, ..., tasks - 1 on nt threads (OpenMP, static schedule: task t runs on
// the same thread for any call with the same nt); an exception a task throws is rethrown here
// (TaskErrors).
template <class Body>
void parallel_for(int nt, std::int64_t tasks, Body&& body) {
  TaskErrors errors;
#pragma omp parallel for schedule(static) num_threads(nt)
  for (std::int64_t t = 0; t < tasks; ++t) errors.run(body, t);
  (void)nt;
  errors.rethrow();
}

// parallel_for with a dynamic schedule: each task goes to the next free thread, so a thread
// the operating system takes away (a busy machine) holds up one task, not a fixed share of
// them.  Use it only where which thread runs a task changes no result (every task computes
// fixed values); exceptions are handled as in parallel_for.
template <class Body>
void parallel_for_dynamic(int nt, std::int64_t tasks, Body&& body) {
  TaskErrors errors;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (std::int64_t t = 0; t < tasks; ++t) errors.run(body, t);
  (void)nt;
  errors.rethrow();
}

}  // namespace relprop

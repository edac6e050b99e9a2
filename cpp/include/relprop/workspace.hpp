// The kernels' scratch memory: every buffer a kernel needs beyond its inputs and outputs (packed
// panels, per-thread tiles, transformed weights, padded planes) is a Workspace of that call.
//
//   Workspace<float> buf(per_thread, nt);          // before the parallel region
//   #pragma omp parallel ... { float* mine = buf.part(thread_index()); ... }
//
// A Workspace is made before any parallel region, so an allocation failure is a std::bad_alloc
// in the calling thread (a MemoryError in Python), never an exception inside a region; it goes
// back when the call ends.  While it lives it is counted by relprop::memory
// (relprop.ops.memory_stats()).  Blocks of pool::kMinBytes or more come from relprop's pool,
// which keeps them mapped for the next call (no page faults) until relprop.release_memory();
// smaller ones from the heap, as small outputs do.  No kernel keeps memory between calls, so a
// call's buffers are its own: no two kernels share a buffer, and nothing is left per thread.
//
// Under AddressSanitizer every block comes from the heap at its exact size, so that a kernel
// reading or writing past its workspace is reported (pool blocks are whole mapped pages).
#pragma once
#include <atomic>
#include <cstddef>
#include <limits>
#include <new>

#include "relprop/gemm.hpp"
#include "relprop/memory.hpp"
#include "relprop/pool.hpp"

#if defined(__SANITIZE_ADDRESS__)
#define RELPROP_WORKSPACE_HEAP_ONLY 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define RELPROP_WORKSPACE_HEAP_ONLY 1
#endif
#endif

namespace relprop {

namespace testing {
// Test-only: while on, every workspace allocation throws std::bad_alloc.
inline std::atomic<bool> g_fail_allocations{false};
inline void fail_allocations(bool on) { g_fail_allocations.store(on, std::memory_order_relaxed); }
}  // namespace testing

namespace workspace {

// Parts of a workspace start on 64-byte boundaries (the GEMM's packed panels need it).
constexpr std::size_t kAlign = 64;

inline bool from_pool(std::size_t bytes) {
#if defined(RELPROP_WORKSPACE_HEAP_ONLY)
  (void)bytes;
  return false;
#else
  return bytes >= pool::kMinBytes;
#endif
}

// `bytes` of counted scratch memory, 64-byte aligned; throws std::bad_alloc.
inline void* acquire(std::size_t bytes) {
  if (testing::g_fail_allocations.load(std::memory_order_relaxed)) throw std::bad_alloc();
  if (from_pool(bytes)) return pool::acquire(bytes);  // counted by the pool
  void* p = ::operator new(bytes, std::align_val_t{kAlign});
  memory::note_alloc(bytes);
  return p;
}

inline void release(void* p, std::size_t bytes) noexcept {
  if (from_pool(bytes)) {
    pool::release(p);
    return;
  }
  memory::note_free(bytes);
  ::operator delete(p, std::align_val_t{kAlign});
}

}  // namespace workspace

// `parts` slices of `elements` T each (one per thread, each 64-byte aligned), uninitialized.
template <typename T>
class Workspace {
 public:
  explicit Workspace(idx elements, idx parts = 1) {
    constexpr idx unit = static_cast<idx>(workspace::kAlign / sizeof(T));
    stride_ = elements > 0 ? (elements + unit - 1) / unit * unit : 0;
    if (stride_ == 0 || parts <= 0) return;
    constexpr idx most = std::numeric_limits<idx>::max() / static_cast<idx>(sizeof(T));
    if (stride_ > most / parts) throw std::bad_alloc();
    bytes_ = static_cast<std::size_t>(stride_ * parts) * sizeof(T);
    p_ = static_cast<T*>(workspace::acquire(bytes_));
  }
  ~Workspace() {
    if (p_) workspace::release(p_, bytes_);
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  T* data() const { return p_; }
  // slice t (0 <= t < parts)
  T* part(idx t) const { return p_ + t * stride_; }

 private:
  T* p_ = nullptr;
  idx stride_ = 0;
  std::size_t bytes_ = 0;
};

}  // namespace relprop

// Counters of the memory the kernels hold: their workspaces (relprop/workspace.hpp) and the
// output blocks in use on relprop's pool (relprop/pool.hpp), for relprop.ops.memory_stats().
//
//   relprop::memory::current_bytes(), peak_bytes(), reset_peak()
//
// The counters are process-wide atomics (relaxed: they order nothing, they only count), so
// memory taken by any thread is counted.  Small outputs (NumPy's own arrays) are not counted
// here: tracemalloc sees them.
#pragma once
#include <atomic>
#include <cstddef>

namespace relprop {
namespace memory {

inline std::atomic<std::size_t> g_current{0};
inline std::atomic<std::size_t> g_peak{0};

// Record `bytes` more in use, raising the peak if needed.
inline void note_alloc(std::size_t bytes) noexcept {
  const std::size_t now = g_current.fetch_add(bytes, std::memory_order_relaxed) + bytes;
  std::size_t peak = g_peak.load(std::memory_order_relaxed);
  while (now > peak && !g_peak.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
  }
}

inline void note_free(std::size_t bytes) noexcept {
  g_current.fetch_sub(bytes, std::memory_order_relaxed);
}

inline std::size_t current_bytes() noexcept { return g_current.load(std::memory_order_relaxed); }
inline std::size_t peak_bytes() noexcept { return g_peak.load(std::memory_order_relaxed); }
// Start a new measurement: the peak becomes what is in use now.
inline void reset_peak() noexcept { g_peak.store(current_bytes(), std::memory_order_relaxed); }

}  // namespace memory
}  // namespace relprop

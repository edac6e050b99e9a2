// Counting allocator: the bytes the kernels hold in scratch buffers, for memory-bound tests.
//
//   std::vector<T, relprop::CountingAllocator<T>> cols(n);   // counted while it lives
//   relprop::memory::current_bytes(), peak_bytes(), reset_peak()
//
// The counters are process-wide atomics (relaxed: they order nothing, they only count), so
// buffers made inside OpenMP regions are counted from every thread.  Memory returned to Python
// (NumPy arrays) is not counted here: tracemalloc sees it.
#pragma once
#include <atomic>
#include <cstddef>
#include <limits>
#include <new>
#include <utility>

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

// A std::allocator that reports every allocation to relprop::memory (throws std::bad_alloc
// like std::allocator; never use it where the exception could leave an OpenMP region).
template <typename T>
struct CountingAllocator {
  using value_type = T;

  CountingAllocator() noexcept = default;
  template <typename U>
  CountingAllocator(const CountingAllocator<U>&) noexcept {}

  T* allocate(std::size_t n) {
    if (n > std::numeric_limits<std::size_t>::max() / sizeof(T)) throw std::bad_array_new_length();
    T* p = static_cast<T*>(::operator new(n * sizeof(T)));
    memory::note_alloc(n * sizeof(T));
    return p;
  }

  void deallocate(T* p, std::size_t n) noexcept {
    // counted first: n comes from the vector's pointers, which GCC 12 would otherwise see used
    // after the delete (a false -Wuse-after-free)
    memory::note_free(n * sizeof(T));
    ::operator delete(p);
  }

  // `std::vector<T, CountingAllocator<T>> v(n)` default-initializes: no zero fill of scratch
  // that the kernels write before they read it (packed panels, column buffers).
  template <typename U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

template <typename T, typename U>
bool operator==(const CountingAllocator<T>&, const CountingAllocator<U>&) noexcept {
  return true;
}
template <typename T, typename U>
bool operator!=(const CountingAllocator<T>&, const CountingAllocator<U>&) noexcept {
  return false;
}

}  // namespace relprop

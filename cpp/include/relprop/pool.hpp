// A pool of output buffers: large blocks freed by Python are kept and handed out again.
//
// A fresh allocation of many megabytes is mapped by the operating system page by page (or huge
// page by huge page) at first touch and zeroed on the way: on a CNN's activations that was
// about a fifth of a gradient call.  Every call of a network allocates the same sizes again, so
// blocks freed by one call are reused by the next one, already mapped.
//
// Bound: the blocks the pool keeps plus those in use never exceed the largest amount in use at
// any earlier moment (a miss evicts cached blocks, largest first, until that holds again), so
// the pool does not raise the process's memory high-water mark; release_cached() returns
// everything it keeps to the system.  Blocks in use are counted by relprop::memory.
//
//   void* p = pool::acquire(bytes);   // page (at least 64-byte) aligned; throws std::bad_alloc
//   pool::release(p);                 // from any thread
#pragma once
#include <algorithm>
#include <cstddef>
#include <iterator>
#include <map>
#include <mutex>
#include <new>
#include <unordered_map>

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#endif

#include "relprop/memory.hpp"

namespace relprop {
namespace pool {

// Smaller outputs come from the ordinary allocator (the heap reuses them without page faults).
constexpr std::size_t kMinBytes = std::size_t(1) << 18;

// Blocks are mappings of their own (POSIX), so a block the pool lets go of leaves the process
// at once instead of fragmenting the heap; huge pages are asked for, as NumPy does for large
// arrays.  Elsewhere, 64-byte aligned operator new.
inline void* map_block(std::size_t bytes) {
#if defined(__unix__) || defined(__APPLE__)
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
#if defined(MADV_HUGEPAGE)
  if (bytes >= (std::size_t(4) << 20)) madvise(p, bytes, MADV_HUGEPAGE);
#endif
  return p;
#else
  return ::operator new(bytes, std::align_val_t{64});
#endif
}

inline void unmap_block(void* p, std::size_t bytes) noexcept {
#if defined(__unix__) || defined(__APPLE__)
  munmap(p, bytes);
#else
  (void)bytes;
  ::operator delete(p, std::align_val_t{64});
#endif
}

struct State {
  std::mutex mu;
  std::multimap<std::size_t, void*> cached;  // free blocks by size
  std::unordered_map<void*, std::size_t> live;
  std::size_t live_bytes = 0, cached_bytes = 0, peak_live = 0;
};

// Never destroyed: arrays may be freed during interpreter shutdown, after static destructors.
inline State& state() {
  static State* s = new State;
  return *s;
}

// Frees cached blocks, largest first, until cached + live <= peak_live (call with mu held).
inline void evict_locked(State& s) {
  while (!s.cached.empty() && s.cached_bytes + s.live_bytes > s.peak_live) {
    auto last = std::prev(s.cached.end());
    s.cached_bytes -= last->first;
    unmap_block(last->second, last->first);
    s.cached.erase(last);
  }
}

inline void* acquire(std::size_t bytes) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  void* p = nullptr;
  auto hit = s.cached.find(bytes);
  if (hit != s.cached.end()) {
    p = hit->second;
    s.cached.erase(hit);
    s.cached_bytes -= bytes;
  } else {
    p = map_block(bytes);
  }
  try {
    s.live.emplace(p, bytes);
  } catch (...) {
    unmap_block(p, bytes);
    throw;
  }
  s.live_bytes += bytes;
  s.peak_live = std::max(s.peak_live, s.live_bytes);
  evict_locked(s);
  memory::note_alloc(bytes);
  return p;
}

inline void release(void* p) noexcept {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = s.live.find(p);
  if (it == s.live.end()) return;  // not ours (cannot happen: only acquire() hands out blocks)
  const std::size_t bytes = it->second;
  s.live.erase(it);
  s.live_bytes -= bytes;
  memory::note_free(bytes);
  try {
    s.cached.emplace(bytes, p);  // cached + live is unchanged: still within peak_live
    s.cached_bytes += bytes;
  } catch (...) {
    unmap_block(p, bytes);
  }
}

// Returns every cached block to the system; the bound restarts from what is in use now.
inline void release_cached() noexcept {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  for (auto& kv : s.cached) unmap_block(kv.second, kv.first);
  s.cached.clear();
  s.cached_bytes = 0;
  s.peak_live = s.live_bytes;
}

inline std::size_t cached_bytes() noexcept {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.cached_bytes;
}

}  // namespace pool
}  // namespace relprop

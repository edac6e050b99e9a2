// A pool of output buffers: large blocks freed by Python are kept and handed out again.
//
// A fresh allocation of many megabytes is mapped by the operating system page by page (or huge
// page by huge page) at first touch and zeroed on the way: on a CNN's activations that was
// about a fifth of a gradient call.  Every call of a network allocates the same sizes again, so
// blocks freed by one call are reused by the next one, already mapped.
//
// Bound: the blocks the pool keeps plus those in use never exceed the largest amount in use at
// any earlier moment, so the pool does not raise the process's memory high-water mark;
// release_cached() returns everything it keeps to the system.  Blocks in use are counted by
// relprop::memory.
//
// A request with no cached block of its size maps a new block when the bound leaves room for
// it.  When it does not (the usual case: a call's forward and backward pass need different
// sizes at the moment each needs the most memory), a cached block of another size is resized
// to the request (Linux mremap: shrinking keeps the mapped pages, growing keeps the ones it
// has), the smallest larger one or else the largest smaller one, so only the growth is mapped
// afresh; then cached blocks go, largest first, until the bound holds again.
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
#if defined(__linux__) && defined(MREMAP_MAYMOVE)
#define RELPROP_POOL_RESIZE 1
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

#if defined(RELPROP_POOL_RESIZE)
// Block p of `from` bytes as a block of `to` bytes (shrunk in place or grown, maybe moved);
// nullptr if the system refuses, p then unchanged.
inline void* resize_block(void* p, std::size_t from, std::size_t to) noexcept {
  void* q = mremap(p, from, to, MREMAP_MAYMOVE);
  if (q == MAP_FAILED) return nullptr;
#if defined(MADV_HUGEPAGE)
  if (to > from && to >= (std::size_t(4) << 20)) madvise(q, to, MADV_HUGEPAGE);
#endif
  return q;
}
#endif

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

// A cached block resized to `bytes`, or nullptr (call with mu held; see the file comment).
inline void* take_resized_locked(State& s, std::size_t bytes) {
#if defined(RELPROP_POOL_RESIZE)
  if (s.cached.empty()) return nullptr;
  auto it = s.cached.lower_bound(bytes);  // the smallest larger block: shrunk, no page faults
  if (it == s.cached.end()) it = std::prev(it);  // else the largest: grown
  void* p = resize_block(it->second, it->first, bytes);
  if (!p) return nullptr;
  s.cached_bytes -= it->first;
  s.cached.erase(it);
  return p;
#else
  (void)s;
  (void)bytes;
  return nullptr;
#endif
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
  } else if (s.cached_bytes + s.live_bytes + bytes <= s.peak_live) {
    p = map_block(bytes);
  } else if (!(p = take_resized_locked(s, bytes))) {
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

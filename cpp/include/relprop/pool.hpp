// A pool of output buffers: large blocks freed by Python are kept and handed out again.
//
// A fresh allocation of many megabytes is mapped by the operating system page by page (or huge
// page by huge page) at first touch and zeroed on the way: on a CNN's activations that was
// about a fifth of a gradient call.  Every call of a network allocates the same sizes again, so
// memory freed by one call is reused by the next one, already mapped.
//
// Bound: the memory the pool keeps plus the blocks in use never exceed the largest amount in
// use at any earlier moment, so the pool does not raise the process's memory high-water mark;
// release_cached() returns everything it keeps to the system.  Blocks in use are counted by
// relprop::memory.
//
// Free memory is kept as address ranges (POSIX: pieces of anonymous mappings), merged with
// their free neighbours.  A request takes the smallest free range that holds it, and the rest
// of the range stays free: a call's forward and backward pass need different sizes at the
// moments each needs the most memory, so sizes rarely match.  When no free range is large
// enough, a new mapping is made if the bound leaves room for it, else the largest free range
// is grown (Linux mremap: only the growth is new memory).  Past the bound, free memory goes
// back to the system from the ends of the largest ranges.  Elsewhere (no mmap), blocks are
// reused only at their exact size.
//
//   void* p = pool::acquire(bytes);   // page aligned; throws std::bad_alloc
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
#define RELPROP_POOL_MMAP 1
#if defined(__linux__) && defined(MREMAP_MAYMOVE)
#define RELPROP_POOL_GROW 1
#endif
#endif

#include "relprop/memory.hpp"

namespace relprop {
namespace pool {

// Smaller outputs come from the ordinary allocator (the heap reuses them without page faults).
constexpr std::size_t kMinBytes = std::size_t(1) << 18;
constexpr std::size_t kPage = 4096;
// Free ranges can be cut and merged only where they are pieces of mappings.
#if defined(RELPROP_POOL_MMAP)
constexpr bool kRanges = true;
#else
constexpr bool kRanges = false;
#endif

inline std::size_t round_page(std::size_t bytes) { return (bytes + kPage - 1) / kPage * kPage; }

// New memory: an anonymous mapping (POSIX), so that memory the pool lets go of leaves the
// process at once instead of fragmenting the heap; huge pages are asked for, as NumPy does for
// large arrays.  Elsewhere, page-aligned operator new.
inline char* map_block(std::size_t bytes) {
#if defined(RELPROP_POOL_MMAP)
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
#if defined(MADV_HUGEPAGE)
  if (bytes >= (std::size_t(4) << 20)) madvise(p, bytes, MADV_HUGEPAGE);
#endif
  return static_cast<char*>(p);
#else
  return static_cast<char*>(::operator new(bytes, std::align_val_t{kPage}));
#endif
}

inline void unmap_block(char* p, std::size_t bytes) noexcept {
#if defined(RELPROP_POOL_MMAP)
  munmap(p, bytes);
#else
  (void)bytes;
  ::operator delete(p, std::align_val_t{kPage});
#endif
}

// The free range p of `from` bytes grown to `to` bytes (maybe moved), or nullptr if the
// system refuses (a range made of neighbouring mappings cannot be remapped as one).
inline char* grow_block(char* p, std::size_t from, std::size_t to) noexcept {
#if defined(RELPROP_POOL_GROW)
  void* q = mremap(p, from, to, MREMAP_MAYMOVE);
  if (q == MAP_FAILED) return nullptr;
#if defined(MADV_HUGEPAGE)
  if (to >= (std::size_t(4) << 20)) madvise(q, to, MADV_HUGEPAGE);
#endif
  return static_cast<char*>(q);
#else
  (void)p;
  (void)from;
  (void)to;
  return nullptr;
#endif
}

struct State {
  std::mutex mu;
  std::map<char*, std::size_t> free_at;             // free ranges by address ...
  std::multimap<std::size_t, char*> free_by_size;   // ... and by size
  std::unordered_map<void*, std::size_t> live;      // blocks in use
  std::size_t live_bytes = 0, cached_bytes = 0, peak_live = 0;
};

// Never destroyed: arrays may be freed during interpreter shutdown, after static destructors.
inline State& state() {
  static State* s = new State;
  return *s;
}

// The following take the lock held.
inline void add_free(State& s, char* p, std::size_t n) {
  auto by_size = s.free_by_size.emplace(n, p);
  try {
    s.free_at.emplace(p, n);
  } catch (...) {
    s.free_by_size.erase(by_size);
    throw;
  }
  s.cached_bytes += n;
}

inline void remove_free(State& s, char* p, std::size_t n) {
  s.free_at.erase(p);
  auto range = s.free_by_size.equal_range(n);
  for (auto it = range.first; it != range.second; ++it)
    if (it->second == p) {
      s.free_by_size.erase(it);
      break;
    }
  s.cached_bytes -= n;
}

// Frees memory from the ends of the largest free ranges until cached + live <= peak_live.
inline void evict(State& s) {
  while (!s.free_by_size.empty() && s.cached_bytes + s.live_bytes > s.peak_live) {
    auto last = std::prev(s.free_by_size.end());
    const std::size_t n = last->first;
    char* p = last->second;
    const std::size_t over = round_page(s.cached_bytes + s.live_bytes - s.peak_live);
    remove_free(s, p, n);
    if (kRanges && over < n) {
      unmap_block(p + (n - over), over);
      add_free(s, p, n - over);
    } else {
      unmap_block(p, n);
    }
  }
}

// A free range holding n bytes (the rest stays free), or nullptr.
inline char* take_free(State& s, std::size_t n) {
  auto it = kRanges ? s.free_by_size.lower_bound(n) : s.free_by_size.find(n);
  if (it == s.free_by_size.end()) return nullptr;
  const std::size_t m = it->first;
  char* p = it->second;
  remove_free(s, p, m);
  if (m > n) add_free(s, p + n, m - n);
  return p;
}

// The largest free range grown to n bytes, or nullptr.
inline char* take_grown(State& s, std::size_t n) {
  if (s.free_by_size.empty()) return nullptr;
  auto last = std::prev(s.free_by_size.end());
  const std::size_t m = last->first;
  char* p = last->second;
  char* q = grow_block(p, m, n);
  if (q) remove_free(s, p, m);
  return q;
}

inline void* acquire(std::size_t bytes) {
  const std::size_t n = round_page(bytes);
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  char* p = take_free(s, n);
  if (!p && s.cached_bytes + s.live_bytes + n > s.peak_live) p = take_grown(s, n);
  if (!p) p = map_block(n);
  try {
    s.live.emplace(p, n);
  } catch (...) {
    unmap_block(p, n);
    throw;
  }
  s.live_bytes += n;
  s.peak_live = std::max(s.peak_live, s.live_bytes);
  evict(s);
  memory::note_alloc(n);
  return p;
}

inline void release(void* ptr) noexcept {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = s.live.find(ptr);
  if (it == s.live.end()) return;  // not ours (cannot happen: only acquire() hands out blocks)
  char* p = static_cast<char*>(ptr);
  std::size_t n = it->second;
  s.live.erase(it);
  s.live_bytes -= n;
  memory::note_free(n);
  try {
    if (kRanges) {  // merge with free neighbours (cached + live is unchanged)
      auto next = s.free_at.lower_bound(p);
      if (next != s.free_at.end() && next->first == p + n) {
        const std::size_t m = next->second;
        remove_free(s, p + n, m);
        n += m;
      }
      auto after = s.free_at.lower_bound(p);
      if (after != s.free_at.begin()) {
        auto prev = std::prev(after);
        if (prev->first + prev->second == p) {
          char* q = prev->first;
          const std::size_t m = prev->second;
          remove_free(s, q, m);
          p = q;
          n += m;
        }
      }
    }
    add_free(s, p, n);
  } catch (...) {
    unmap_block(p, n);
  }
}

// Returns all free memory to the system; the bound restarts from what is in use now.
inline void release_cached() noexcept {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  for (auto& kv : s.free_at) unmap_block(kv.first, kv.second);
  s.free_at.clear();
  s.free_by_size.clear();
  s.cached_bytes = 0;
  s.peak_live = s.live_bytes;
}

// fork(): the lock is taken before the fork and let go after it, in the parent and in the
// child, so that the child's pool is consistent and free (see relprop/fork.hpp).
inline void before_fork() { state().mu.lock(); }
inline void after_fork() { state().mu.unlock(); }

inline std::size_t cached_bytes() noexcept {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.cached_bytes;
}

}  // namespace pool
}  // namespace relprop

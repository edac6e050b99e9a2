// What a forked child needs to run kernels, set up by pthread_atfork when relprop._core loads:
//
// - relprop's pool (relprop/pool.hpp): its lock is taken before fork() and let go after it in
//   both processes, so the child never starts with the lock held by a thread that does not exist
//   there (its first large output would wait forever);
// - OpenMP: GNU libgomp's worker threads do not survive fork(), and a thread that had started a
//   team of several threads waits for them forever in its next one.  In the child, that thread
//   (the one that forked) runs its kernels on one thread; threads the child starts are not
//   concerned.  The bits are the same: results never depend on the thread count.
//
// Workspaces (relprop/workspace.hpp) live only during a kernel call, so a child has none to
// reset; the blocks of calls that ran on other threads at the moment of the fork stay counted in
// the child, whose copies of them nothing frees.
#pragma once

#include "relprop/parallel.hpp"
#include "relprop/pool.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#define RELPROP_HAVE_FORK 1
#endif

namespace relprop {

inline void after_fork_in_child() {
  pool::after_fork();
  if (detail::t_started_team) detail::t_one_thread = true;
}

// Registers the handlers once per process (later calls do nothing).
inline void register_fork_handlers() {
#if defined(RELPROP_HAVE_FORK)
  static const int once = pthread_atfork(&pool::before_fork, &pool::after_fork,
                                         &after_fork_in_child);
  (void)once;
#endif
}

}  // namespace relprop

// Precondition checks for kernels: a failed check throws std::invalid_argument (-> ValueError).
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace relprop {

template <typename... Args>
[[noreturn]] void fail(const Args&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  throw std::invalid_argument(os.str());
}

}  // namespace relprop

// Use only outside parallel regions: an exception must never leave an OpenMP region.
#define RELPROP_CHECK(cond, ...)                 \
  do {                                           \
    if (!(cond)) ::relprop::fail(__VA_ARGS__);   \
  } while (0)

// The table of one instruction set: every kernel and tuned number that differs by ISA (the
// GEMM micro-kernels and their blocking, the depthwise row kernels and their tiles, the
// Winograd transforms and crossovers, the smooth activations' loops), built once per ISA
// (isa_table.cpp).  The kernels and
// the planner read the active ISA's table: the one switch on the ISA is isa_table(Isa).
#pragma once
#include <type_traits>

#include "activation_impl.hpp"
#include "dwconv_impl.hpp"
#include "gemm_impl.hpp"
#include "relprop/plan.hpp"
#include "winograd_impl.hpp"

namespace relprop {
namespace detail {

template <typename T>
struct IsaKernels {
  const GemmImpl<T>* gemm;
  const DwImpl<T>* depthwise;
  const WinoKernels<T>* winograd;
};

struct IsaTable {
  Isa isa;
  IsaKernels<float> f32;
  IsaKernels<double> f64;
  const ActImpl* activation;  // float32 (float64 runs the C library's functions)
  WinogradCrossover winograd;

  template <typename T>
  const IsaKernels<T>& kernels() const {
    if constexpr (std::is_same_v<T, double>)
      return f64;
    else
      return f32;
  }
};

// The table of `isa`, or of the baseline (generic) where this build lacks `isa`.
const IsaTable& isa_table(Isa isa);

// The active ISA's table.
inline const IsaTable& isa_table() { return isa_table(active_isa()); }

}  // namespace detail
}  // namespace relprop

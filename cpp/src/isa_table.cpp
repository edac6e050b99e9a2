// One table per instruction set (isa_table.hpp): the kernels compiled for it and its tuned
// numbers.  The Winograd crossovers are fitted per ISA by bench/winograd_crossover.py (1
// thread, thread CPU time, medians of interleaved repeats; bench/winograd_crossover.md holds
// the command and its output): AVX-512 and AVX2 measured, both on an Intel Xeon (AVX2's kernels
// run there with RELPROP_ISA=avx2: not measured on an AMD EPYC), where the fit's thresholds did
// not beat these clearly (0.3% and 0.8% in the geometric mean, the passes where they differ
// split both ways), so these stay; the generic ISA, the baseline for CPUs no one measured, from
// the bench's cost model fitted to AVX2's times (not measured).  The GEMM blocking and the
// depthwise tiles follow from the register files and caches (a GEMM's kc also fixes its bits).
#include "isa_table.hpp"

#include "relprop/check.hpp"

namespace relprop {
namespace detail {

namespace {

const IsaTable kGeneric{Isa::generic,
                        {&generic::f32, &generic::dw_f32, &generic::wino_f32},
                        {&generic::f64, &generic::dw_f64, &generic::wino_f64},
                        &generic::act_f32,
                        {4, idx(1) << 16, 1, 1, false,
                         "not measured: cost model of bench/winograd_crossover.py fitted to "
                         "avx2's times on an Intel Xeon Processor @ 2.80GHz, rates x 4/8 lanes"}};
#if defined(RELPROP_HAVE_AVX2)
const IsaTable kAvx2{Isa::avx2,
                     {&avx2::f32, &avx2::dw_f32, &avx2::wino_f32},
                     {&avx2::f64, &avx2::dw_f64, &avx2::wino_f64},
                     &avx2::act_f32,
                     {8, idx(1) << 16, 16, 16, true,
                      "measured on Intel Xeon Processor @ 2.80GHz (an AVX-512 CPU running the "
                      "AVX2 kernels; not an AMD EPYC), bench/winograd_crossover.py"}};
#endif
#if defined(RELPROP_HAVE_AVX512)
const IsaTable kAvx512{Isa::avx512,
                       {&avx512::f32, &avx512::dw_f32, &avx512::wino_f32},
                       {&avx512::f64, &avx512::dw_f64, &avx512::wino_f64},
                       &avx512::act_f32,
                       {8, idx(1) << 16, 16, 16, true,
                        "measured on Intel Xeon Processor @ 2.80GHz, "
                        "bench/winograd_crossover.py"}};
#endif

template <typename T>
GemmBlocks blocks(const GemmImpl<T>& g) {
  return GemmBlocks{g.mr, g.nr, g.mc, g.kc, g.nc};
}

template <typename T>
DepthwiseBlocks blocks(const DwImpl<T>& d) {
  return DepthwiseBlocks{d.w, d.nb};
}

}  // namespace

const IsaTable& isa_table(Isa isa) {
  switch (isa) {
#if defined(RELPROP_HAVE_AVX512)
    case Isa::avx512:
      return kAvx512;
#endif
#if defined(RELPROP_HAVE_AVX2)
    case Isa::avx2:
      return kAvx2;
#endif
    default:
      return kGeneric;
  }
}

}  // namespace detail

IsaConfig isa_config(Isa isa) {
  const detail::IsaTable& t = detail::isa_table(isa);
  RELPROP_CHECK(t.isa == isa, "ISA '", isa_name(isa), "' is not in this build");
  return IsaConfig{t.isa, detail::blocks(*t.f32.gemm), detail::blocks(*t.f64.gemm),
                   detail::blocks(*t.f32.depthwise), detail::blocks(*t.f64.depthwise),
                   t.winograd};
}

}  // namespace relprop

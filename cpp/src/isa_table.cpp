// One table per instruction set (isa_table.hpp): the kernels compiled for it and its tuned
// numbers.  The Winograd crossovers are fitted per ISA by bench/winograd_crossover.py
// (measured: 1 thread, thread CPU time, medians of interleaved repeats); an ISA this build
// has but that was not measured takes the rule of the nearest one and says so (measured =
// false).
#include "isa_table.hpp"

#include "relprop/check.hpp"

namespace relprop {
namespace detail {

namespace {

const IsaTable kGeneric{Isa::generic,
                        {&generic::f32, &generic::dw_f32, &generic::wino_f32},
                        {&generic::f64, &generic::dw_f64, &generic::wino_f64},
                        &generic::act_f32,
                        {8, idx(1) << 16, 16, 16, false}};
#if defined(RELPROP_HAVE_AVX2)
const IsaTable kAvx2{Isa::avx2,
                     {&avx2::f32, &avx2::dw_f32, &avx2::wino_f32},
                     {&avx2::f64, &avx2::dw_f64, &avx2::wino_f64},
                     &avx2::act_f32,
                     {8, idx(1) << 16, 16, 16, false}};
#endif
#if defined(RELPROP_HAVE_AVX512)
const IsaTable kAvx512{Isa::avx512,
                       {&avx512::f32, &avx512::dw_f32, &avx512::wino_f32},
                       {&avx512::f64, &avx512::dw_f64, &avx512::wino_f64},
                       &avx512::act_f32,
                       {8, idx(1) << 16, 16, 16, false}};
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

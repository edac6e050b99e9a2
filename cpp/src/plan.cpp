// The convolution planner (relprop/plan.hpp): the one place that chooses a convolution's
// algorithm, from the geometry of one sample, the dtype, the direction and the active ISA's
// table; the conv2d_* kernels run what it chose.
#include "relprop/plan.hpp"

#include <type_traits>

#include "isa_table.hpp"
#include "relprop/check.hpp"
#include "relprop/winograd.hpp"

namespace relprop {

namespace {

bool winograd_applies(const Window2d& g, idx groups) {
  return g.kh == 3 && g.kw == 3 && g.sh == 1 && g.sw == 1 && g.dh == 1 && g.dw == 1 &&
         groups == 1 && g.ph <= 2 && g.pw <= 2;
}

bool plain_1x1(const Window2d& g) { return g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1; }

// The backward pass as the transposed convolution with the flipped kernel: stride 1, padding
// at most the dilated kernel's extent less one, and enough input channels per group (a first
// layer's few would pack kh*kw*c_out/G values per pixel for only c_in/G multiply-adds each).
bool flips(const Window2d& g, idx c_out, idx groups) {
  return g.sh == 1 && g.sw == 1 && g.ph <= g.dh * (g.kh - 1) && g.pw <= g.dw * (g.kw - 1) &&
         g.c / groups * 8 > c_out / groups;
}

// The auto rule's Winograd tile (4 or 2) for the pass, or 0 (see plan_conv2d's comment).
template <typename T>
int auto_tile(const Window2d& g, idx c_out, bool backward, const WinogradCrossover& t) {
  if (!std::is_same_v<T, float>) return 0;  // float64 is exact to ~1e-16 already: direct
  const idx oh = backward ? g.h : g.oh(), ow = backward ? g.w : g.ow();
  const idx cin = backward ? c_out : g.c, cout = backward ? g.c : c_out;
  if (oh < 1 || ow < 1 || cin < t.min_channels || cout < t.min_channels ||
      9 * cin * cout * oh * ow < t.min_macs)
    return 0;
  if (((oh + 3) / 4) * ((ow + 3) / 4) >= t.f4_min_tiles) return 4;
  if (((oh + 1) / 2) * ((ow + 1) / 2) >= t.f2_min_tiles) return 2;
  return 0;
}

}  // namespace

const char* conv_algo_name(ConvAlgo algo) {
  switch (algo) {
    case ConvAlgo::gemm:
      return "gemm";
    case ConvAlgo::gemm1x1:
      return "gemm1x1";
    case ConvAlgo::depthwise:
      return "depthwise";
    case ConvAlgo::winograd2:
      return "winograd2";
    case ConvAlgo::winograd4:
      return "winograd4";
    case ConvAlgo::flipped:
      return "flipped";
    case ConvAlgo::col2im:
      return "col2im";
  }
  return "unknown";
}

void check_conv_algo(ConvAlgo algo, const Window2d& g, idx c_out, idx groups, bool backward) {
  const char* pass = backward ? "backward" : "forward";
  bool ok = false;
  switch (algo) {
    case ConvAlgo::depthwise:
      ok = conv2d_depthwise(g, groups);
      break;
    case ConvAlgo::winograd2:
    case ConvAlgo::winograd4:
      ok = winograd_applies(g, groups);
      break;
    case ConvAlgo::gemm:
      ok = !backward && !conv2d_depthwise(g, groups);
      break;
    case ConvAlgo::gemm1x1:
      ok = !conv2d_depthwise(g, groups) && plain_1x1(g) &&
           (backward ? flips(g, c_out, groups) : g.ph == 0 && g.pw == 0);
      break;
    case ConvAlgo::flipped:
      ok = backward && !conv2d_depthwise(g, groups) && !plain_1x1(g) && flips(g, c_out, groups);
      break;
    case ConvAlgo::col2im:
      ok = backward && !conv2d_depthwise(g, groups);
      break;
  }
  RELPROP_CHECK(ok, "the convolution algorithm '", conv_algo_name(algo), "' cannot run the ",
                pass, " pass of a ", g.kh, "x", g.kw, " kernel with stride (", g.sh, ", ", g.sw,
                "), padding (", g.ph, ", ", g.pw, "), dilation (", g.dh, ", ", g.dw,
                "), groups=", groups, ", ", g.c, " -> ", c_out, " channels (take the one "
                "relprop.ops.conv2d_plan gives)");
}

template <typename T>
ConvPlan plan_conv2d(const Window2d& g, idx c_out, idx groups, bool backward,
                     ConvRequest request) {
  ConvAlgo algo;
  int tile = 0;
  if (!conv2d_depthwise(g, groups) && winograd_applies(g, groups) &&
      request != ConvRequest::direct) {
    tile = auto_tile<T>(g, c_out, backward, detail::isa_table().winograd);
    if (request == ConvRequest::winograd && tile == 0) tile = 4;
  }
  if (conv2d_depthwise(g, groups))
    algo = ConvAlgo::depthwise;
  else if (tile)
    algo = tile == 4 ? ConvAlgo::winograd4 : ConvAlgo::winograd2;
  else if (!backward)
    algo = plain_1x1(g) && g.ph == 0 && g.pw == 0 ? ConvAlgo::gemm1x1 : ConvAlgo::gemm;
  else if (flips(g, c_out, groups))
    algo = plain_1x1(g) ? ConvAlgo::gemm1x1 : ConvAlgo::flipped;
  else
    algo = ConvAlgo::col2im;
  ConvPlan plan{algo, 0, 0};
  if (tile) {
    plan.packed = winograd_packed_size<T>(c_out, g.c, tile, backward);
    plan.workspace = winograd_workspace<T>(g, c_out, tile, backward);
  } else if (backward) {
    plan.packed = conv2d_backward_packed_size<T>(g, c_out, groups, algo);
    if (algo == ConvAlgo::col2im)  // the columns of one (sample, group) per thread
      plan.workspace = g.c / groups * g.kh * g.kw * g.oh() * g.ow() * idx(sizeof(T));
  } else {
    plan.packed = conv2d_packed_size<T>(g, c_out, groups, algo);
  }
  return plan;
}

template ConvPlan plan_conv2d<float>(const Window2d&, idx, idx, bool, ConvRequest);
template ConvPlan plan_conv2d<double>(const Window2d&, idx, idx, bool, ConvRequest);

}  // namespace relprop

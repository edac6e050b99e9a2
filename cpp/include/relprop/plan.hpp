// Operator plans (XNNPACK's create/reshape/run split): which algorithm a convolution's pass
// runs, its packed weights and its workspace, chosen once per (geometry, dtype, direction) from
// the active instruction set's table; the conv2d_* kernels then run the algorithm they are
// given and choose nothing.  The table of each ISA (GEMM blocking, depthwise tiles, Winograd
// crossovers) is built once (cpp/src/isa_table.cpp).
#pragma once
#include "relprop/cpu.hpp"
#include "relprop/gemm.hpp"
#include "relprop/kernels.hpp"

namespace relprop {

// Where the auto rule takes Winograd for float32 (see plan_conv2d), per ISA.
struct WinogradCrossover {
  idx min_channels;  // direct if the pass reads or writes fewer channels
  idx min_macs;      // direct if a sample takes fewer multiply-adds (9 c_in c_out oh ow)
  idx f4_min_tiles;  // F(4x4, 3x3) from this many 4x4 tiles of a sample's output
  idx f2_min_tiles;  // else F(2x2, 3x3) from this many 2x2 tiles
  bool measured;       // measured on this ISA (bench/winograd_crossover.py), else derived
  const char* source;  // where the numbers come from: the CPU measured on, or the cost model
};

// The tuned numbers of one instruction set.
struct IsaConfig {
  Isa isa;
  GemmBlocks gemm_f32, gemm_f64;
  DepthwiseBlocks depthwise_f32, depthwise_f64;
  WinogradCrossover winograd;
};

// The table of `isa` (throws std::invalid_argument if this build lacks it).
IsaConfig isa_config(Isa isa);

// What a plan is asked for: the layer's `algorithm` ("auto": Winograd where the table says it
// pays, float32 only; "direct": never Winograd; "winograd": F(4x4) or the auto tile wherever it
// applies, any float dtype).  Depthwise, 1x1, flipped and col2im follow from the geometry.
enum class ConvRequest : int { automatic = 0, direct = 1, winograd = 2 };

struct ConvPlan {
  ConvAlgo algo;
  idx packed;     // elements of the packed weights (conv2d_pack / winograd_pack)
  idx workspace;  // bytes of the buffers a call takes per thread besides its output, the packed
                  // weights and the GEMM core's thread buffers (col2im's columns, Winograd's
                  // transformed blocks)
};

// The plan of a convolution with geometry g (g.n is ignored), c_out outputs and `groups`, for
// its forward pass or (backward) its vector-Jacobian product w.r.t. the input, in T.  Depends
// on the geometry of one sample, T, the ISA and the request, never on the batch.
//   forward:  depthwise (groups == c_in > 1), else Winograd where requested (see ConvRequest),
//             else gemm1x1 (1x1, stride 1, no padding: x is the GEMM's matrix), else gemm
//   backward: depthwise, else Winograd where requested, else flipped (the transposed
//             convolution with the flipped kernel, for stride 1 and padding at most the dilated
//             kernel's extent less one, with at least c_out/8 input channels per group; gemm1x1
//             for a 1x1 kernel), else col2im.
// The auto Winograd rule (float32, 3x3, stride 1, dilation 1, groups 1, padding <= 2): with
// (cin, cout) the channels the pass reads and writes and oh x ow its output, direct if
// min(cin, cout) < min_channels or 9 cin cout oh ow < min_macs, else F(4x4) if a sample has
// ceil(oh/4) ceil(ow/4) >= f4_min_tiles, else F(2x2) if ceil(oh/2) ceil(ow/2) >= f2_min_tiles,
// else direct.
template <typename T>
ConvPlan plan_conv2d(const Window2d& g, idx c_out, idx groups, bool backward,
                     ConvRequest request);

// Throws std::invalid_argument unless `algo` can run the pass (forward or backward) of g.
void check_conv_algo(ConvAlgo algo, const Window2d& g, idx c_out, idx groups, bool backward);

// "gemm", "gemm1x1", "depthwise", "winograd2", "winograd4", "flipped", "col2im".
const char* conv_algo_name(ConvAlgo algo);

// The Winograd tile of `algo` (2 or 4), 0 for the others.
inline int conv_algo_tile(ConvAlgo algo) {
  return algo == ConvAlgo::winograd4 ? 4 : algo == ConvAlgo::winograd2 ? 2 : 0;
}

}  // namespace relprop

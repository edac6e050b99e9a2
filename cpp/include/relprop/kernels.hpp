// Layer kernels: forward passes, their vector-Jacobian products and the LRP element-wise steps.
// Plain C++: raw C-contiguous arrays in, caller-allocated arrays out, nthreads last.
// Shape letters: n batch, c_in/c_out channels, h/w input size, oh/ow output size, kh/kw kernel.
#pragma once
#include <cstdint>

#include "relprop/gemm.hpp"

namespace relprop {

// Geometry of a 2-D window operation (Conv2d, MaxPool2d, AvgPool2d) on an NCHW tensor.
// Dilation (dh, dw) spaces the window's taps: tap (u, v) reads input (p*sh + u*dh - ph,
// q*sw + v*dw - pw); the pooling kernels take dh = dw = 1 only.  ceil (pooling only, torch's
// ceil_mode): the output sizes are rounded up instead of down, less a last window that would
// start past the input and its left padding (p*sh >= h + ph), so the last windows may reach
// past the padding (those taps are never visited, nor counted by an average).
struct Window2d {
  idx n, c, h, w;     // input (n, c, h, w)
  idx kh, kw;         // window
  idx sh, sw;         // stride
  idx ph, pw;         // zero padding
  idx dh = 1, dw = 1;  // dilation
  bool ceil = false;   // ceil mode (pooling)
  idx oh() const { return out_size(h, kh, sh, ph, dh); }
  idx ow() const { return out_size(w, kw, sw, pw, dw); }
  void validate() const;  // throws std::invalid_argument on an impossible geometry

 private:
  // validate() keeps in + 2 p - d (k - 1) - 1 (+ s - 1 in ceil mode) >= 0
  idx out_size(idx in, idx k, idx s, idx p, idx d) const {
    const idx span = in + 2 * p - d * (k - 1) - 1;
    if (!ceil) return span / s + 1;
    const idx out = (span + s - 1) / s + 1;
    return (out - 1) * s >= in + p ? out - 1 : out;
  }
};

// y[n, o] = sum_i x[n, i] * w[o, i] + b[o]          x (n, in), w (out, in), b (out) or null
// packed: null, or w packed by dense_pack(forward=true) under the ISA in use (then w is unused).
// relu: y = max(y, 0) (NaN kept) in the GEMM's store, bitwise relu_forward of the plain y.
template <typename T>
void dense_forward(const T* x, const T* w, const T* b, T* y, idx n, idx in, idx out, int nthreads,
                   const T* packed = nullptr, bool relu = false);

// gx[n, i] = sum_o g[n, o] * w[o, i]                 g (n, out) -> gx (n, in)
// packed: null, or w packed by dense_pack(forward=false) under the ISA in use.
// mask (n, in) or null: gx[n, i] = 0 where mask[n, i] <= 0 (or NaN), in the GEMM's store:
// bitwise relu_backward(gx, mask) (mask = the layer's input, a ReLU's output, or its input).
template <typename T>
void dense_backward(const T* g, const T* w, T* gx, idx n, idx in, idx out, int nthreads,
                    const T* packed = nullptr, const T* mask = nullptr);

// LRP-epsilon of a dense layer:  ra[n, i] = a[n, i] * sum_o s[n, o] * w[o, i]  with
// s = lrp_divide(r, z, eps) (r, z (n, out); a, ra (n, in)): the quotients are made while the
// GEMM packs its A operand, the product with a in its store; bitwise
// a * dense_backward(lrp_divide(r, z, eps), w).  packed as dense_backward's.
template <typename T>
void dense_lrp_epsilon(const T* r, const T* z, const T* a, const T* w, T* ra, idx n, idx in,
                       idx out, double eps, int nthreads, const T* packed = nullptr);

// w (out, in) packed for dense_forward (forward=true) or dense_backward: dense_packed_size
// elements, for the GEMM instruction set in use; results are bitwise those of the unpacked w.
template <typename T>
idx dense_packed_size(idx in, idx out, bool forward);
template <typename T>
void dense_pack(const T* w, idx in, idx out, bool forward, T* dst);

// Convolutions with G = groups (torch's conv2d): c_in = g.c and c_out are multiples of G;
// output channel o belongs to group o / (c_out/G) and reads input channels
// [gi*c_in/G, (gi+1)*c_in/G) of that group gi:
//   y[n, o, p, q] = b[o] + sum_{c < c_in/G, u, v} w[o, c, u, v]
//                          * x[n, gi*c_in/G + c, p*sh + u*dh - ph, q*sw + v*dw - pw]
// x (n, c_in, h, w) as in `g`; w (c_out, c_in/G, kh, kw); b (c_out) or null;
// y (n, c_out, oh, ow).
//
// Every conv2d_* kernel runs the algorithm it is given (plan_conv2d in relprop/plan.hpp chooses
// it; a kernel given one that cannot run its pass throws std::invalid_argument):
//   gemm       implicit GEMM, per sample and group: W_g times the im2col matrix of the group's
//              input channels, never stored (the GEMM packs its panels from the image)
//   gemm1x1    the same for a 1x1 kernel with stride 1 (and, forward, no padding): x itself is
//              the matrix (backward: the flipped path below with a 1x1 kernel)
//   depthwise  G = c_in > 1 (any channel multiplier c_out/G): the direct vectorized kernel of
//              dwconv.cpp, not a GEMM
//   winograd2, winograd4  Winograd F(2x2, 3x3) / F(4x4, 3x3) (relprop/winograd.hpp): 3x3,
//              stride 1, padding <= 2, G = 1, dilation 1
//   flipped    backward only: the implicit GEMM of the transposed convolution, gy with the
//              flipped, channel-transposed kernel (stride 1, padding <= dh*(kh-1), dw*(kw-1))
//   col2im     backward only: cols = W_g^T gy_g per sample and group, scattered back by col2im
enum class ConvAlgo : int {
  gemm = 0,
  gemm1x1 = 1,
  depthwise = 2,
  winograd2 = 3,
  winograd4 = 4,
  flipped = 5,
  col2im = 6
};

// y = conv(x, w, b) by `algo`.  packed: null, or w packed by conv2d_pack for the same c_in,
// kernel, groups and algorithm under the ISA in use (Winograd: winograd_pack; then w is
// unused).  relu: y = max(y, 0) (NaN kept), bitwise relu_forward of the plain y: in the GEMM's
// store (depthwise: a pass over each plane right after the kernel; Winograd: the output
// transform).
template <typename T>
void conv2d_forward(const T* x, const T* w, const T* b, T* y, const Window2d& g, idx c_out,
                    idx groups, ConvAlgo algo, int nthreads, const T* packed = nullptr,
                    bool relu = false);

// The pooled layer's forward pass:  pooled = maxpool2d_forward(relu(conv2d_forward(x, w, b)))
// with a 2x2 window, stride 2, no padding, and arg its winners (flat index in the oh x ow plane
// of the convolution's output; first maximum in row-major window order), bitwise.  pooled and
// arg are (n, c_out, oh / 2, ow / 2).  gemm, G = 1: the convolution runs in bands of output
// rows whose output stays in a thread's scratch (bias and ReLU in the GEMM's store) and is
// pooled from there; G > 1 (grouped, depthwise): the convolution with its ReLU into a
// workspace, then the pooling; Winograd pools in the output transform.  packed as
// conv2d_forward's; block_tiles: Winograd's tiles per block (tests; 0 chooses).
template <typename T>
void conv2d_forward_relu_maxpool(const T* x, const T* w, const T* b, T* pooled,
                                 std::int64_t* arg, const Window2d& g, idx c_out, idx groups,
                                 ConvAlgo algo, int nthreads, const T* packed = nullptr,
                                 idx block_tiles = 0);

// Two convolutions of x that share one pass over it, with the weights w1 = w[0, split) and
// w2 = w[split, c_out) (stacked along the output axis, biases likewise), each with `groups`
// groups:  y (n, split, oh, ow) = conv(x, w1, b1) and y2 (n, c_out - split, oh, ow) =
// conv(x, w2, b2).  For G = 1 that is conv2d_forward's output cut at channel split (LRP's z
// and z+ from one GEMM, or one Winograd pass); for G > 1 split and c_out - split must be
// multiples of G, each group's GEMM runs on the rows of both halves stacked (packed = null:
// the stacked rows are packed here), and the depthwise kernel makes both outputs from each
// input plane.
template <typename T>
void conv2d_forward_split(const T* x, const T* w, const T* b, T* y, T* y2, const Window2d& g,
                          idx c_out, idx split, idx groups, ConvAlgo algo, int nthreads,
                          const T* packed = nullptr);

// True where the geometry is depthwise: groups == c_in > 1.
inline bool conv2d_depthwise(const Window2d& g, idx groups) { return groups > 1 && g.c == groups; }

// w (c_out, c_in/G, kh, kw) packed for conv2d_forward by algo gemm, gemm1x1 or depthwise (reads
// g.c, g.kh, g.kw only): conv2d_packed_size elements in the layout of the GEMM instruction set
// in use (per group, the group's (c_out/G, c_in/G*kh*kw) matrix in the GEMM's row strips;
// depthwise: w as is); results are bitwise those of the unpacked w.
template <typename T>
idx conv2d_packed_size(const Window2d& g, idx c_out, idx groups, ConvAlgo algo);
template <typename T>
void conv2d_pack(const T* w, const Window2d& g, idx c_out, idx groups, ConvAlgo algo, T* dst);

// gx = vector-Jacobian product of conv2d_forward w.r.t. x:   gy (n, c_out, oh, ow) -> gx (n, c_in, h, w)
//   gx[n, gi*c_in/G + c, i, j] = sum over (o in group gi, p, q, u, v) with
//     p*sh + u*dh - ph = i and q*sw + v*dw - pw = j  of  w[o, c, u, v] * gy[n, o, p, q]
// by `algo` (flipped, gemm1x1, col2im, depthwise, winograd2/4).  packed: null, or w packed by
// conv2d_pack_backward for g's kernel, stride, padding and dilation, the same groups and algo
// under the ISA in use (Winograd: winograd_pack(backward = true); then w is unused).
// mask (shaped like gx) or null: gx = 0 where mask <= 0 (or NaN), bitwise
// relu_backward(gx, mask) (mask = the layer's input, a ReLU's output, or that ReLU's input): in
// the GEMM's store (col2im and depthwise: right after each unit's gx is made; Winograd: the
// output transform).
template <typename T>
void conv2d_backward(const T* gy, const T* w, T* gx, const Window2d& g, idx c_out, idx groups,
                     ConvAlgo algo, int nthreads, const T* packed = nullptr,
                     const T* mask = nullptr);

// The backward pass of conv2d_forward_relu_maxpool: gp, arg (and pooled, if not null) are
// (n, c_out, oh / 2, ow / 2); the convolution's output gradient is gp at the winners arg
// (where pooled > 0, if given: the ReLU between convolution and pooling) and 0 elsewhere:
//   gx = conv2d_backward(maxpool2d_backward_masked(gp, arg, pooled), w, mask)
// bitwise conv2d_backward(relu_backward(maxpool2d_backward(gp, arg), y), w, mask) for the
// convolution's output y whose pooling gave pooled and arg (the windows are disjoint).  The
// output gradient is made in a workspace (one pass) and read by the backward pass (`algo`, a
// backward algorithm).
template <typename T>
void conv2d_backward_pooled(const T* gp, const std::int64_t* arg, const T* pooled, const T* w,
                            T* gx, const Window2d& g, idx c_out, idx groups, ConvAlgo algo,
                            int nthreads, const T* packed = nullptr, const T* mask = nullptr);

// LRP-epsilon of a convolution:  ra = a * conv2d_backward(lrp_divide(r, z, eps), w), bitwise:
// r, z (n, c_out, oh, ow), a and ra shaped like x.  The quotients go to a workspace (one
// pass), the product with a is in the backward pass's store (`algo`, a backward algorithm).
template <typename T>
void conv2d_lrp_epsilon(const T* r, const T* z, const T* a, const T* w, T* ra, const Window2d& g,
                        idx c_out, idx groups, ConvAlgo algo, double eps, int nthreads,
                        const T* packed = nullptr);

// w packed for conv2d_backward by algo flipped, gemm1x1, col2im or depthwise (reads c_in, kh,
// kw, stride, padding and dilation of g only): conv2d_backward_packed_size elements; results
// are bitwise those of the unpacked w.
template <typename T>
idx conv2d_backward_packed_size(const Window2d& g, idx c_out, idx groups, ConvAlgo algo);
template <typename T>
void conv2d_pack_backward(const T* w, const Window2d& g, idx c_out, idx groups, ConvAlgo algo,
                          T* dst);

// The depthwise kernels behind conv2d_* for groups == c_in (dwconv.cpp), channel multiplier
// m = c_out / c_in: output channel o = c*m + k filters input channel c with w[o, 0].
//   forward:  y as conv2d_forward (outputs [0, split) to y, the others to y2 when split <
//             c_out, as conv2d_forward_split: both halves are depthwise, multipliers
//             split/c_in and (c_out - split)/c_in)
//   backward: gx[n, c] = sum_k conv2d_backward of gy[n, c*m + k] with w[c*m + k]
template <typename T>
void depthwise_forward(const T* x, const T* w, const T* b, T* y, T* y2, const Window2d& g,
                       idx c_out, idx split, int nthreads);
template <typename T>
void depthwise_backward(const T* gy, const T* w, T* gx, const Window2d& g, idx c_out,
                        int nthreads);

// The depthwise row kernel of an ISA: vector lanes and vectors per register block (its
// table: relprop/plan.hpp's isa_config).
struct DepthwiseBlocks {
  int lanes, vectors;
};

// y = max over each window (padding = -inf); arg[n, c, p, q] = flat index (within the h*w plane)
// of the first maximum in row-major window order.
template <typename T>
void maxpool2d_forward(const T* x, T* y, std::int64_t* arg, const Window2d& g, int nthreads);

// gx[n, c, arg[n, c, p, q]] += gy[n, c, p, q]
template <typename T>
void maxpool2d_backward(const T* gy, const std::int64_t* arg, T* gx, const Window2d& g,
                        int nthreads);

// maxpool2d_backward of gy where y > 0 (y: the pooled output, or null for all of gy), 0
// elsewhere: gx[n, c, arg[n, c, p, q]] += (y[n, c, p, q] > 0 ? gy[n, c, p, q] : 0); for
// disjoint windows (stride >= kernel) bitwise relu_backward(maxpool2d_backward(gy, arg), x)
// with x the pooling's (and a ReLU's) input, since x at the winner is y.
template <typename T>
void maxpool2d_backward_masked(const T* gy, const std::int64_t* arg, const T* y, T* gx,
                               const Window2d& g, int nthreads);

// y = sum over each window / its count, as torch's avg_pool2d: the count is the window's taps
// inside the input plus, with count_pad (torch's count_include_pad=True), those in the zero
// padding; never those past the padding (ceil mode).  kh * kw for every window of a floor-mode
// pooling that counts its padding.
template <typename T>
void avgpool2d_forward(const T* x, T* y, const Window2d& g, bool count_pad, int nthreads);

// gx = transpose of avgpool2d_forward applied to gy
template <typename T>
void avgpool2d_backward(const T* gy, T* gx, const Window2d& g, bool count_pad, int nthreads);

// Adaptive average pooling (torch.nn.AdaptiveAvgPool2d) of x (n*c planes of h x w) to
// y (n*c planes of oh x ow): output (i, j) averages rows [floor(i*h/oh), ceil((i+1)*h/oh)) and
// columns [floor(j*w/ow), ceil((j+1)*w/ow)) (any sizes: windows may overlap, or repeat input
// pixels when oh > h).
template <typename T>
void adaptive_avgpool2d_forward(const T* x, T* y, idx planes, idx h, idx w, idx oh, idx ow,
                                int nthreads);

// gx = transpose of adaptive_avgpool2d_forward applied to gy:
//   gx[r, s] = sum over windows (i, j) that contain (r, s) of gy[i, j] / |window (i, j)|
template <typename T>
void adaptive_avgpool2d_backward(const T* gy, T* gx, idx planes, idx h, idx w, idx oh, idx ow,
                                 int nthreads);

// Upsampling of `planes` planes of h x w to oh x ow as torch's interpolate: mode 0 nearest
// (source index floor(d * s) in float, s = 1 / scale if the scale factor `scale` > 0 was given,
// else in / out; torch's exact cases for out == in and out == 2 in), mode 1 bilinear (two taps
// per axis: align_corners, or half-pixel centres clamped at 0; ratio and weights in T, as
// torch's opmath).  Separable: each output row mixes its two source rows, then each output
// column its two taps of that.
struct Upsample2d {
  idx planes, h, w, oh, ow;
  int mode;
  bool align_corners;
  double scale_h, scale_w;  // the scale factors given to torch, or <= 0 (from the sizes)
};

template <typename T>
void upsample2d_forward(const T* x, T* y, const Upsample2d& u, int nthreads);

// gx = transpose of upsample2d_forward applied to gy (per plane, in a fixed order: output rows
// in order, each gathered onto the input columns, then added to its source rows).
template <typename T>
void upsample2d_backward(const T* gy, T* gx, const Upsample2d& u, int nthreads);

// y = x * scale[c] + shift[c] over rows of `inner` elements: x (n, c, inner...) C-contiguous,
// c = channels (an unfolded inference BatchNorm); shift may be null (then y = x * scale[c]).
template <typename T>
void channel_affine(const T* x, const T* scale, const T* shift, T* y, idx n, idx channels,
                    idx inner, int nthreads);

// Layer normalization of x viewed as (outer, c, inner) over its c axis (torch's LayerNorm over
// the last axis: inner = 1; over the channels of NCHW: outer = n, inner = h * w): for every
// column (o, i)
//   mean = sum_k x[o, k, i] / c,  var = sum_k (x[o, k, i] - mean)^2 / c,
//   rstd = 1 / sqrt(var + eps),   y[o, k, i] = (x[o, k, i] - mean) * rstd * w[k] + b[k]
// (w, b null: 1, 0), with mean and rstd (outer * inner) kept for the backward pass; sums in
// double in a fixed order.  Throws std::invalid_argument for c < 1 or eps < 0.
template <typename T>
void layer_norm_forward(const T* x, const T* w, const T* b, T* y, T* mean, T* rstd, idx outer,
                        idx c, idx inner, double eps, int nthreads);

// Its vector-Jacobian product w.r.t. x, per column, with u_k = g_k w_k rstd and
// xhat_k = (x_k - mean) rstd:  gx_k = u_k - mean_k(u) - xhat_k mean_k(u xhat)   (the gradient);
// with frozen_std the map with rstd held constant, gx_k = u_k - mean_k(u) (x and mean unread:
// LRP's identity rule for LayerNorm, as LXT detaches the standard deviation).
template <typename T>
void layer_norm_backward(const T* g, const T* x, const T* w, const T* mean, const T* rstd, T* gx,
                         idx outer, idx c, idx inner, bool frozen_std, int nthreads);

// y = act(x) element by element, for the smooth activation numbered op (NaN stays NaN):
//   0 sigmoid      1 / (1 + e^-x)
//   1 SiLU         x / (1 + e^-x)
//   2 tanh
//   3 GELU         x Phi(x) = x (1 + erf(x / sqrt 2)) / 2
//   4 GELU (tanh)  x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2
//   5 hard sigmoid min(max(x + 3, 0), 6) / 6
//   6 hard swish   x min(max(x + 3, 0), 6) / 6
// float: vectorized with the active ISA (activation_math.hpp says how, and how accurate); double:
// the C library.  Throws std::invalid_argument for another op.
template <typename T>
void activation_forward(const T* x, T* y, idx size, int op, int nthreads);

// gx = g * act'(x) for the activation numbered op (hard sigmoid and hard swish with torch's
// one-sided values at their kinks: 1/6 on (-3, 3) only; 0 up to -3, x / 3 + 1/2 below 3, 1 from 3)
template <typename T>
void activation_backward(const T* g, const T* x, T* gx, idx size, int op, int nthreads);

// y = x > 0 ? x : a[c] * x over rows of `inner` elements (torch's prelu): x (n, channels, inner)
// C-contiguous, a (channels) slopes (one for all elements: channels = 1, inner = a sample's size)
template <typename T>
void prelu_forward(const T* x, const T* a, T* y, idx n, idx channels, idx inner, int nthreads);

// Its backward with input x:  gx = x > 0 ? g : a[c] * g
template <typename T>
void prelu_backward(const T* g, const T* x, const T* a, T* gx, idx n, idx channels, idx inner,
                    int nthreads);

// y = min(max(x, lo), hi)   (torch's hardtanh; lo, hi may be infinite; NaN stays NaN)
template <typename T>
void hardtanh_forward(const T* x, T* y, idx size, double lo, double hi, int nthreads);

// Its backward with input x:  gx = (x <= lo || x >= hi) ? 0 : g   (torch's: NaN passes g)
template <typename T>
void hardtanh_backward(const T* g, const T* x, T* gx, idx size, double lo, double hi,
                       int nthreads);

// y = x > 0 ? x : slope * x   (torch's leaky_relu; NaN stays NaN)
template <typename T>
void leaky_relu_forward(const T* x, T* y, idx size, double slope, int nthreads);

// Its backward with input x:  gx = x > 0 ? g : slope * g
template <typename T>
void leaky_relu_backward(const T* g, const T* x, T* gx, idx size, double slope, int nthreads);

// y = max(x, 0)
template <typename T>
void relu_forward(const T* x, T* y, idx size, int nthreads);

// Multi-head scaled dot-product attention (the core of torch.nn.MultiheadAttention, without
// its projections): q (n, tq, heads*dk), k (n, tk, heads*dk), v (n, tk, heads*dv); for each
// sample s and head h, with X_h the columns [h*d, (h+1)*d) of X[s],
//   S = scale * Q_h K_h^T (tq x tk),  A = softmax of each row of S,  O_h = A V_h
// into out (n, tq, heads*dv), and A into a (n, heads, tq, tk), kept for the backward pass.
// Each (sample, head) is computed by one thread: the products on the GEMM core (each entry
// summed in its fixed order), the softmax with a row's maximum subtracted, exp vectorized with
// the active ISA (the activations' exp, activation_math.hpp: every ISA the same bits), the sum
// in double in a fixed order and each quotient rounded once; so results do not depend on the
// thread count or the batch.  A row holding a NaN gives NaN.
template <typename T>
void attention_forward(const T* q, const T* k, const T* v, T* out, T* a, idx n, idx tq, idx tk,
                       idx heads, idx dk, idx dv, double scale, int nthreads);

// Its vector-Jacobian products from g (n, tq, heads*dv), with A from attention_forward:
//   gV_h = A^T G_h,  gA = G_h V_h^T,  gS = scale * A * (gA - rowsum(A * gA)),
//   gQ_h = gS K_h,   gK_h = gS^T Q_h
// (the row sums in double); any of gq, gk, gv may be null: not computed (LRP's CP rule needs
// gV alone, and then neither gA nor gS is made).
template <typename T>
void attention_backward(const T* g, const T* q, const T* k, const T* v, const T* a, T* gq, T* gk,
                        T* gv, idx n, idx tq, idx tk, idx heads, idx dk, idx dv, double scale,
                        int nthreads);

// Backward of ReLU with input x:  mode 0 gradient  g * (x > 0)
//                                  mode 1 deconvnet max(g, 0)
//                                  mode 2 guided    g * (x > 0) * (g > 0)
template <typename T>
void relu_backward(const T* g, const T* x, T* gx, idx size, int mode, int nthreads);

// s = r / (z + eps * sign(z)) with sign(0) = +1, and s = 0 where that denominator is exactly 0;
// `samples` rows of `len` elements.  shift (len elements, or null): z[k, j] - shift[j] instead
// of z (LRP-z^B's z - z_box without a batch-sized temporary).
template <typename T>
void lrp_divide(const T* r, const T* z, const T* shift, T* s, idx samples, idx len, double eps,
                int nthreads);

// The shares of the stacked transposed GEMM of LRP rules on [W+; W-] (layer input a >= 0), from
// r, p = z+ and n = z- of `samples` rows of `len` elements each; out holds samples rows of
// 2 * len: row s is [u_s, v_s], and the rule's input relevance is a * ([W+; W-]^T [u; v]).
// Divisions are lrp_divide's (stabilized, 0 where the denominator is 0).
//   gamma:      z = p + n (or the given z, if not null), s1 = [z > 0] r / ((1 + gamma) p + n),
//               s2 = [z < 0] r / (p + (1 + gamma) n), u = (1 + gamma) s1 + s2,
//               v = s1 + (1 + gamma) s2;
//   alpha-beta: u = alpha r / p, v = -beta r / n.
template <typename T>
void lrp_gamma_shares(const T* r, const T* p, const T* n, const T* z, T* out, idx samples,
                      idx len, double gamma, double eps, int nthreads);
template <typename T>
void lrp_alpha_beta_shares(const T* r, const T* p, const T* n, T* out, idx samples, idx len,
                           double alpha, double beta, double eps, int nthreads);

}  // namespace relprop

// The only code that sees Python: relprop._core.  Every binding converts nothing (inputs must
// already be C-contiguous arrays of the kernel's dtype; relprop.ops makes sure of that), checks
// shapes, allocates the output, releases the GIL around the kernel, and returns.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "relprop/check.hpp"
#include "relprop/cpu.hpp"
#include "relprop/fork.hpp"
#include "relprop/kernels.hpp"
#include "relprop/memory.hpp"
#include "relprop/parallel.hpp"
#include "relprop/pool.hpp"
#include "relprop/plan.hpp"
#include "relprop/winograd.hpp"
#include "relprop/workspace.hpp"

namespace py = pybind11;
using namespace pybind11::literals;
using relprop::idx;
using relprop::Window2d;

namespace {

std::atomic<bool> g_pool_lock_held{false};  // _hold_pool_lock holds it

template <typename T>
using CArray = py::array_t<T, py::array::c_style>;
using Pair = std::array<idx, 2>;

// A new C-contiguous output array: large ones on a block of relprop::pool (freed back to it when
// the array dies), small ones from NumPy's allocator.
template <typename T>
CArray<T> output(const std::vector<py::ssize_t>& shape) {
  std::size_t n = 1;
  for (py::ssize_t d : shape) n *= static_cast<std::size_t>(d);
  if (n * sizeof(T) < relprop::pool::kMinBytes) return CArray<T>(shape);
  void* p = relprop::pool::acquire(n * sizeof(T));
  try {
    py::capsule owner(p, [](void* q) { relprop::pool::release(q); });
    return CArray<T>(shape, static_cast<T*>(p), owner);
  } catch (...) {
    relprop::pool::release(p);
    throw;
  }
}

template <typename T>
void check_ndim(const CArray<T>& a, py::ssize_t ndim, const char* name) {
  RELPROP_CHECK(a.ndim() == ndim, name, " must have ", ndim, " dimensions, got ", a.ndim());
}

// An optional bias: None or a C-contiguous array of T with `size` elements.
template <typename T>
const T* optional_bias(const py::object& b, idx size, CArray<T>& keep) {
  if (b.is_none()) return nullptr;
  if (!py::isinstance<CArray<T>>(b)) throw py::type_error("bias must be a C-contiguous array of the input's dtype");
  keep = py::reinterpret_borrow<CArray<T>>(b);
  RELPROP_CHECK(keep.ndim() == 1 && keep.shape(0) == size, "bias must have shape (", size, ",)");
  return keep.data();
}

// An optional array (a ReLU mask, a layer input, pooled values): None or a C-contiguous array
// of T with exactly `shape`.
template <typename T>
const T* optional_array(const py::object& a, const std::vector<idx>& shape, const char* name,
                        CArray<T>& keep) {
  if (a.is_none()) return nullptr;
  if (!py::isinstance<CArray<T>>(a))
    throw py::type_error(std::string(name) + " must be a C-contiguous array of the input's dtype");
  keep = py::reinterpret_borrow<CArray<T>>(a);
  bool same = keep.ndim() == static_cast<py::ssize_t>(shape.size());
  for (std::size_t d = 0; same && d < shape.size(); ++d) same = keep.shape(d) == shape[d];
  if (!same) {
    std::string want = "(", got = "(";
    for (std::size_t d = 0; d < shape.size(); ++d) want += (d ? ", " : "") + std::to_string(shape[d]);
    for (py::ssize_t d = 0; d < keep.ndim(); ++d) got += (d ? ", " : "") + std::to_string(keep.shape(d));
    relprop::fail(name, " must have shape ", want, shape.size() == 1 ? ",)" : ")", ", got ", got,
                  keep.ndim() == 1 ? ",)" : ")");
  }
  return keep.data();
}

// Packed weights (dense_pack, conv2d_pack): the packed array with everything that fixes its
// layout, so that a packing is used only for the very weight and GEMM it was made for.  Two
// weights of different shapes can pack to the same size (rows are padded to the micro-kernel's
// MR), and two GEMMs can take packings of one size (square weights), so the size alone proves
// nothing: the ISA, the GEMM, the dtype and the logical weight shape must all match.
struct PackedWeights {
  std::string isa, gemm, dtype;
  std::vector<idx> shape;  // the logical shape of the weight that was packed
  py::array data;          // 1-D, read-only
  idx groups = 1;                  // convolutions: the groups and dilation it was packed for
  std::vector<idx> dilation{1, 1};
};

// What a convolution's packing depends on besides the weight: its groups and dilation.
struct ConvParams {
  idx groups = 1;
  Pair dilation{1, 1};
};

template <typename T>
const char* dtype_name() {
  return sizeof(T) == 4 ? "float32" : "float64";
}

std::string shape_string(const std::vector<idx>& shape) {
  std::string s = "(";
  for (std::size_t d = 0; d < shape.size(); ++d) s += (d ? ", " : "") + std::to_string(shape[d]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

template <typename T>
std::vector<idx> shape_of(const CArray<T>& a) {
  return std::vector<idx>(a.shape(), a.shape() + a.ndim());
}

// None, or PackedWeights made by the pack function of `gemm` for exactly the weight w (shape and
// dtype) under the ISA in use; throws ValueError naming what differs.
template <typename T>
const T* optional_packed(const py::object& packed, const char* gemm, const CArray<T>& w,
                         idx size, const ConvParams& conv = {}) {
  if (packed.is_none()) return nullptr;
  if (!py::isinstance<PackedWeights>(packed))
    throw py::type_error("packed weights must come from relprop.ops.dense_pack or conv2d_pack, "
                         "got " + std::string(py::str(py::type::of(packed).attr("__name__"))));
  const auto& pw = packed.cast<const PackedWeights&>();
  const char* now = relprop::isa_name(relprop::active_isa());
  RELPROP_CHECK(pw.isa == now, "the weights were packed for ISA ", pw.isa, " but ", now,
                " is in use");
  RELPROP_CHECK(pw.gemm == gemm, "the weights were packed for '", pw.gemm, "', not for '", gemm,
                "'");
  const std::vector<idx> want = shape_of(w);
  RELPROP_CHECK(pw.dtype == dtype_name<T>() && pw.shape == want,
                "the packed weights do not match the weight: packed for ", shape_string(pw.shape),
                " ", pw.dtype, ", used for ", shape_string(want), " ", dtype_name<T>());
  const std::vector<idx> dil{conv.dilation[0], conv.dilation[1]};
  RELPROP_CHECK(pw.groups == conv.groups && pw.dilation == dil,
                "the weights were packed for groups=", pw.groups, ", dilation=",
                shape_string(pw.dilation), ", not for groups=", conv.groups, ", dilation=",
                shape_string(dil));
  RELPROP_CHECK(pw.data.ndim() == 1 && pw.data.shape(0) == size &&
                    py::isinstance<CArray<T>>(pw.data),
                "packed weights are corrupt (", pw.data.size(), " elements, expected ", size, ")");
  return static_cast<const T*>(pw.data.data());
}

template <typename T>
Window2d window(const CArray<T>& x, Pair k, Pair s, Pair p, bool ceil = false) {
  Window2d g{x.shape(0), x.shape(1), x.shape(2), x.shape(3), k[0], k[1], s[0], s[1], p[0], p[1]};
  g.ceil = ceil;
  g.validate();
  return g;
}

template <typename T>
CArray<T> dense_forward(const CArray<T>& x, const CArray<T>& w, const py::object& b, int nthreads,
                        const py::object& packed, bool relu) {
  check_ndim(x, 2, "x");
  check_ndim(w, 2, "weight");
  const idx n = x.shape(0), in = x.shape(1), out = w.shape(0);
  RELPROP_CHECK(w.shape(1) == in, "weight.shape[1]=", w.shape(1), " must equal ", in, " (x.shape[1])");
  CArray<T> keep;
  const T* bp = optional_bias<T>(b, out, keep);
  const T* pp = optional_packed<T>(packed, "dense_forward", w,
                                   relprop::dense_packed_size<T>(in, out, true));
  CArray<T> y = output<T>({n, out});
  T* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::dense_forward<T>(x.data(), w.data(), bp, yp, n, in, out, nthreads, pp, relu);
  }
  return y;
}

template <typename T>
CArray<T> dense_backward(const CArray<T>& g, const CArray<T>& w, int nthreads,
                         const py::object& packed, const py::object& mask) {
  check_ndim(g, 2, "grad");
  check_ndim(w, 2, "weight");
  const idx n = g.shape(0), out = w.shape(0), in = w.shape(1);
  RELPROP_CHECK(g.shape(1) == out, "grad.shape[1]=", g.shape(1), " must equal ", out, " (weight.shape[0])");
  const T* pp = optional_packed<T>(packed, "dense_backward", w,
                                   relprop::dense_packed_size<T>(in, out, false));
  CArray<T> keep;
  const T* mp = optional_array<T>(mask, {n, in}, "mask", keep);
  CArray<T> gx = output<T>({n, in});
  T* gp = gx.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::dense_backward<T>(g.data(), w.data(), gp, n, in, out, nthreads, pp, mp);
  }
  return gx;
}

// a * ((r / stab(z)) @ w): r, z (n, out), a (n, in) -> (n, in)
template <typename T>
CArray<T> dense_lrp_epsilon(const CArray<T>& r, const CArray<T>& z, const CArray<T>& a,
                            const CArray<T>& w, double eps, int nthreads,
                            const py::object& packed) {
  check_ndim(w, 2, "weight");
  const idx out = w.shape(0), in = w.shape(1);
  check_ndim(r, 2, "r");
  const idx n = r.shape(0);
  RELPROP_CHECK(r.shape(1) == out, "r.shape[1]=", r.shape(1), " must equal ", out,
                " (weight.shape[0])");
  CArray<T> keep_z, keep_a;
  optional_array<T>(z, {n, out}, "z", keep_z);
  optional_array<T>(a, {n, in}, "a", keep_a);
  const T* pp = optional_packed<T>(packed, "dense_backward", w,
                                   relprop::dense_packed_size<T>(in, out, false));
  CArray<T> ra = output<T>({n, in});
  T* rp = ra.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::dense_lrp_epsilon<T>(r.data(), z.data(), a.data(), w.data(), rp, n, in, out, eps,
                                  nthreads, pp);
  }
  return ra;
}

// Checks groups and dilation, and returns them.
ConvParams conv_params(idx groups, Pair d) {
  RELPROP_CHECK(groups >= 1, "groups must be a positive integer, got ", groups);
  RELPROP_CHECK(d[0] >= 1 && d[1] >= 1, "dilation must be positive, got (", d[0], ", ", d[1], ")");
  return ConvParams{groups, d};
}

// Checks that `groups` divides c_in (= weight.shape[1] * groups) and c_out = weight.shape[0].
template <typename T>
void check_conv_weight(const CArray<T>& w, idx c_in, const ConvParams& cp, const char* c_in_of) {
  check_ndim(w, 4, "weight");
  RELPROP_CHECK(w.shape(0) % cp.groups == 0, "weight.shape[0]=", w.shape(0),
                " (output channels) must be a multiple of groups=", cp.groups);
  RELPROP_CHECK(c_in % cp.groups == 0, "the ", c_in, " channels of ", c_in_of,
                " must be a multiple of groups=", cp.groups);
  RELPROP_CHECK(w.shape(1) * cp.groups == c_in, "weight.shape[1]=", w.shape(1), " must equal ",
                c_in / cp.groups, " (", c_in, " channels of ", c_in_of, " / groups=", cp.groups,
                ")");
}

// Stand-in geometry (what the pack functions read: c_in, kernel, stride, padding, dilation)
// for weights w of a convolution with stride s, padding p.
template <typename T>
Window2d pack_window(const CArray<T>& w, Pair s, Pair p, const ConvParams& cp) {
  check_ndim(w, 4, "weight");
  RELPROP_CHECK(w.shape(0) % cp.groups == 0, "weight.shape[0]=", w.shape(0),
                " (output channels) must be a multiple of groups=", cp.groups);
  const idx eh = cp.dilation[0] * (w.shape(2) - 1) + 1, ew = cp.dilation[1] * (w.shape(3) - 1) + 1;
  Window2d g{1, w.shape(1) * cp.groups, eh, ew, w.shape(2), w.shape(3), s[0], s[1], p[0], p[1],
             cp.dilation[0], cp.dilation[1]};
  g.validate();
  return g;
}

// The algorithm of a convolution call: `code` (a relprop::ConvAlgo), or for -1 what
// plan_conv2d gives without Winograd (ConvRequest::direct).
template <typename T>
relprop::ConvAlgo conv_algo(int code, const Window2d& g, idx c_out, idx groups, bool backward) {
  if (code < 0)
    return relprop::plan_conv2d<T>(g, c_out, groups, backward, relprop::ConvRequest::direct).algo;
  RELPROP_CHECK(code <= static_cast<int>(relprop::ConvAlgo::col2im),
                "unknown convolution algorithm code ", code);
  return static_cast<relprop::ConvAlgo>(code);
}

std::string winograd_gemm(int tile, bool backward);

// The GEMM (or direct kernel) a packing for `algo` is made for: one name per packed layout.
std::string conv_gemm(relprop::ConvAlgo algo, bool backward) {
  using relprop::ConvAlgo;
  if (const int tile = relprop::conv_algo_tile(algo)) return winograd_gemm(tile, backward);
  if (algo == ConvAlgo::depthwise)
    return backward ? "conv2d_depthwise_backward" : "conv2d_depthwise_forward";
  if (!backward) return "conv2d_forward";  // gemm and gemm1x1: one layout
  return algo == ConvAlgo::col2im ? "conv2d_backward" : "conv2d_backward_flipped";
}

// PackedWeights of w for `gemm`: `size` elements filled by pack(dst) without the GIL.
template <typename T, class Pack>
PackedWeights packed_for(const char* gemm, const CArray<T>& w, idx size, Pack pack,
                         const ConvParams& conv = {}) {
  CArray<T> packed = output<T>({size});
  T* pp = packed.mutable_data();
  {
    py::gil_scoped_release nogil;
    pack(pp);
  }
  py::detail::array_proxy(packed.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
  return PackedWeights{relprop::isa_name(relprop::active_isa()), gemm, dtype_name<T>(),
                       shape_of(w), packed, conv.groups,
                       std::vector<idx>{conv.dilation[0], conv.dilation[1]}};
}

// PackedWeights for conv2d_forward, or for conv2d_backward with stride s, padding p (and, for
// either, dilation d and `groups`), by the algorithm `algo` (-1: plan_conv2d's without
// Winograd; Winograd: its transformed weights).
template <typename T>
PackedWeights conv2d_pack(const CArray<T>& w, bool backward, Pair s, Pair p, Pair d,
                          idx groups, int algo, int nthreads) {
  const ConvParams cp = conv_params(groups, d);
  const Window2d g = pack_window(w, s, p, cp);
  const idx c_out = w.shape(0);
  const relprop::ConvAlgo a = conv_algo<T>(algo, g, c_out, groups, backward);
  relprop::check_conv_algo(a, g, c_out, groups, backward);
  const std::string gemm = conv_gemm(a, backward);
  if (const int tile = relprop::conv_algo_tile(a))
    return packed_for<T>(
        gemm.c_str(), w, relprop::winograd_packed_size<T>(c_out, g.c, tile, backward),
        [&](T* dst) {
          relprop::winograd_pack<T>(w.data(), c_out, g.c, tile, backward, dst, nthreads);
        });
  if (backward)
    return packed_for<T>(
        gemm.c_str(), w, relprop::conv2d_backward_packed_size<T>(g, c_out, groups, a),
        [&](T* dst) { relprop::conv2d_pack_backward<T>(w.data(), g, c_out, groups, a, dst); }, cp);
  return packed_for<T>(
      gemm.c_str(), w, relprop::conv2d_packed_size<T>(g, c_out, groups, a),
      [&](T* dst) { relprop::conv2d_pack<T>(w.data(), g, c_out, groups, a, dst); }, cp);
}

// PackedWeights for dense_forward (forward=true) or dense_backward, under the ISA in use.
template <typename T>
PackedWeights dense_pack(const CArray<T>& w, bool forward) {
  check_ndim(w, 2, "weight");
  const idx out = w.shape(0), in = w.shape(1);
  return packed_for<T>(forward ? "dense_forward" : "dense_backward", w,
                       relprop::dense_packed_size<T>(in, out, forward),
                       [&](T* dst) { relprop::dense_pack<T>(w.data(), in, out, forward, dst); });
}

template <typename T>
Window2d conv_window(const CArray<T>& x, const CArray<T>& w, Pair s, Pair p,
                     const ConvParams& cp = {}) {
  check_ndim(x, 4, "x");
  check_conv_weight(w, x.shape(1), cp, "x");
  Window2d g{x.shape(0), x.shape(1), x.shape(2), x.shape(3), w.shape(2), w.shape(3), s[0], s[1],
             p[0], p[1], cp.dilation[0], cp.dilation[1]};
  g.validate();
  return g;
}

// None, or the packing of w for `algo` (as conv2d_pack made it).
template <typename T>
const T* conv_packed(const py::object& packed, const CArray<T>& w, const Window2d& g,
                     const ConvParams& cp, relprop::ConvAlgo algo, bool backward) {
  if (packed.is_none()) return nullptr;
  const idx c_out = w.shape(0);
  relprop::check_conv_algo(algo, g, c_out, cp.groups, backward);
  const std::string gemm = conv_gemm(algo, backward);
  if (const int tile = relprop::conv_algo_tile(algo))
    return optional_packed<T>(packed, gemm.c_str(), w,
                              relprop::winograd_packed_size<T>(c_out, g.c, tile, backward));
  const idx size = backward ? relprop::conv2d_backward_packed_size<T>(g, c_out, cp.groups, algo)
                            : relprop::conv2d_packed_size<T>(g, c_out, cp.groups, algo);
  return optional_packed<T>(packed, gemm.c_str(), w, size, cp);
}

template <typename T>
CArray<T> conv2d_forward(const CArray<T>& x, const CArray<T>& w, const py::object& b, Pair s, Pair p,
                         int nthreads, const py::object& packed, Pair d, idx groups, bool relu,
                         int algo) {
  const ConvParams cp = conv_params(groups, d);
  const Window2d g = conv_window(x, w, s, p, cp);
  const idx c_out = w.shape(0);
  const relprop::ConvAlgo a = conv_algo<T>(algo, g, c_out, groups, false);
  CArray<T> keep;
  const T* bp = optional_bias<T>(b, c_out, keep);
  const T* pp = conv_packed<T>(packed, w, g, cp, a, false);
  CArray<T> y = output<T>({g.n, c_out, g.oh(), g.ow()});
  T* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::conv2d_forward<T>(x.data(), w.data(), bp, yp, g, c_out, groups, a, nthreads, pp,
                               relu);
  }
  return y;
}

// (conv(x, w[:split]), conv(x, w[split:])) as two arrays, from one pass over x.
template <typename T>
py::tuple conv2d_forward_split(const CArray<T>& x, const CArray<T>& w, const py::object& b,
                               idx split, Pair s, Pair p, int nthreads,
                               const py::object& packed, Pair d, idx groups, int algo) {
  const ConvParams cp = conv_params(groups, d);
  const Window2d g = conv_window(x, w, s, p, cp);
  const idx c_out = w.shape(0);
  const relprop::ConvAlgo a = conv_algo<T>(algo, g, c_out, groups, false);
  RELPROP_CHECK(split > 0 && split < c_out, "split must be in [1, ", c_out - 1, "], got ", split);
  RELPROP_CHECK(split % groups == 0 && (c_out - split) % groups == 0, "split=", split,
                " must cut weight.shape[0]=", c_out, " into two multiples of groups=", groups,
                " (each half is a grouped convolution)");
  const bool stacked = groups > 1 && !relprop::conv2d_depthwise(g, groups);
  RELPROP_CHECK(!(stacked && !packed.is_none()), "conv2d_forward_split with groups=", groups,
                " (1 < groups < c_in) packs each group's rows of both halves itself: pass "
                "packed=None");
  CArray<T> keep;
  const T* bp = optional_bias<T>(b, c_out, keep);
  const T* pp = conv_packed<T>(packed, w, g, cp, a, false);
  CArray<T> y = output<T>({g.n, split, g.oh(), g.ow()});
  CArray<T> y2 = output<T>({g.n, c_out - split, g.oh(), g.ow()});
  T* yp = y.mutable_data();
  T* y2p = y2.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::conv2d_forward_split<T>(x.data(), w.data(), bp, yp, y2p, g, c_out, split, groups,
                                     a, nthreads, pp);
  }
  return py::make_tuple(y, y2);
}

// Geometry of a backward pass: from the input size hw and the output gradient gy.
template <typename T>
Window2d backward_window(const CArray<T>& gy, idx c, Pair hw, Pair k, Pair s, Pair p,
                         Pair d = Pair{1, 1}, bool ceil = false) {
  check_ndim(gy, 4, "grad");
  Window2d g{gy.shape(0), c, hw[0], hw[1], k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1], ceil};
  g.validate();
  RELPROP_CHECK(gy.shape(2) == g.oh() && gy.shape(3) == g.ow(), "grad spatial shape (", gy.shape(2),
                ", ", gy.shape(3), ") must equal the output shape (", g.oh(), ", ", g.ow(), ")");
  return g;
}

template <typename T>
CArray<T> conv2d_backward(const CArray<T>& gy, const CArray<T>& w, Pair hw, Pair s, Pair p,
                          int nthreads, const py::object& packed, Pair d, idx groups,
                          const py::object& mask, int algo) {
  const ConvParams cp = conv_params(groups, d);
  check_ndim(w, 4, "weight");
  RELPROP_CHECK(w.shape(0) % groups == 0, "weight.shape[0]=", w.shape(0),
                " (output channels) must be a multiple of groups=", groups);
  const Window2d g = backward_window(gy, w.shape(1) * groups, hw, {w.shape(2), w.shape(3)}, s, p, d);
  const idx c_out = w.shape(0);
  RELPROP_CHECK(gy.shape(1) == c_out, "grad.shape[1]=", gy.shape(1), " must equal ", c_out,
                " (weight.shape[0])");
  const relprop::ConvAlgo a = conv_algo<T>(algo, g, c_out, groups, true);
  const T* pp = conv_packed<T>(packed, w, g, cp, a, true);
  CArray<T> keep;
  const T* mp = optional_array<T>(mask, {g.n, g.c, g.h, g.w}, "mask", keep);
  CArray<T> gx = output<T>({g.n, g.c, g.h, g.w});
  T* gp = gx.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::conv2d_backward<T>(gy.data(), w.data(), gp, g, c_out, groups, a, nthreads, pp, mp);
  }
  return gx;
}

template <typename T>
py::tuple maxpool2d_forward(const CArray<T>& x, Pair k, Pair s, Pair p, int nthreads, bool ceil) {
  check_ndim(x, 4, "x");
  const Window2d g = window(x, k, s, p, ceil);
  RELPROP_CHECK(2 * p[0] <= k[0] && 2 * p[1] <= k[1], "padding must be at most half the kernel size");
  CArray<T> y = output<T>({g.n, g.c, g.oh(), g.ow()});
  CArray<std::int64_t> arg = output<std::int64_t>({g.n, g.c, g.oh(), g.ow()});
  T* yp = y.mutable_data();
  std::int64_t* ap = arg.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::maxpool2d_forward<T>(x.data(), yp, ap, g, nthreads);
  }
  return py::make_tuple(y, arg);
}

template <typename T>
CArray<T> maxpool2d_backward(const CArray<T>& gy, const CArray<std::int64_t>& arg, Pair hw, Pair k,
                             Pair s, Pair p, int nthreads, const py::object& mask, bool ceil) {
  const Window2d g = backward_window(gy, gy.shape(1), hw, k, s, p, Pair{1, 1}, ceil);
  RELPROP_CHECK(arg.ndim() == 4 && arg.size() == gy.size(), "argmax must have the shape of grad");
  CArray<T> keep;
  const T* mp = optional_array<T>(mask, shape_of(gy), "mask", keep);
  RELPROP_CHECK(!mp || (s[0] >= k[0] && s[1] >= k[1]),
                "maxpool2d_backward with a mask needs disjoint windows (stride >= kernel), got "
                "kernel (", k[0], ", ", k[1], ") and stride (", s[0], ", ", s[1], ")");
  CArray<T> gx = output<T>({g.n, g.c, g.h, g.w});
  T* gp = gx.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::maxpool2d_backward_masked<T>(gy.data(), arg.data(), mp, gp, g, nthreads);
  }
  return gx;
}

template <typename T>
CArray<T> avgpool2d_forward(const CArray<T>& x, Pair k, Pair s, Pair p, int nthreads, bool ceil,
                            bool count_pad) {
  check_ndim(x, 4, "x");
  const Window2d g = window(x, k, s, p, ceil);
  RELPROP_CHECK(2 * p[0] <= k[0] && 2 * p[1] <= k[1], "padding must be at most half the kernel size");
  CArray<T> y = output<T>({g.n, g.c, g.oh(), g.ow()});
  T* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::avgpool2d_forward<T>(x.data(), yp, g, count_pad, nthreads);
  }
  return y;
}

template <typename T>
CArray<T> avgpool2d_backward(const CArray<T>& gy, Pair hw, Pair k, Pair s, Pair p, int nthreads,
                             bool ceil, bool count_pad) {
  const Window2d g = backward_window(gy, gy.shape(1), hw, k, s, p, Pair{1, 1}, ceil);
  RELPROP_CHECK(2 * p[0] <= k[0] && 2 * p[1] <= k[1], "padding must be at most half the kernel size");
  CArray<T> gx = output<T>({g.n, g.c, g.h, g.w});
  T* gp = gx.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::avgpool2d_backward<T>(gy.data(), gp, g, count_pad, nthreads);
  }
  return gx;
}

template <typename T>
CArray<T> adaptive_avgpool2d_forward(const CArray<T>& x, Pair out_hw, int nthreads) {
  check_ndim(x, 4, "x");
  RELPROP_CHECK(out_hw[0] > 0 && out_hw[1] > 0, "output size must be positive, got (", out_hw[0],
                ", ", out_hw[1], ")");
  RELPROP_CHECK(x.shape(2) > 0 && x.shape(3) > 0, "x must have a positive height and width, got ",
                "(", x.shape(2), ", ", x.shape(3), ")");
  CArray<T> y = output<T>({x.shape(0), x.shape(1), out_hw[0], out_hw[1]});
  T* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::adaptive_avgpool2d_forward<T>(x.data(), yp, x.shape(0) * x.shape(1), x.shape(2),
                                           x.shape(3), out_hw[0], out_hw[1], nthreads);
  }
  return y;
}

template <typename T>
CArray<T> adaptive_avgpool2d_backward(const CArray<T>& gy, Pair in_hw, int nthreads) {
  check_ndim(gy, 4, "grad");
  RELPROP_CHECK(in_hw[0] > 0 && in_hw[1] > 0, "in_hw must be positive, got (", in_hw[0], ", ",
                in_hw[1], ")");
  RELPROP_CHECK(gy.shape(2) > 0 && gy.shape(3) > 0, "grad must have a positive height and width, ",
                "got (", gy.shape(2), ", ", gy.shape(3), ")");
  CArray<T> gx = output<T>({gy.shape(0), gy.shape(1), in_hw[0], in_hw[1]});
  T* gp = gx.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::adaptive_avgpool2d_backward<T>(gy.data(), gp, gy.shape(0) * gy.shape(1), in_hw[0],
                                            in_hw[1], gy.shape(2), gy.shape(3), nthreads);
  }
  return gx;
}

// The upsampling of planes of in_hw to out_hw (relprop::Upsample2d).
relprop::Upsample2d upsample2d(idx planes, Pair in_hw, Pair out_hw, int mode, bool align_corners,
                               std::array<double, 2> scale) {
  RELPROP_CHECK(in_hw[0] > 0 && in_hw[1] > 0 && out_hw[0] > 0 && out_hw[1] > 0,
                "upsample2d: sizes must be positive, got input (", in_hw[0], ", ", in_hw[1],
                "), output (", out_hw[0], ", ", out_hw[1], ")");
  return {planes, in_hw[0], in_hw[1], out_hw[0], out_hw[1], mode, align_corners, scale[0],
          scale[1]};
}

template <typename T>
CArray<T> upsample2d_forward(const CArray<T>& x, Pair out_hw, int mode, bool align_corners,
                             std::array<double, 2> scale, int nthreads) {
  check_ndim(x, 4, "x");
  const relprop::Upsample2d u = upsample2d(x.shape(0) * x.shape(1), {x.shape(2), x.shape(3)},
                                           out_hw, mode, align_corners, scale);
  CArray<T> y = output<T>({x.shape(0), x.shape(1), out_hw[0], out_hw[1]});
  T* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::upsample2d_forward<T>(x.data(), yp, u, nthreads);
  }
  return y;
}

template <typename T>
CArray<T> upsample2d_backward(const CArray<T>& gy, Pair in_hw, int mode, bool align_corners,
                              std::array<double, 2> scale, int nthreads) {
  check_ndim(gy, 4, "grad");
  const relprop::Upsample2d u = upsample2d(gy.shape(0) * gy.shape(1), in_hw,
                                           {gy.shape(2), gy.shape(3)}, mode, align_corners,
                                           scale);
  CArray<T> gx = output<T>({gy.shape(0), gy.shape(1), in_hw[0], in_hw[1]});
  T* gp = gx.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::upsample2d_backward<T>(gy.data(), gp, u, nthreads);
  }
  return gx;
}

// "(1, 3, 4)": the shape of a, its first axis replaced by `first` if that is >= 0.
template <typename T>
std::string shape_text(const CArray<T>& a, py::ssize_t first = -1) {
  std::string s = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d)
    s += (d ? ", " : "") + std::to_string(d == 0 && first >= 0 ? first : a.shape(d));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

template <typename T>
CArray<T> like(const CArray<T>& a) {
  return output<T>(std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim()));
}

template <typename T>
void check_same_shape(const CArray<T>& a, const CArray<T>& b, const char* what) {
  bool same = a.ndim() == b.ndim();
  for (py::ssize_t i = 0; same && i < a.ndim(); ++i) same = a.shape(i) == b.shape(i);
  RELPROP_CHECK(same, what, ": arrays must have the same shape");
}

template <typename T>
CArray<T> relu_forward(const CArray<T>& x, int nthreads) {
  CArray<T> y = like(x);
  T* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::relu_forward<T>(x.data(), yp, x.size(), nthreads);
  }
  return y;
}

template <typename T>
CArray<T> relu_backward(const CArray<T>& g, const CArray<T>& x, int mode, int nthreads) {
  check_same_shape(g, x, "relu_backward");
  RELPROP_CHECK(mode >= 0 && mode <= 2, "mode must be 0, 1 or 2, got ", mode);
  CArray<T> gx = like(g);
  T* gp = gx.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::relu_backward<T>(g.data(), x.data(), gp, g.size(), mode, nthreads);
  }
  return gx;
}

template <typename T>
CArray<T> hardtanh_forward(const CArray<T>& x, double lo, double hi, int nthreads) {
  CArray<T> y = like(x);
  T* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::hardtanh_forward<T>(x.data(), yp, x.size(), lo, hi, nthreads);
  }
  return y;
}

template <typename T>
CArray<T> hardtanh_backward(const CArray<T>& g, const CArray<T>& x, double lo, double hi,
                            int nthreads) {
  check_same_shape(g, x, "hardtanh_backward");
  CArray<T> gx = like(g);
  T* gp = gx.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::hardtanh_backward<T>(g.data(), x.data(), gp, g.size(), lo, hi, nthreads);
  }
  return gx;
}

// x as (n, channels, inner) rows for PReLU's slopes a: (channels,) along axis 1 of x, or (1,)
// for every element (channels = 1, inner = a sample's size)
template <typename T>
std::array<idx, 3> prelu_rows(const CArray<T>& x, const CArray<T>& a) {
  RELPROP_CHECK(x.ndim() >= 1, "x must have a sample axis");
  const idx n = x.shape(0), per = n > 0 ? x.size() / n : 0;
  if (a.ndim() == 1 && a.shape(0) == 1) return {n, 1, per};
  RELPROP_CHECK(x.ndim() >= 2 && a.ndim() == 1 && a.shape(0) == x.shape(1),
                "weight must have shape (1,) or (", x.ndim() >= 2 ? x.shape(1) : 1,
                ",) (one slope, or one per channel of x), got ", shape_text(a));
  return {n, x.shape(1), x.shape(1) > 0 ? per / x.shape(1) : 0};
}

template <typename T>
CArray<T> prelu_forward(const CArray<T>& x, const CArray<T>& a, int nthreads) {
  const auto r = prelu_rows(x, a);
  CArray<T> y = like(x);
  T* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::prelu_forward<T>(x.data(), a.data(), yp, r[0], r[1], r[2], nthreads);
  }
  return y;
}

template <typename T>
CArray<T> prelu_backward(const CArray<T>& g, const CArray<T>& x, const CArray<T>& a,
                         int nthreads) {
  check_same_shape(g, x, "prelu_backward");
  const auto r = prelu_rows(x, a);
  CArray<T> gx = like(g);
  T* gp = gx.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::prelu_backward<T>(g.data(), x.data(), a.data(), gp, r[0], r[1], r[2], nthreads);
  }
  return gx;
}

template <typename T>
CArray<T> leaky_relu_forward(const CArray<T>& x, double slope, int nthreads) {
  CArray<T> y = like(x);
  T* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::leaky_relu_forward<T>(x.data(), yp, x.size(), slope, nthreads);
  }
  return y;
}

template <typename T>
CArray<T> leaky_relu_backward(const CArray<T>& g, const CArray<T>& x, double slope,
                              int nthreads) {
  check_same_shape(g, x, "leaky_relu_backward");
  CArray<T> gx = like(g);
  T* gp = gx.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::leaky_relu_backward<T>(g.data(), x.data(), gp, g.size(), slope, nthreads);
  }
  return gx;
}

template <typename T>
CArray<T> activation_forward(const CArray<T>& x, int op, int nthreads) {
  CArray<T> y = like(x);
  T* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::activation_forward<T>(x.data(), yp, x.size(), op, nthreads);
  }
  return y;
}

template <typename T>
CArray<T> activation_backward(const CArray<T>& g, const CArray<T>& x, int op, int nthreads) {
  check_same_shape(g, x, "activation_backward");
  CArray<T> gx = like(g);
  T* gp = gx.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::activation_backward<T>(g.data(), x.data(), gp, g.size(), op, nthreads);
  }
  return gx;
}

// The shapes of attention's operands (n, tq, heads*dk), (n, tk, heads*dk), (n, tk, heads*dv),
// checked: {n, tq, tk, dk, dv}.
template <typename T>
std::array<idx, 5> attention_shapes(const CArray<T>& q, const CArray<T>& k, const CArray<T>& v,
                                    idx heads, const char* what) {
  check_ndim(q, 3, "q");
  check_ndim(k, 3, "k");
  check_ndim(v, 3, "v");
  RELPROP_CHECK(heads > 0, what, ": heads must be > 0, got ", heads);
  RELPROP_CHECK(k.shape(0) == q.shape(0) && v.shape(0) == q.shape(0) && k.shape(1) == v.shape(1) &&
                    k.shape(2) == q.shape(2) && q.shape(2) % heads == 0 && v.shape(2) % heads == 0,
                what, ": q (n, tq, heads*dk), k (n, tk, heads*dk) and v (n, tk, heads*dv) with ",
                heads, " heads needed, got ", shape_text(q), ", ", shape_text(k), ", ",
                shape_text(v));
  return {q.shape(0), q.shape(1), k.shape(1), q.shape(2) / heads, v.shape(2) / heads};
}

// -> (out (n, tq, heads*dv), a (n, heads, tq, tk))
template <typename T>
py::tuple attention_forward(const CArray<T>& q, const CArray<T>& k, const CArray<T>& v, idx heads,
                            double scale, int nthreads) {
  const auto [n, tq, tk, dk, dv] = attention_shapes(q, k, v, heads, "attention_forward");
  CArray<T> out = output<T>({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(tq),
                             static_cast<py::ssize_t>(heads * dv)});
  CArray<T> a = output<T>({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(heads),
                           static_cast<py::ssize_t>(tq), static_cast<py::ssize_t>(tk)});
  T *op = out.mutable_data(), *ap = a.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::attention_forward<T>(q.data(), k.data(), v.data(), op, ap, n, tq, tk, heads, dk, dv,
                                  scale, nthreads);
  }
  return py::make_tuple(out, a);
}

// -> (gq, gk, gv), each None unless asked for
template <typename T>
py::tuple attention_backward(const CArray<T>& g, const CArray<T>& q, const CArray<T>& k,
                             const CArray<T>& v, const CArray<T>& a, idx heads, double scale,
                             bool want_q, bool want_k, bool want_v, int nthreads) {
  const auto [n, tq, tk, dk, dv] = attention_shapes(q, k, v, heads, "attention_backward");
  RELPROP_CHECK(g.ndim() == 3 && g.shape(0) == n && g.shape(1) == tq && g.shape(2) == heads * dv,
                "attention_backward: grad must have the output's shape (", n, ", ", tq, ", ",
                heads * dv, "), got ", shape_text(g));
  RELPROP_CHECK(a.ndim() == 4 && a.shape(0) == n && a.shape(1) == heads && a.shape(2) == tq &&
                    a.shape(3) == tk,
                "attention_backward: a must have shape (", n, ", ", heads, ", ", tq, ", ", tk,
                "), got ", shape_text(a));
  CArray<T> gq, gk, gv;
  T *qp = nullptr, *kp = nullptr, *vp = nullptr;
  if (want_q) qp = (gq = like(q)).mutable_data();
  if (want_k) kp = (gk = like(k)).mutable_data();
  if (want_v) vp = (gv = like(v)).mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::attention_backward<T>(g.data(), q.data(), k.data(), v.data(), a.data(), qp, kp, vp,
                                   n, tq, tk, heads, dk, dv, scale, nthreads);
  }
  auto out = [](bool want, const CArray<T>& x) -> py::object {
    return want ? py::object(x) : py::object(py::none());
  };
  return py::make_tuple(out(want_q, gq), out(want_k, gk), out(want_v, gv));
}

// y[n, c, ...] = x[n, c, ...] * scale[c] + shift[c]
template <typename T>
CArray<T> channel_affine(const CArray<T>& x, const CArray<T>& scale, const py::object& shift,
                         int nthreads) {
  RELPROP_CHECK(x.ndim() >= 2, "x must have a sample and a channel axis, got ", x.ndim(),
                " dimensions");
  const idx n = x.shape(0), c = x.shape(1), inner = c > 0 && n > 0 ? x.size() / (n * c) : 0;
  RELPROP_CHECK(scale.ndim() == 1 && scale.shape(0) == c, "scale must have shape (", c,
                ",) (the channels of x), got ", shape_text(scale));
  CArray<T> keep;
  const T* sh = nullptr;
  if (!shift.is_none()) {
    if (!py::isinstance<CArray<T>>(shift))
      throw py::type_error("shift must be a C-contiguous array of x's dtype");
    keep = py::reinterpret_borrow<CArray<T>>(shift);
    RELPROP_CHECK(keep.ndim() == 1 && keep.shape(0) == c, "shift must have shape (", c,
                  ",) (the channels of x), got ", shape_text(keep));
    sh = keep.data();
  }
  CArray<T> y = like(x);
  T* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::channel_affine<T>(x.data(), scale.data(), sh, yp, n, c, inner, nthreads);
  }
  return y;
}

// An optional vector of c elements (None: null), kept alive in `keep`.
template <typename T>
const T* optional_vector(const py::object& a, idx c, const char* name, CArray<T>& keep) {
  if (a.is_none()) return nullptr;
  if (!py::isinstance<CArray<T>>(a))
    throw py::type_error(std::string(name) + " must be a C-contiguous array of x's dtype");
  keep = py::reinterpret_borrow<CArray<T>>(a);
  RELPROP_CHECK(keep.ndim() == 1 && keep.shape(0) == c, name, " must have shape (", c,
                ",) (the normalized axis), got ", shape_text(keep));
  return keep.data();
}

void check_axis_split(py::ssize_t size, idx outer, idx c, idx inner, const char* what) {
  RELPROP_CHECK(outer >= 0 && c > 0 && inner > 0 && outer * c * inner == size, what,
                ": outer * c * inner must be the size of x (", size, "), got ", outer, " * ", c,
                " * ", inner);
}

// x viewed as (outer, c, inner) -> (y, mean, rstd); mean and rstd (outer * inner,)
template <typename T>
py::tuple layer_norm_forward(const CArray<T>& x, const py::object& weight, const py::object& bias,
                             idx outer, idx c, idx inner, double eps, int nthreads) {
  check_axis_split(x.size(), outer, c, inner, "layer_norm_forward");
  CArray<T> kw, kb;
  const T* w = optional_vector<T>(weight, c, "weight", kw);
  const T* b = optional_vector<T>(bias, c, "bias", kb);
  CArray<T> y = like(x);
  CArray<T> mean = output<T>({static_cast<py::ssize_t>(outer * inner)});
  CArray<T> rstd = output<T>({static_cast<py::ssize_t>(outer * inner)});
  T *yp = y.mutable_data(), *mp = mean.mutable_data(), *rp = rstd.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::layer_norm_forward<T>(x.data(), w, b, yp, mp, rp, outer, c, inner, eps, nthreads);
  }
  return py::make_tuple(y, mean, rstd);
}

template <typename T>
CArray<T> layer_norm_backward(const CArray<T>& g, const py::object& x, const py::object& weight,
                              const py::object& mean, const CArray<T>& rstd, idx outer, idx c,
                              idx inner, bool frozen_std, int nthreads) {
  check_axis_split(g.size(), outer, c, inner, "layer_norm_backward");
  RELPROP_CHECK(rstd.size() == outer * inner, "layer_norm_backward: rstd must have ",
                outer * inner, " elements, got ", rstd.size());
  CArray<T> kw, kx, km;
  const T* w = optional_vector<T>(weight, c, "weight", kw);
  const T *xp = nullptr, *mp = nullptr;
  if (!frozen_std) {
    RELPROP_CHECK(!x.is_none() && !mean.is_none(),
                  "layer_norm_backward: the gradient reads x and mean");
    if (!py::isinstance<CArray<T>>(x) || !py::isinstance<CArray<T>>(mean))
      throw py::type_error("x and mean must be C-contiguous arrays of grad's dtype");
    kx = py::reinterpret_borrow<CArray<T>>(x);
    km = py::reinterpret_borrow<CArray<T>>(mean);
    check_same_shape(g, kx, "layer_norm_backward");
    RELPROP_CHECK(km.size() == outer * inner, "layer_norm_backward: mean must have ",
                  outer * inner, " elements, got ", km.size());
    xp = kx.data();
    mp = km.data();
  }
  CArray<T> gx = like(g);
  T* gp = gx.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::layer_norm_backward<T>(g.data(), xp, w, mp, rstd.data(), gp, outer, c, inner,
                                    frozen_std, nthreads);
  }
  return gx;
}

template <typename T>
CArray<T> lrp_divide(const CArray<T>& r, const CArray<T>& z, double eps, int nthreads,
                     const py::object& shift) {
  check_same_shape(r, z, "lrp_divide");
  const idx samples = r.ndim() > 0 ? r.shape(0) : 1, len = samples > 0 ? r.size() / samples : 0;
  CArray<T> keep;
  const T* sh = nullptr;
  if (!shift.is_none()) {
    RELPROP_CHECK(r.ndim() > 0, "lrp_divide: shift needs a batch axis in r");
    if (!py::isinstance<CArray<T>>(shift))
      throw py::type_error("shift must be a C-contiguous array of r's dtype");
    keep = py::reinterpret_borrow<CArray<T>>(shift);
    bool same = keep.ndim() == r.ndim() && keep.shape(0) == 1;
    for (py::ssize_t d = 1; same && d < r.ndim(); ++d) same = keep.shape(d) == r.shape(d);
    RELPROP_CHECK(same, "lrp_divide: shift must be one sample shaped like r[:1] ",
                  shape_text(r, 1), ", got ", shape_text(keep));
    sh = keep.data();
  }
  CArray<T> s = like(r);
  T* sp = s.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::lrp_divide<T>(r.data(), z.data(), sh, sp, samples, len, eps, nthreads);
  }
  return s;
}

// (samples, 2 * channels, ...) for the stacked shares of r, p, n shaped (samples, channels, ...).
template <typename T>
CArray<T> stacked_like(const CArray<T>& r, const CArray<T>& p, const CArray<T>& n,
                       const char* what) {
  check_same_shape(r, p, what);
  check_same_shape(r, n, what);
  RELPROP_CHECK(r.ndim() >= 2, what, ": arrays must have a sample and a channel axis, got ",
                r.ndim(), " dimensions");
  std::vector<py::ssize_t> shape(r.shape(), r.shape() + r.ndim());
  shape[1] *= 2;
  return output<T>(shape);
}

template <typename T>
CArray<T> lrp_gamma_shares(const CArray<T>& r, const CArray<T>& p, const CArray<T>& n,
                           const std::optional<CArray<T>>& z, double gamma, double eps,
                           int nthreads) {
  CArray<T> out = stacked_like(r, p, n, "lrp_gamma_shares");
  if (z) check_same_shape(r, *z, "lrp_gamma_shares");
  const T* zp = z ? z->data() : nullptr;
  T* op = out.mutable_data();
  const idx samples = r.shape(0), len = samples ? r.size() / samples : 0;
  {
    py::gil_scoped_release nogil;
    relprop::lrp_gamma_shares<T>(r.data(), p.data(), n.data(), zp, op, samples, len, gamma, eps,
                                 nthreads);
  }
  return out;
}

template <typename T>
CArray<T> lrp_alpha_beta_shares(const CArray<T>& r, const CArray<T>& p, const CArray<T>& n,
                                double alpha, double beta, double eps, int nthreads) {
  CArray<T> out = stacked_like(r, p, n, "lrp_alpha_beta_shares");
  T* op = out.mutable_data();
  const idx samples = r.shape(0), len = samples ? r.size() / samples : 0;
  {
    py::gil_scoped_release nogil;
    relprop::lrp_alpha_beta_shares<T>(r.data(), p.data(), n.data(), op, samples, len, alpha,
                                      beta, eps, nthreads);
  }
  return out;
}

// c = op(a) @ op(b) for 2-D arrays (for tests and the benchmark of the GEMM core).
template <typename T>
CArray<T> gemm(const CArray<T>& a, const CArray<T>& b, bool trans_a, bool trans_b, int nthreads) {
  check_ndim(a, 2, "a");
  check_ndim(b, 2, "b");
  const idx m = trans_a ? a.shape(1) : a.shape(0), k = trans_a ? a.shape(0) : a.shape(1);
  const idx kb = trans_b ? b.shape(1) : b.shape(0), n = trans_b ? b.shape(0) : b.shape(1);
  RELPROP_CHECK(k == kb, "inner dimensions differ: ", k, " and ", kb);
  const idx rsa = trans_a ? 1 : a.shape(1), csa = trans_a ? a.shape(1) : 1;
  const idx rsb = trans_b ? 1 : b.shape(1), csb = trans_b ? b.shape(1) : 1;
  CArray<T> c = output<T>({m, n});
  T* cp = c.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::gemm<T>(m, n, k, a.data(), rsa, csa, b.data(), rsb, csb, cp, n, false, nthreads);
  }
  return c;
}

template <typename T>
void define(py::module_& m) {
  auto nc = [](const char* name) { return py::arg(name).noconvert(); };
  m.def("dense_forward", &dense_forward<T>, nc("x"), nc("weight"), "bias"_a, "nthreads"_a,
        "packed"_a = py::none(), "relu"_a = false);
  m.def("dense_backward", &dense_backward<T>, nc("grad"), nc("weight"), "nthreads"_a,
        "packed"_a = py::none(), "mask"_a = py::none());
  m.def("dense_lrp_epsilon", &dense_lrp_epsilon<T>, nc("r"), nc("z"), nc("a"), nc("weight"),
        "eps"_a, "nthreads"_a, "packed"_a = py::none(),
        "a * ((r / stab(z)) @ weight); see relprop.ops.dense_lrp_epsilon.");
  m.def("dense_pack", &dense_pack<T>, nc("weight"), "forward"_a);
  const Pair one{1, 1};
  m.def("conv2d_forward", &conv2d_forward<T>, nc("x"), nc("weight"), "bias"_a, "stride"_a, "padding"_a,
        "nthreads"_a, "packed"_a = py::none(), "dilation"_a = one, "groups"_a = 1,
        "relu"_a = false, "algo"_a = -1,
        "x (n, c_in, h, w), weight (c_out, c_in/groups, kh, kw) -> (n, c_out, oh, ow); see "
        "relprop.ops.conv2d_forward.");
  m.def("conv2d_forward_split", &conv2d_forward_split<T>, nc("x"), nc("weight"), "bias"_a,
        "split"_a, "stride"_a, "padding"_a, "nthreads"_a, "packed"_a = py::none(),
        "dilation"_a = one, "groups"_a = 1, "algo"_a = -1,
        "(conv(x, weight[:split]), conv(x, weight[split:])) from one pass; see "
        "relprop.ops.conv2d_forward_split.");
  m.def("conv2d_pack", &conv2d_pack<T>, nc("weight"), "backward"_a = false,
        "stride"_a = one, "padding"_a = Pair{0, 0}, "dilation"_a = one, "groups"_a = 1,
        "algo"_a = -1, "nthreads"_a = 0,
        "PackedWeights of weight for conv2d_forward, or conv2d_backward with backward=True, by "
        "the algorithm algo.");
  m.def("conv2d_backward", &conv2d_backward<T>, nc("grad"), nc("weight"), "in_hw"_a, "stride"_a,
        "padding"_a, "nthreads"_a, "packed"_a = py::none(), "dilation"_a = one, "groups"_a = 1,
        "mask"_a = py::none(), "algo"_a = -1,
        "grad (n, c_out, oh, ow) -> (n, c_in, h, w) with (h, w) = in_hw; see "
        "relprop.ops.conv2d_backward.");
  m.def("maxpool2d_forward", &maxpool2d_forward<T>, nc("x"), "kernel"_a, "stride"_a, "padding"_a,
        "nthreads"_a, "ceil_mode"_a = false);
  m.def("maxpool2d_backward", &maxpool2d_backward<T>, nc("grad"), nc("argmax"), "in_hw"_a, "kernel"_a,
        "stride"_a, "padding"_a, "nthreads"_a, "mask"_a = py::none(), "ceil_mode"_a = false);
  m.def("avgpool2d_forward", &avgpool2d_forward<T>, nc("x"), "kernel"_a, "stride"_a, "padding"_a,
        "nthreads"_a, "ceil_mode"_a = false, "count_include_pad"_a = true);
  m.def("avgpool2d_backward", &avgpool2d_backward<T>, nc("grad"), "in_hw"_a, "kernel"_a, "stride"_a,
        "padding"_a, "nthreads"_a, "ceil_mode"_a = false, "count_include_pad"_a = true);
  m.def("adaptive_avgpool2d_forward", &adaptive_avgpool2d_forward<T>, nc("x"), "out_hw"_a,
        "nthreads"_a, "x (n, c, h, w) -> (n, c, oh, ow), torch's AdaptiveAvgPool2d windows.");
  m.def("adaptive_avgpool2d_backward", &adaptive_avgpool2d_backward<T>, nc("grad"), "in_hw"_a,
        "nthreads"_a, "grad (n, c, oh, ow) -> (n, c, h, w): transpose of the forward.");
  m.def("hardtanh_forward", &hardtanh_forward<T>, nc("x"), "min_val"_a, "max_val"_a, "nthreads"_a,
        "min(max(x, min_val), max_val).");
  m.def("hardtanh_backward", &hardtanh_backward<T>, nc("grad"), nc("x"), "min_val"_a,
        "max_val"_a, "nthreads"_a, "x <= min_val or x >= max_val ? 0 : grad.");
  m.def("upsample2d_forward", &upsample2d_forward<T>, nc("x"), "out_hw"_a, "mode"_a,
        "align_corners"_a, "scale"_a, "nthreads"_a,
        "x (n, c, h, w) -> (n, c, oh, ow): mode 0 nearest, 1 bilinear, as torch's interpolate "
        "(scale: the scale factors given, or <= 0).");
  m.def("upsample2d_backward", &upsample2d_backward<T>, nc("grad"), "in_hw"_a, "mode"_a,
        "align_corners"_a, "scale"_a, "nthreads"_a,
        "grad (n, c, oh, ow) -> (n, c, h, w): transpose of the forward.");
  m.def("prelu_forward", &prelu_forward<T>, nc("x"), nc("weight"), "nthreads"_a,
        "x > 0 ? x : weight[c] * x, c along axis 1 (weight (1,): one slope for all).");
  m.def("prelu_backward", &prelu_backward<T>, nc("grad"), nc("x"), nc("weight"), "nthreads"_a,
        "x > 0 ? grad : weight[c] * grad.");
  m.def("leaky_relu_forward", &leaky_relu_forward<T>, nc("x"), "slope"_a, "nthreads"_a,
        "x > 0 ? x : slope * x.");
  m.def("leaky_relu_backward", &leaky_relu_backward<T>, nc("grad"), nc("x"), "slope"_a,
        "nthreads"_a, "x > 0 ? grad : slope * grad.");
  m.def("activation_forward", &activation_forward<T>, nc("x"), "op"_a, "nthreads"_a,
        "act(x) for the smooth activation numbered op (relprop.ops.ACTIVATIONS).");
  m.def("activation_backward", &activation_backward<T>, nc("grad"), nc("x"), "op"_a,
        "nthreads"_a, "grad * act'(x) for the activation numbered op.");
  m.def("channel_affine", &channel_affine<T>, nc("x"), nc("scale"), "shift"_a, "nthreads"_a,
        "x (n, c, ...) * scale[c] + shift[c] (shift None: 0).");
  m.def("layer_norm_forward", &layer_norm_forward<T>, nc("x"), "weight"_a, "bias"_a, "outer"_a,
        "c"_a, "inner"_a, "eps"_a, "nthreads"_a,
        "x as (outer, c, inner) normalized over c -> (y, mean, rstd), mean and rstd (outer*inner,).");
  m.def("layer_norm_backward", &layer_norm_backward<T>, nc("grad"), "x"_a, "weight"_a, "mean"_a,
        nc("rstd"), "outer"_a, "c"_a, "inner"_a, "frozen_std"_a, "nthreads"_a,
        "The gradient of layer_norm_forward w.r.t. x (frozen_std: with rstd held constant).");
  m.def("attention_forward", &attention_forward<T>, nc("q"), nc("k"), nc("v"), "heads"_a,
        "scale"_a, "nthreads"_a,
        "q (n, tq, heads*dk), k (n, tk, heads*dk), v (n, tk, heads*dv) -> (out (n, tq, "
        "heads*dv), a (n, heads, tq, tk)): per head softmax(scale q k^T) v and the weights.");
  m.def("attention_backward", &attention_backward<T>, nc("grad"), nc("q"), nc("k"), nc("v"),
        nc("a"), "heads"_a, "scale"_a, "want_q"_a, "want_k"_a, "want_v"_a, "nthreads"_a,
        "The gradients of attention_forward w.r.t. q, k, v (None where not wanted).");
  m.def("relu_forward", &relu_forward<T>, nc("x"), "nthreads"_a);
  m.def("relu_backward", &relu_backward<T>, nc("grad"), nc("x"), "mode"_a, "nthreads"_a);
  m.def("lrp_divide", &lrp_divide<T>, nc("r"), nc("z"), "eps"_a, "nthreads"_a,
        "shift"_a = py::none());
  m.def("lrp_gamma_shares", &lrp_gamma_shares<T>, nc("r"), nc("p"), nc("n"), nc("z").none(true),
        "gamma"_a, "eps"_a, "nthreads"_a);
  m.def("lrp_alpha_beta_shares", &lrp_alpha_beta_shares<T>, nc("r"), nc("p"), nc("n"),
        "alpha"_a, "beta"_a, "eps"_a, "nthreads"_a);
  m.def("gemm", &gemm<T>, nc("a"), nc("b"), "trans_a"_a, "trans_b"_a, "nthreads"_a);
}

// ---------------------------------------------------------------------------------------------
// Winograd convolution F(m x m, 3x3) (relprop/winograd.hpp)

// The GEMM name of a Winograd packing: direction and tile (a packing for one is refused by the
// others).
std::string winograd_gemm(int tile, bool backward) {
  return std::string(backward ? "conv2d_winograd_backward" : "conv2d_winograd_forward") + "_f" +
         std::to_string(tile);
}

template <typename T>
void check_3x3(const CArray<T>& w) {
  check_ndim(w, 4, "weight");
  RELPROP_CHECK(w.shape(2) == 3 && w.shape(3) == 3,
                "Winograd convolution needs a 3x3 kernel, got weight of shape ", shape_text(w));
}

template <typename T>
const T* winograd_packed(const py::object& packed, const CArray<T>& w, int tile, bool backward) {
  if (packed.is_none()) return nullptr;
  const std::string gemm = winograd_gemm(tile, backward);
  return optional_packed<T>(packed, gemm.c_str(), w,
                            relprop::winograd_packed_size<T>(w.shape(0), w.shape(1), tile,
                                                             backward));
}

template <typename T>
PackedWeights conv2d_winograd_pack(const CArray<T>& w, int tile, bool backward, int nthreads) {
  check_3x3(w);
  const std::string gemm = winograd_gemm(tile, backward);
  const idx c_out = w.shape(0), c_in = w.shape(1);
  return packed_for<T>(gemm.c_str(), w,
                       relprop::winograd_packed_size<T>(c_out, c_in, tile, backward),
                       [&](T* dst) {
                         relprop::winograd_pack<T>(w.data(), c_out, c_in, tile, backward, dst,
                                                   nthreads);
                       });
}

// y, or (y[:, :split], y[:, split:]) for 0 < split < c_out (split = 0: one output).
template <typename T>
py::object conv2d_winograd_forward(const CArray<T>& x, const CArray<T>& w, const py::object& b,
                                   Pair p, int tile, idx split, int nthreads,
                                   const py::object& packed, idx block_tiles, bool relu) {
  check_3x3(w);
  const Window2d g = conv_window(x, w, {1, 1}, p, ConvParams{});
  relprop::winograd_validate(g, tile);
  const idx c_out = w.shape(0);
  RELPROP_CHECK(split == 0 || (split > 0 && split < c_out), "split must be in [1, ", c_out - 1,
                "] (or 0 for one output), got ", split);
  RELPROP_CHECK(!(relu && split > 0), "relu=True needs one output (split=0)");
  CArray<T> keep;
  const T* bp = optional_bias<T>(b, c_out, keep);
  const T* pp = winograd_packed<T>(packed, w, tile, false);
  const idx s1 = split > 0 ? split : c_out;
  CArray<T> y = output<T>({g.n, s1, g.oh(), g.ow()});
  CArray<T> y2 = output<T>({g.n, c_out - s1, g.oh(), g.ow()});
  T* yp = y.mutable_data();
  T* y2p = split > 0 ? y2.mutable_data() : nullptr;
  {
    py::gil_scoped_release nogil;
    relprop::winograd_forward<T>(x.data(), w.data(), bp, yp, y2p, g, c_out, s1, tile, nthreads,
                                 pp, block_tiles, relu);
  }
  if (split > 0) return py::make_tuple(y, y2);
  return std::move(y);
}

template <typename T>
CArray<T> conv2d_winograd_backward(const CArray<T>& gy, const CArray<T>& w, Pair hw, Pair p,
                                   int tile, int nthreads, const py::object& packed,
                                   idx block_tiles, const py::object& mask) {
  check_3x3(w);
  const Window2d g = backward_window(gy, w.shape(1), hw, {3, 3}, {1, 1}, p);
  relprop::winograd_validate(g, tile);
  const idx c_out = w.shape(0);
  RELPROP_CHECK(gy.shape(1) == c_out, "grad.shape[1]=", gy.shape(1), " must equal ", c_out,
                " (weight.shape[0])");
  const T* pp = winograd_packed<T>(packed, w, tile, true);
  CArray<T> keep;
  const T* mp = optional_array<T>(mask, {g.n, g.c, g.h, g.w}, "mask", keep);
  CArray<T> gx = output<T>({g.n, g.c, g.h, g.w});
  T* gp = gx.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::winograd_backward<T>(gy.data(), w.data(), gp, g, c_out, tile, nthreads, pp,
                                  block_tiles, mp);
  }
  return gx;
}

// ---------------------------------------------------------------------------------------------
// Fused convolutions, by the algorithm `algo` (a relprop::ConvAlgo code; -1: plan_conv2d's
// without Winograd), packed from conv2d_pack for that algorithm.

// (pooled, argmax) of maxpool2d(relu(conv2d(x, w, b))) with a 2x2 window, stride 2.
template <typename T>
py::tuple conv2d_forward_relu_maxpool(const CArray<T>& x, const CArray<T>& w, const py::object& b,
                                      Pair s, Pair p, int nthreads, const py::object& packed,
                                      Pair d, idx groups, int algo, idx block_tiles) {
  const ConvParams cp = conv_params(groups, d);
  const Window2d g = conv_window(x, w, s, p, cp);
  const idx c_out = w.shape(0);
  const relprop::ConvAlgo a = conv_algo<T>(algo, g, c_out, groups, false);
  CArray<T> keep;
  const T* bp = optional_bias<T>(b, c_out, keep);
  const T* pp = conv_packed<T>(packed, w, g, cp, a, false);
  CArray<T> y = output<T>({g.n, c_out, g.oh() / 2, g.ow() / 2});
  CArray<std::int64_t> arg = output<std::int64_t>({g.n, c_out, g.oh() / 2, g.ow() / 2});
  T* yp = y.mutable_data();
  std::int64_t* ap = arg.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::conv2d_forward_relu_maxpool<T>(x.data(), w.data(), bp, yp, ap, g, c_out, groups, a,
                                            nthreads, pp, block_tiles);
  }
  return py::make_tuple(y, arg);
}

// The backward pass of conv2d_forward_relu_maxpool from the pooled gradient.
template <typename T>
CArray<T> conv2d_backward_pooled(const CArray<T>& gp, const CArray<std::int64_t>& arg,
                                 const py::object& pooled, const CArray<T>& w, Pair hw, Pair s,
                                 Pair p, int nthreads, const py::object& packed, Pair d,
                                 idx groups, const py::object& mask, int algo) {
  const ConvParams cp = conv_params(groups, d);
  check_ndim(w, 4, "weight");
  check_ndim(gp, 4, "grad");
  RELPROP_CHECK(w.shape(0) % groups == 0, "weight.shape[0]=", w.shape(0),
                " (output channels) must be a multiple of groups=", groups);
  const idx c_out = w.shape(0);
  Window2d g{gp.shape(0), w.shape(1) * groups, hw[0], hw[1], w.shape(2), w.shape(3), s[0], s[1],
             p[0], p[1], d[0], d[1]};
  g.validate();
  const std::vector<idx> pshape{g.n, c_out, g.oh() / 2, g.ow() / 2};
  RELPROP_CHECK(shape_of(gp) == pshape, "grad must have shape ", shape_string(pshape),
                " (the pooled output of the convolution), got ", shape_string(shape_of(gp)));
  RELPROP_CHECK(shape_of(arg) == pshape, "argmax must have the shape of grad ",
                shape_string(pshape), ", got ", shape_string(shape_of(arg)));
  CArray<T> keep_p, keep_m;
  const T* yp = optional_array<T>(pooled, pshape, "pooled", keep_p);
  const T* mp = optional_array<T>(mask, {g.n, g.c, g.h, g.w}, "mask", keep_m);
  const relprop::ConvAlgo a = conv_algo<T>(algo, g, c_out, groups, true);
  const T* pp = conv_packed<T>(packed, w, g, cp, a, true);
  CArray<T> gx = output<T>({g.n, g.c, g.h, g.w});
  T* gxp = gx.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::conv2d_backward_pooled<T>(gp.data(), arg.data(), yp, w.data(), gxp, g, c_out,
                                       groups, a, nthreads, pp, mp);
  }
  return gx;
}

// a * conv2d_backward(r / stab(z), w): r, z (n, c_out, oh, ow), a (n, c_in, h, w).
template <typename T>
CArray<T> conv2d_lrp_epsilon(const CArray<T>& r, const CArray<T>& z, const CArray<T>& a,
                             const CArray<T>& w, double eps, Pair s, Pair p, int nthreads,
                             const py::object& packed, Pair d, idx groups, int algo) {
  const ConvParams cp = conv_params(groups, d);
  const Window2d g = conv_window(a, w, s, p, cp);
  const idx c_out = w.shape(0);
  const std::vector<idx> rshape{g.n, c_out, g.oh(), g.ow()};
  CArray<T> keep_r, keep_z;
  optional_array<T>(r, rshape, "r", keep_r);
  optional_array<T>(z, rshape, "z", keep_z);
  const relprop::ConvAlgo al = conv_algo<T>(algo, g, c_out, groups, true);
  const T* pp = conv_packed<T>(packed, w, g, cp, al, true);
  CArray<T> ra = output<T>({g.n, g.c, g.h, g.w});
  T* rp = ra.mutable_data();
  {
    py::gil_scoped_release nogil;
    relprop::conv2d_lrp_epsilon<T>(r.data(), z.data(), a.data(), w.data(), rp, g, c_out, groups,
                                   al, eps, nthreads, pp);
  }
  return ra;
}

template <typename T>
void define_winograd(py::module_& m) {
  auto nc = [](const char* name) { return py::arg(name).noconvert(); };
  m.def("conv2d_winograd_pack", &conv2d_winograd_pack<T>, nc("weight"), "tile"_a, "backward"_a,
        "nthreads"_a);
  m.def("conv2d_winograd_forward", &conv2d_winograd_forward<T>, nc("x"), nc("weight"), "bias"_a,
        "padding"_a, "tile"_a, "split"_a, "nthreads"_a, "packed"_a = py::none(),
        "block_tiles"_a = 0, "relu"_a = false);
  m.def("conv2d_winograd_backward", &conv2d_winograd_backward<T>, nc("grad"), nc("weight"),
        "in_hw"_a, "padding"_a, "tile"_a, "nthreads"_a, "packed"_a = py::none(),
        "block_tiles"_a = 0, "mask"_a = py::none());
  const Pair one{1, 1};
  m.def("conv2d_forward_relu_maxpool", &conv2d_forward_relu_maxpool<T>, nc("x"), nc("weight"),
        "bias"_a, "stride"_a, "padding"_a, "nthreads"_a, "packed"_a = py::none(),
        "dilation"_a = one, "groups"_a = 1, "algo"_a = -1, "block_tiles"_a = 0,
        "(pooled, argmax) of a 2x2 stride-2 max pooling of relu(conv2d(x, weight, bias)); see "
        "relprop.ops.conv2d_forward_relu_maxpool.");
  m.def("conv2d_backward_pooled", &conv2d_backward_pooled<T>, nc("grad"), nc("argmax"),
        "pooled"_a, nc("weight"), "in_hw"_a, "stride"_a, "padding"_a, "nthreads"_a,
        "packed"_a = py::none(), "dilation"_a = one, "groups"_a = 1, "mask"_a = py::none(),
        "algo"_a = -1, "The backward pass of conv2d_forward_relu_maxpool; see "
        "relprop.ops.conv2d_backward_pooled.");
  m.def("conv2d_lrp_epsilon", &conv2d_lrp_epsilon<T>, nc("r"), nc("z"), nc("a"), nc("weight"),
        "eps"_a, "stride"_a, "padding"_a, "nthreads"_a, "packed"_a = py::none(),
        "dilation"_a = one, "groups"_a = 1, "algo"_a = -1,
        "a * conv2d_backward(lrp_divide(r, z, eps), weight); see relprop.ops.conv2d_lrp_epsilon.");
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "relprop's compiled kernels. Use relprop.ops (validated wrappers), not this module.";
  py::class_<PackedWeights>(m, "PackedWeights",
                            "Weights packed for one GEMM (relprop.ops.dense_pack, conv2d_pack).")
      .def_readonly("isa", &PackedWeights::isa)
      .def_readonly("gemm", &PackedWeights::gemm)
      .def_readonly("dtype", &PackedWeights::dtype)
      .def_property_readonly("shape", [](const PackedWeights& p) {
        return py::tuple(py::cast(p.shape));
      })
      .def_readonly("data", &PackedWeights::data)
      .def_readonly("groups", &PackedWeights::groups)
      .def_property_readonly("dilation", [](const PackedWeights& p) {
        return py::tuple(py::cast(p.dilation));
      })
      .def("__repr__", [](const PackedWeights& p) {
        std::string conv;
        if (p.groups != 1 || p.dilation != std::vector<idx>{1, 1})
          conv = ", groups=" + std::to_string(p.groups) + ", dilation=" + shape_string(p.dilation);
        return "PackedWeights(isa='" + p.isa + "', gemm='" + p.gemm + "', weight " +
               shape_string(p.shape) + " " + p.dtype + conv + ", " +
               std::to_string(p.data.size()) + " elements)";
      });
#ifdef RELPROP_VERSION
  m.attr("__version__") = RELPROP_VERSION;
#endif
  m.attr("openmp") = relprop::has_openmp();
  m.def("default_threads", [] { return relprop::resolve_threads(0); });
  // GEMM instruction set (relprop/cpu.hpp); relprop.ops applies RELPROP_ISA at import
  m.def("isa", [] { return std::string(relprop::isa_name(relprop::active_isa())); });
  m.def("supported_isas", &relprop::supported_isas);
  // The table of an ISA ("" for the one in use): GEMM blocking, depthwise tiles, Winograd
  // crossovers (relprop/plan.hpp; tests derive their shapes from it).
  m.def("isa_table", [](const std::string& name) {
    const relprop::IsaConfig c = relprop::isa_config(
        name.empty() ? relprop::active_isa() : relprop::parse_isa(name));
    const auto gemm = [](const relprop::GemmBlocks& b) {
      return py::dict("mr"_a = b.mr, "nr"_a = b.nr, "mc"_a = b.mc, "kc"_a = b.kc, "nc"_a = b.nc);
    };
    const auto dw = [](const relprop::DepthwiseBlocks& b) {
      return py::dict("lanes"_a = b.lanes, "vectors"_a = b.vectors);
    };
    const relprop::WinogradCrossover& w = c.winograd;
    return py::dict(
        "isa"_a = relprop::isa_name(c.isa),
        "gemm"_a = py::dict("float32"_a = gemm(c.gemm_f32), "float64"_a = gemm(c.gemm_f64)),
        "depthwise"_a = py::dict("float32"_a = dw(c.depthwise_f32),
                                 "float64"_a = dw(c.depthwise_f64)),
        "winograd"_a = py::dict("min_channels"_a = w.min_channels, "min_macs"_a = w.min_macs,
                                "f4_min_tiles"_a = w.f4_min_tiles,
                                "f2_min_tiles"_a = w.f2_min_tiles, "measured"_a = w.measured,
                                "source"_a = w.source));
  }, "name"_a = "");
  // The plan of a convolution pass on one sample (c_in, h, w) (relprop/plan.hpp).
  m.def("conv2d_plan", [](idx c_in, Pair hw, std::vector<idx> w_shape, Pair s, Pair p, Pair d,
                          idx groups, bool double_precision, bool backward, int request) {
    RELPROP_CHECK(w_shape.size() == 4, "the weight shape must have 4 entries, got ",
                  w_shape.size());
    const idx c_out = w_shape[0];
    Window2d g{1, c_in, hw[0], hw[1], w_shape[2], w_shape[3], s[0], s[1], p[0], p[1], d[0], d[1]};
    g.validate();
    RELPROP_CHECK(groups >= 1 && c_in % groups == 0 && c_out > 0 && c_out % groups == 0 &&
                      w_shape[1] * groups == c_in,
                  "a weight of shape ", shape_string(w_shape), " with groups=", groups,
                  " does not fit ", c_in, " input channels");
    RELPROP_CHECK(request >= 0 && request <= 2, "request must be 0 (auto), 1 (direct) or 2 "
                  "(winograd), got ", request);
    const auto req = static_cast<relprop::ConvRequest>(request);
    const relprop::ConvPlan plan =
        double_precision ? relprop::plan_conv2d<double>(g, c_out, groups, backward, req)
                         : relprop::plan_conv2d<float>(g, c_out, groups, backward, req);
    const idx itemsize = double_precision ? 8 : 4;
    return py::dict("algorithm"_a = relprop::conv_algo_name(plan.algo),
                    "code"_a = static_cast<int>(plan.algo),
                    "packed_bytes"_a = plan.packed * itemsize,
                    "workspace_bytes"_a = plan.workspace);
  }, "c_in"_a, "in_hw"_a, "weight_shape"_a, "stride"_a, "padding"_a, "dilation"_a, "groups"_a,
        "double_precision"_a, "backward"_a, "request"_a);
  m.def("set_isa", [](const std::string& name) { relprop::set_isa(relprop::parse_isa(name)); },
        "name"_a);
  m.def("set_isa_from_env", &relprop::set_isa_from_env);
  m.def("fma_peak_gflops", &relprop::fma_peak_gflops, "nthreads"_a,
        py::call_guard<py::gil_scoped_release>());
  // Bytes of the kernels' workspaces and of pooled outputs in use (relprop/memory.hpp)
  m.def("memory_stats", [] {
    return py::dict("current_bytes"_a = relprop::memory::current_bytes(),
                    "peak_bytes"_a = relprop::memory::peak_bytes());
  });
  m.def("reset_memory_peak", [] { relprop::memory::reset_peak(); });
  // Test-only: make every workspace allocation fail (std::bad_alloc -> MemoryError).
  m.def("_fail_scratch_allocations", &relprop::testing::fail_allocations, "on"_a);
  // Output blocks kept for reuse (relprop/pool.hpp) and their release to the system
  m.def("pool_cached_bytes", &relprop::pool::cached_bytes);
  m.def("release_memory", &relprop::pool::release_cached);
  // The counter's own test: the stats while a workspace of `bytes` is alive.
  m.def("_memory_probe", [](std::size_t bytes) {
    relprop::Workspace<unsigned char> buf(static_cast<idx>(bytes));
    return py::dict("current_bytes"_a = relprop::memory::current_bytes(),
                    "peak_bytes"_a = relprop::memory::peak_bytes());
  }, "bytes"_a);
  // Test-only: hold the pool's lock for `seconds` (without the GIL), as a kernel allocating on
  // another thread would at the moment of a fork; _pool_lock_held() says when it has it.
  m.def("_hold_pool_lock", [](double seconds) {
    std::lock_guard<std::mutex> lock(relprop::pool::state().mu);
    g_pool_lock_held.store(true);
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    g_pool_lock_held.store(false);
  }, "seconds"_a, py::call_guard<py::gil_scoped_release>());
  m.def("_pool_lock_held", [] { return g_pool_lock_held.load(); });
  relprop::register_fork_handlers();
  define<float>(m);
  define<double>(m);
  define_winograd<float>(m);
  define_winograd<double>(m);
}

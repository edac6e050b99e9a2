// The GEMM core's dispatch and threading (baseline instruction set): which ISA's kernels run,
// how C is cut among threads, the buffers each thread packs into, and the measured FMA peak.
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "gemm_driver.hpp"  // block_k (the blocks of steps of the packed layouts)
#include "gemm_impl.hpp"
#include "isa_table.hpp"
#include "relprop/check.hpp"
#include "relprop/cpu.hpp"
#include "relprop/gemm.hpp"
#include "relprop/parallel.hpp"
#include "relprop/workspace.hpp"

namespace relprop {

// ---------------------------------------------------------------------------------------------
// Instruction sets

namespace {

bool compiled(Isa isa) {
  switch (isa) {
    case Isa::generic:
      return true;
    case Isa::avx2:
#if defined(RELPROP_HAVE_AVX2)
      return true;
#else
      return false;
#endif
    case Isa::avx512:
#if defined(RELPROP_HAVE_AVX512)
      return true;
#else
      return false;
#endif
  }
  return false;
}

bool cpu_has(Isa isa) {
  if (isa == Isa::generic) return true;
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  // libgcc's checks include the operating system's support (XCR0) for the wider registers.
  __builtin_cpu_init();
  if (isa == Isa::avx2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == Isa::avx512) return __builtin_cpu_supports("avx512f");
#endif
  return false;
}

constexpr Isa kAllIsas[] = {Isa::generic, Isa::avx2, Isa::avx512};

std::atomic<int> g_active{-1};  // -1: not chosen yet (best_isa() on first use)

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::generic:
      return "generic";
    case Isa::avx2:
      return "avx2";
    case Isa::avx512:
      return "avx512";
  }
  return "unknown";
}

bool isa_supported(Isa isa) { return compiled(isa) && cpu_has(isa); }

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  for (Isa isa : kAllIsas)
    if (isa_supported(isa)) out.emplace_back(isa_name(isa));
  return out;
}

Isa best_isa() {
  Isa best = Isa::generic;
  for (Isa isa : kAllIsas)
    if (isa_supported(isa)) best = isa;
  return best;
}

Isa active_isa() {
  int v = g_active.load(std::memory_order_relaxed);
  if (v < 0) {
    v = static_cast<int>(best_isa());
    g_active.store(v, std::memory_order_relaxed);
  }
  return static_cast<Isa>(v);
}

namespace {
std::string supported_list() {
  std::string s;
  for (const auto& n : supported_isas()) s += (s.empty() ? "" : ", ") + n;
  return s;
}
}  // namespace

void set_isa(Isa isa) {
  RELPROP_CHECK(isa_supported(isa), "ISA '", isa_name(isa), "' is not supported ",
                compiled(isa) ? "by this CPU" : "by this build", " (supported: ", supported_list(),
                ")");
  g_active.store(static_cast<int>(isa), std::memory_order_relaxed);
}

Isa parse_isa(const std::string& name) {
  if (name.empty() || name == "auto") return best_isa();
  for (Isa isa : kAllIsas)
    if (name == isa_name(isa)) return isa;
  fail("unknown ISA '", name, "': use one of avx512, avx2, generic, auto");
}

void set_isa_from_env() {
  const char* env = std::getenv("RELPROP_ISA");
  const std::string value = env ? env : "";
  try {
    set_isa(parse_isa(value));
  } catch (const std::invalid_argument& e) {
    fail("RELPROP_ISA=", value, ": ", e.what());
  }
}

// ---------------------------------------------------------------------------------------------
// Threading and the tiles' buffers

namespace detail {

template <>
const GemmImpl<float>& active_gemm<float>() {
  return *isa_table().f32.gemm;
}

template <>
const GemmImpl<double>& active_gemm<double>() {
  return *isa_table().f64.gemm;
}

template <typename T>
TileScratch tile_scratch_size(const GemmImpl<T>& impl, const GemmArgs<T>& g, idx rows, idx cols) {
  // what tile() packs: blocks of up to mc rows (in strips of mr) by kb steps of A, with the A
  // prologue followed by as many quotients; B in panels of kb steps by up to nc columns (in
  // strips of nr), or one strip at a time where tile() streams B
  const idx kb = block_k(impl.kc, g.k);
  const auto round = [](idx e) {
    constexpr idx unit = static_cast<idx>(64 / sizeof(T));
    return (e + unit - 1) / unit * unit;
  };
  const auto up = [](idx v, idx to) { return (v + to - 1) / to * to; };
  TileScratch s;
  if (!g.apack) s.wa = round(std::min(impl.mc, up(rows, impl.mr)) * kb * (g.a_den ? 2 : 1));
  const bool stream_b = rows <= impl.mc && (g.im || g.csb != 1);
  if (!g.bpack) s.wb = round(kb * (stream_b ? impl.nr : up(std::min(impl.nc, cols), impl.nr)));
  return s;
}

Split choose_split(idx m, idx n, idx k, int mr, int nr, int nt, bool pack_a) {
  (void)k;
  const idx sm = (m + mr - 1) / mr, sn = (n + nr - 1) / nr;
  Split best;
  double best_cost = -1;
  // Per thread: its share of the multiply-adds plus the panels it packs (one packed element
  // costs about as much as a few multiply-adds); ties go to splitting along n.
  for (int tm = 1; tm <= nt; ++tm) {
    if (nt % tm) continue;
    const int tn = nt / tm;
    if (tm > sm || tn > sn) continue;
    const double rows = static_cast<double>((sm + tm - 1) / tm * mr);
    const double cols = static_cast<double>((sn + tn - 1) / tn * nr);
    const double cost = rows * cols + 4.0 * (cols + (pack_a ? rows : 0.0));
    if (best_cost < 0 || cost < best_cost) {
      best_cost = cost;
      best = Split{tm, tn};
    }
  }
  if (best_cost < 0 && nt > 1) return choose_split(m, n, k, mr, nr, nt - 1, pack_a);
  return best;
}

template <typename T>
void run_tile(const GemmImpl<T>& impl, const GemmArgs<T>& g, idx i0, idx i1, idx j0, idx j1,
              T* buf) {
  // this tile's parts, at most those buf was sized for (the sizes grow with rows and columns)
  const TileScratch s = tile_scratch_size(impl, g, i1 - i0, j1 - j0);
  impl.tile(impl, g, i0, i1, j0, j1, s.wa ? buf : nullptr, s.wb ? buf + s.wa : nullptr);
}

namespace {

// C = epilogue(init) for k == 0 (nothing to multiply).
template <typename T>
void init_only(const GemmArgs<T>& g) {
  for (idx i = 0; i < g.m; ++i) {
    T* ci = g.c2 && i >= g.m2 ? g.c2 + (i - g.m2) * g.ldc : g.c + i * g.ldc;
    for (idx j = 0; j < g.n; ++j) {
      const T v = g.accumulate ? ci[j]
                  : g.row_bias ? g.row_bias[i]
                  : g.col_bias ? g.col_bias[j]
                               : T(0);
      ci[j] = epilogue_scalar(g.epilogue, v, g.aux ? g.aux[i * g.ldx + j] : T(0));
    }
  }
}

}  // namespace

// g on nt > 1 threads: A packed once (unless it is packed, or made by the prologue), by
// blocks of steps in parallel, then rectangles of C as tasks on a dynamic schedule: rows in
// the groups choose_split makes, columns in chunks of whole strips, at least about four tasks
// per thread where the columns allow, so that a thread the operating system takes away holds
// up one chunk instead of half of the product.  Each C(i, j) is still summed in tile()'s
// order, by one task.
template <typename T>
void run_dynamic(const GemmImpl<T>& impl, const GemmArgs<T>& g, int nt) {
  GemmArgs<T> h = g;
  const bool pack = !g.apack && !g.a_den;
  Workspace<T> ap(pack ? impl.packed_a_size(g.m, g.k) : 0);
  if (pack) {
    const idx kb = block_k(impl.kc, g.k), mpad = (g.m + impl.mr - 1) / impl.mr * impl.mr;
    const idx blocks = (g.k + kb - 1) / kb;
    T* dst = ap.data();
    // block pc of the whole packing is the packing of A's steps [pc, pc + kc) alone
    parallel_for(static_cast<int>(std::min<idx>(nt, blocks)), blocks, [&](idx b) {
      const idx pc = b * kb, kc = std::min(kb, g.k - pc);
      impl.pack_a(impl, g.a + pc * g.csa, g.rsa, g.csa, g.m, kc, dst + pc * mpad);
    });
    h.apack = dst;
  }
  const idx sm = (g.m + impl.mr - 1) / impl.mr, sn = (g.n + impl.nr - 1) / impl.nr;
  const Split s = choose_split(g.m, g.n, g.k, impl.mr, impl.nr, nt, false);
  const idx chunks = std::min<idx>(sn, std::max<idx>(s.tn, (4 * nt + s.tm - 1) / s.tm));
  const TileScratch ts = tile_scratch_size(impl, h, (sm + s.tm - 1) / s.tm * impl.mr,
                                           (sn + chunks - 1) / chunks * impl.nr);
  Workspace<T> buf(ts.total(), nt);
  parallel_for_dynamic(nt, s.tm * chunks, [&](idx t) {
    idx lo_m, hi_m, lo_n, hi_n;
    share(sm, s.tm, static_cast<int>(t / chunks), lo_m, hi_m);
    share(sn, static_cast<int>(chunks), static_cast<int>(t % chunks), lo_n, hi_n);
    const idx i1 = hi_m * impl.mr < h.m ? hi_m * impl.mr : h.m;
    const idx j1 = hi_n * impl.nr < h.n ? hi_n * impl.nr : h.n;
    if (lo_m * impl.mr < i1 && lo_n * impl.nr < j1)
      run_tile(impl, h, lo_m * impl.mr, i1, lo_n * impl.nr, j1, buf.part(thread_index()));
  });
}

template <typename T>
void run_gemm(const GemmImpl<T>& impl, const GemmArgs<T>& g, int nthreads) {
  RELPROP_CHECK(!(g.aux && g.c2), "GEMM epilogues with an aux array need one output");
  RELPROP_CHECK(!(g.a_den && g.apack), "the A prologue needs an unpacked A");
  if (g.m <= 0 || g.n <= 0) return;
  if (g.k <= 0) {
    init_only(g);
    return;
  }
  if (g.m == 1 && g.csb == 1 && g.b && !g.bpack && !g.apack && !g.im && !g.c2) {
    // one row and row-major B (a Dense layer's backward pass on one sample): B read once,
    // row by row, in rank-1 updates (GemmImpl::gemv), the columns split among threads
    constexpr idx kUnit = 64;  // columns per unit of work (whole cache lines)
    const idx units = (g.n + kUnit - 1) / kUnit;
    const int nt = threads_for(nthreads, units, g.n * g.k);
    Workspace<T> tmp(std::min(GemmImpl<T>::gemv_chunk, (units + nt - 1) / nt * kUnit), nt);
    parallel_for(nt, nt, [&](idx t) {
      idx u0, u1;
      share(units, nt, static_cast<int>(t), u0, u1);
      const idx j0 = u0 * kUnit, j1 = u1 * kUnit < g.n ? u1 * kUnit : g.n;
      if (j0 < j1) impl.gemv(impl, g, j0, j1, tmp.part(t));
    });
    return;
  }
  if (g.m <= impl.mr && g.csb != 1 && g.b && !g.bpack && !g.apack && !g.im && !g.a_den) {
    // a few rows and B with contiguous columns (a Dense layer's forward pass on a small batch,
    // B = w^T): A packed first, so that tile() streams B strip by strip through all its
    // steps (each row of w read front to back, once) instead of block by block
    Workspace<T> ap(impl.packed_a_size(g.m, g.k));
    impl.pack_a(impl, g.a, g.rsa, g.csa, g.m, g.k, ap.data());
    GemmArgs<T> h = g;
    h.apack = ap.data();
    run_gemm(impl, h, nthreads);
    return;
  }
  const idx sm = (g.m + impl.mr - 1) / impl.mr, sn = (g.n + impl.nr - 1) / impl.nr;
  const int nt = threads_for(nthreads, sm * sn, g.m * g.n * g.k);
  if (nt <= 1) {
    Workspace<T> buf(tile_scratch_size(impl, g, g.m, g.n).total());
    run_tile(impl, g, 0, g.m, 0, g.n, buf.data());
    return;
  }
  run_dynamic(impl, g, nt);
}

#define RELPROP_INSTANTIATE(T)                                                                \
  template TileScratch tile_scratch_size<T>(const GemmImpl<T>&, const GemmArgs<T>&, idx, idx); \
  template void run_tile<T>(const GemmImpl<T>&, const GemmArgs<T>&, idx, idx, idx, idx, T*);   \
  template void run_gemm<T>(const GemmImpl<T>&, const GemmArgs<T>&, int);
RELPROP_INSTANTIATE(float)
RELPROP_INSTANTIATE(double)
#undef RELPROP_INSTANTIATE

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Public entry points

template <typename T>
void gemm(idx m, idx n, idx k, const T* a, idx rsa, idx csa, const T* b, idx rsb, idx csb, T* c,
          idx ldc, bool accumulate, int nthreads) {
  detail::GemmArgs<T> g = detail::gemm_args(m, n, k, a, rsa, csa, b, rsb, csb, c, ldc);
  g.accumulate = accumulate;
  detail::run_gemm(detail::active_gemm<T>(), g, nthreads);
}

template <typename T>
idx packed_b_size(idx k, idx n) {
  return detail::active_gemm<T>().packed_b_size(k, n);
}

template <typename T>
void pack_b(idx k, idx n, const T* b, idx rsb, idx csb, T* dst) {
  const auto& impl = detail::active_gemm<T>();
  impl.pack_b(impl, b, rsb, csb, k, n, dst);
}

template <typename T>
void gemm_packed_b(idx m, idx n, idx k, const T* a, idx rsa, idx csa, const T* bpack, T* c,
                   idx ldc, bool accumulate, int nthreads) {
  detail::GemmArgs<T> g = detail::gemm_args(m, n, k, a, rsa, csa, c, ldc);
  g.accumulate = accumulate;
  g.bpack = bpack;
  detail::run_gemm(detail::active_gemm<T>(), g, nthreads);
}

#define RELPROP_INSTANTIATE(T)                                                                \
  template void gemm<T>(idx, idx, idx, const T*, idx, idx, const T*, idx, idx, T*, idx, bool, \
                        int);                                                                 \
  template idx packed_b_size<T>(idx, idx);                                                    \
  template void pack_b<T>(idx, idx, const T*, idx, idx, T*);                                  \
  template void gemm_packed_b<T>(idx, idx, idx, const T*, idx, idx, const T*, T*, idx, bool, int);
RELPROP_INSTANTIATE(float)
RELPROP_INSTANTIATE(double)
#undef RELPROP_INSTANTIATE

double fma_peak_gflops(int nthreads) {
  const auto& impl = detail::active_gemm<float>();
  const int nt = resolve_threads(nthreads);
  // Calibrate to about 0.1 s per run on one thread, then keep the best of three runs.
  long iters = 1 << 16;
  for (;;) {
    const auto t0 = std::chrono::steady_clock::now();
    impl.fma_loop(iters);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (dt > 0.02 || iters > (1L << 40)) {
      iters = static_cast<long>(static_cast<double>(iters) * 0.1 / (dt > 0 ? dt : 1e-9)) + 1;
      break;
    }
    iters *= 4;
  }
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    double flop = 0;
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel for schedule(static, 1) num_threads(nt) reduction(+ : flop)
    for (int t = 0; t < nt; ++t) flop += impl.fma_loop(iters);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (flop / dt > best) best = flop / dt;
  }
  return best * 1e-9;
}

}  // namespace relprop

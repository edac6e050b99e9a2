// Multi-head scaled dot-product attention and its vector-Jacobian products: per (sample, head),
// the products on the GEMM core (run_tile on the calling thread: each entry summed in the
// GEMM's fixed order), the softmax rows in between; the (sample, head) pairs are independent
// tasks, so results do not depend on the thread count or the batch.
#include <cmath>
#include <initializer_list>

#include "activation_impl.hpp"
#include "gemm_impl.hpp"
#include "relprop/check.hpp"
#include "relprop/kernels.hpp"
#include "relprop/parallel.hpp"
#include "relprop/workspace.hpp"

namespace relprop {
namespace {

constexpr idx kLanes = 8;  // partial sums of a row

// sum_j f(j) for j < n in double, as eight interleaved partial sums added pairwise.
template <class F>
double row_sum(idx n, F f) {
  double acc[kLanes] = {};
  idx j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (idx l = 0; l < kLanes; ++l) acc[l] += f(j + l);
  for (; j < n; ++j) acc[j % kLanes] += f(j);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// A row of S (n entries) made its softmax, in place, with S scaled by `scale` first.
void softmax_row(float* s, idx n, double scale) {
  detail::active_act().softmax_exp(s, n, static_cast<float>(scale));
  const double sum = row_sum(n, [&](idx j) { return static_cast<double>(s[j]); });
  for (idx j = 0; j < n; ++j) s[j] = static_cast<float>(s[j] / sum);
}

void softmax_row(double* s, idx n, double scale) {
  double m = -HUGE_VAL;
  for (idx j = 0; j < n; ++j) m = s[j] * scale > m ? s[j] * scale : m;
  for (idx j = 0; j < n; ++j) {
    const double v = s[j] * scale;
    s[j] = v != v ? v : std::exp(v - m);
  }
  const double sum = row_sum(n, [&](idx j) { return s[j]; });
  for (idx j = 0; j < n; ++j) s[j] /= sum;
}

// The shapes of one call and the operands of a (sample, head) pair.
struct Heads {
  idx n, tq, tk, heads, dk, dv;
  idx dq() const { return heads * dk; }  // the width of q and k
  idx dw() const { return heads * dv; }  // the width of v and of the output
  idx units() const { return n * heads; }
};

void check(const Heads& h, double scale, const char* what) {
  RELPROP_CHECK(h.n >= 0 && h.tq > 0 && h.tk > 0 && h.heads > 0 && h.dk > 0 && h.dv > 0, what,
                ": needs tokens, heads and head sizes > 0, got tq=", h.tq, ", tk=", h.tk,
                ", heads=", h.heads, ", dk=", h.dk, ", dv=", h.dv);
  RELPROP_CHECK(std::isfinite(scale), what, ": scale must be finite, got ", scale);
}

// body(s, head, extra, gemm) for every (sample, head) on the threads, with `extra` elements of
// scratch per thread and the GEMM's packing buffers for whole problems shaped as `probes` (one
// (sample, head)'s problems).
template <typename T, class Body>
void for_units(const Heads& h, std::initializer_list<detail::GemmArgs<T>> probes, idx extra,
               int nthreads, Body body) {
  const detail::GemmImpl<T>& impl = detail::active_gemm<T>();
  idx gemm = 0;
  for (const detail::GemmArgs<T>& p : probes) {
    const idx need = detail::tile_scratch_size(impl, p, p.m, p.n).total();
    gemm = need > gemm ? need : gemm;
  }
  const idx per = extra + gemm;  // both multiples of 64 bytes
  const int nt = threads_for(nthreads, h.units(), h.units() * h.tq * h.tk * (h.dk + h.dv));
  Workspace<T> buf(per, nt);
  parallel_for_dynamic(nt, h.units(), [&](idx u) {
    T* mine = buf.part(thread_index());
    body(u / h.heads, u % h.heads, mine, mine + extra);
  });
}

}  // namespace

template <typename T>
void attention_forward(const T* q, const T* k, const T* v, T* out, T* a, idx n, idx tq, idx tk,
                       idx heads, idx dk, idx dv, double scale, int nthreads) {
  const Heads h{n, tq, tk, heads, dk, dv};
  check(h, scale, "attention_forward");
  if (n == 0) return;
  const detail::GemmImpl<T>& impl = detail::active_gemm<T>();
  const idx dq = h.dq(), dw = h.dw();
  auto scores = [&](idx s, idx hd) {  // S = Q_h K_h^T into A's block
    return detail::gemm_args<T>(tq, tk, dk, q + s * tq * dq + hd * dk, dq, 1, k + s * tk * dq + hd * dk, 1,
                      dq, a + (s * heads + hd) * tq * tk, tk);
  };
  auto values = [&](idx s, idx hd) {  // O_h = A V_h
    return detail::gemm_args<T>(tq, dv, tk, a + (s * heads + hd) * tq * tk, tk, 1,
                      v + s * tk * dw + hd * dv, dw, 1, out + s * tq * dw + hd * dv, dw);
  };
  for_units<T>(h, {scores(0, 0), values(0, 0)}, 0, nthreads, [&](idx s, idx hd, T*, T* gemm) {
    const detail::GemmArgs<T> gs = scores(s, hd);
    detail::run_tile(impl, gs, 0, tq, 0, tk, gemm);
    for (idx i = 0; i < tq; ++i) softmax_row(gs.c + i * tk, tk, scale);
    detail::run_tile(impl, values(s, hd), 0, tq, 0, dv, gemm);
  });
}

template <typename T>
void attention_backward(const T* g, const T* q, const T* k, const T* v, const T* a, T* gq, T* gk,
                        T* gv, idx n, idx tq, idx tk, idx heads, idx dk, idx dv, double scale,
                        int nthreads) {
  const Heads h{n, tq, tk, heads, dk, dv};
  check(h, scale, "attention_backward");
  if (n == 0 || !(gq || gk || gv)) return;
  const detail::GemmImpl<T>& impl = detail::active_gemm<T>();
  const idx dq = h.dq(), dw = h.dw();
  const bool scores = gq || gk;  // gA and gS needed
  auto grad_v = [&](idx s, idx hd) {  // gV_h = A^T G_h
    return detail::gemm_args<T>(tk, dv, tq, a + (s * heads + hd) * tq * tk, 1, tk, g + s * tq * dw + hd * dv,
                      dw, 1, gv + s * tk * dw + hd * dv, dw);
  };
  auto grad_a = [&](idx s, idx hd, T* ga) {  // gA = G_h V_h^T
    return detail::gemm_args<T>(tq, tk, dv, g + s * tq * dw + hd * dv, dw, 1, v + s * tk * dw + hd * dv, 1,
                      dw, ga, tk);
  };
  auto grad_q = [&](idx s, idx hd, const T* gs) {  // gQ_h = gS K_h
    return detail::gemm_args<T>(tq, dk, tk, gs, tk, 1, k + s * tk * dq + hd * dk, dq, 1,
                      gq + s * tq * dq + hd * dk, dq);
  };
  auto grad_k = [&](idx s, idx hd, const T* gs) {  // gK_h = gS^T Q_h
    return detail::gemm_args<T>(tk, dk, tq, gs, 1, tk, q + s * tq * dq + hd * dk, dq, 1,
                      gk + s * tk * dq + hd * dk, dq);
  };
  const idx unit = 64 / sizeof(T);
  const idx extra = scores ? (tq * tk + unit - 1) / unit * unit : 0;  // gA, then gS
  for_units<T>(h, {grad_v(0, 0), grad_a(0, 0, nullptr), grad_q(0, 0, nullptr),
                   grad_k(0, 0, nullptr)},
               extra, nthreads, [&](idx s, idx hd, T* ga, T* gemm) {
    const T* as = a + (s * heads + hd) * tq * tk;
    if (gv) detail::run_tile(impl, grad_v(s, hd), 0, tk, 0, dv, gemm);
    if (!scores) return;
    detail::run_tile(impl, grad_a(s, hd, ga), 0, tq, 0, tk, gemm);
    for (idx i = 0; i < tq; ++i) {  // gS = scale * A * (gA - rowsum(A * gA)), in place
      const T* ar = as + i * tk;
      T* gr = ga + i * tk;
      const double dot = row_sum(tk, [&](idx j) { return static_cast<double>(ar[j]) * gr[j]; });
      for (idx j = 0; j < tk; ++j)
        gr[j] = static_cast<T>(scale * static_cast<double>(ar[j]) * (gr[j] - dot));
    }
    if (gq) detail::run_tile(impl, grad_q(s, hd, ga), 0, tq, 0, dk, gemm);
    if (gk) detail::run_tile(impl, grad_k(s, hd, ga), 0, tk, 0, dk, gemm);
  });
}

#define RELPROP_INSTANTIATE(T)                                                                \
  template void attention_forward<T>(const T*, const T*, const T*, T*, T*, idx, idx, idx, idx, \
                                     idx, idx, double, int);                                  \
  template void attention_backward<T>(const T*, const T*, const T*, const T*, const T*, T*, T*, \
                                      T*, idx, idx, idx, idx, idx, idx, double, int);
RELPROP_INSTANTIATE(float)
RELPROP_INSTANTIATE(double)
#undef RELPROP_INSTANTIATE

}  // namespace relprop

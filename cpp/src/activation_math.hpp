// The smooth activations element by element (sigmoid, SiLU, tanh, GELU and its tanh form,
// hard sigmoid, hard swish) and their derivatives, as branch-free scalar functions that the
// ISA units (activation_{generic,avx2,avx512}.cpp) compile inside `omp simd` loops: the
// compiler turns them into vector code with that unit's instruction set, so the same source
// makes every ISA's kernel (activation_kernels.hpp).  Internal linkage and no standard-library
// templates (see gemm_driver.hpp).
//
// float computes in float: exp by Cody-Waite reduction to |r| <= ln2/2 and Cephes' degree-7
// polynomial (within 1 ulp), results below FLT_MIN flushed to 0 (never subnormal arithmetic);
// erfc(u) = t exp(P(t) - u^2), t = 1 / (1 + u/2) (P a degree-10 least-squares fit on [0, 10],
// 7e-9 in the exponent, 4e-8 with its coefficients rounded to float) and erf(u) = u Q(u^2) for
// u < 1/2 (a degree-5 fit, 1.2e-11 relative).  Every function is written in a form without
// cancellation: sigmoid and SiLU as torch writes them (1 / (1 + e^-x), x / (1 + e^-x)), GELU
// from Phi(x) = 1 - erfc(x / sqrt 2) / 2 for x > 0 and erfc(|x| / sqrt 2) / 2 for x < 0 (torch's
// 0.5 x (1 + erf) loses all digits there), its tanh form as x sigmoid(2u) (= x (1 + tanh u) / 2),
// derivatives such as s (1 - s) as t / (1 + t)^2 with t = e^-|x|.  tanh in float is computed in
// double (from a double exp accurate to 1e-16) and rounded once.  The units are compiled without
// contraction into fused multiply-adds (CMakeLists.txt), so every ISA gives the same bits.
// double computes with the C library's exp, erfc and tanh in the same forms (float64 is the path
// of exact checks; it is not vectorized).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace relprop {
namespace detail {
namespace {

// The activations, as numbered in relprop.ops.ACTIVATIONS.
enum class Act : int {
  sigmoid = 0,
  silu = 1,
  tanh = 2,
  gelu = 3,
  gelu_tanh = 4,
  hardsigmoid = 5,
  hardswish = 6,
};
constexpr int kActivations = 7;

inline float f32_bits(std::int32_t i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}

inline double f64_bits(std::int64_t i) {
  double d;
  std::memcpy(&d, &i, sizeof d);
  return d;
}

inline float abs_f(float x) { return x < 0.0f ? -x : x; }

// e^x in float: +inf above the largest finite result, 0 where the result would be subnormal
// (below FLT_MIN: the activations never need those, and subnormal arithmetic is slow); a NaN
// gives a number (the callers keep NaN themselves).
inline float exp_f(float x) {
  constexpr float kHi = 88.72283935546875f, kLo = -87.33654475f;
  float xc = x > kLo ? x : kLo;  // NaN -> kLo
  xc = xc < kHi ? xc : kHi;
  // k = round(x / ln 2): adding 1.5 * 2^23 rounds to an integer (|x / ln 2| < 2^22)
  const float k = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = xc - k * 0.693359375f;  // ln 2 = 0.693359375 - 2.12194440e-4: k * hi is exact
  r = r - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  // 2^k = 2^k1 2^k2 (k in [-126, 128]: 2^128 is not a float, its halves are)
  const std::int32_t ki = static_cast<std::int32_t>(k);
  const std::int32_t k1 = ki >> 1, k2 = ki - k1;
  const float y = p * f32_bits((k1 + 127) << 23) * f32_bits((k2 + 127) << 23);
  return x > kHi ? HUGE_VALF : (x < kLo ? 0.0f : y);
}

// e^x in double, within about 1 ulp (Cody-Waite reduction, Taylor polynomial of degree 13 on
// |r| <= ln2/2: truncation below 2e-16), for -700 <= x <= 0 (callers stay inside).
inline double exp_d(double x) {
  const double k = (x * 1.4426950408889634 + 6755399441055744.0) - 6755399441055744.0;
  double r = x - k * 6.93147180369123816490e-01;  // ln 2 split as fdlibm's ln2_hi + ln2_lo
  r = r - k * 1.90821492927058770002e-10;
  double p = 1.0 / 6227020800.0;  // 1/13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * (r * r) + r + 1.0;
  const std::int64_t ki = static_cast<std::int64_t>(static_cast<std::int32_t>(k));
  return p * f64_bits((ki + 1023) << 52);
}

// erfc(u) for 0 <= u (see the file comment); u2 = u * u.
inline float erfc_f(float u, float u2) {
  const float t = 1.0f / (1.0f + 0.5f * u);
  const float s = t - 0.58333333333333334f;
  float p = -0.14491330087184906f;
  p = p * s + 0.14493021368980408f;
  p = p * s + 0.1429528445005417f;
  p = p * s - 0.2450646162033081f;
  p = p * s - 0.05273699760437012f;
  p = p * s + 0.29521241784095764f;
  p = p * s - 0.03468890115618706f;
  p = p * s - 0.40739792585372925f;
  p = p * s + 0.09069162607192993f;
  p = p * s + 1.3687371015548706f;
  p = p * s - 0.5585953593254089f;
  return t * exp_f(p - u2);
}

// erf(u) for 0 <= u < 1/2 (see the file comment); u2 = u * u.
inline float erf_small_f(float u, float u2) {
  float p = -0.0007692330982536077f;
  p = p * u2 + 0.005200275685638189f;
  p = p * u2 - 0.026863113045692444f;
  p = p * u2 + 0.11283773928880692f;
  p = p * u2 - 0.37612637877464294f;
  p = p * u2 + 1.128379225730896f;
  return u * p;
}

// Phi(x) = (1 + erf(x / sqrt 2)) / 2 = erfc(-x / sqrt 2) / 2, the standard normal distribution
// function: 1/2 +- erf(u) / 2 for u = |x| / sqrt 2 < 1/2, else 1 - erfc(u) / 2 (x > 0) or
// erfc(u) / 2 (x < 0); u2 = u^2 = x^2 / 2 is returned for the density exp(-u2) / sqrt(2 pi).
inline float normal_cdf_f(float x, float& u2) {
  const float u = abs_f(x) * 0.70710678118654752f;
  u2 = u * u;
  const float e = 0.5f * erf_small_f(u, u2), c = 0.5f * erfc_f(u, u2);
  const bool small = u < 0.5f, pos = x >= 0.0f;
  return small ? (pos ? 0.5f + e : 0.5f - e) : (pos ? 1.0f - c : c);
}

inline double normal_cdf_d(double x) { return 0.5 * std::erfc(-x * 0.70710678118654752440); }

// tanh's inner argument of GELU's tanh form, doubled: 2 sqrt(2/pi) (x + 0.044715 x^3), and its
// derivative.
template <typename T>
inline T gelu_tanh_arg(T x) {
  return T(2) * (T(0.7978845608028654) * (x + T(0.044715) * (x * x * x)));
}
template <typename T>
inline T gelu_tanh_arg_grad(T x) {
  return T(2) * T(0.7978845608028654) * (T(1) + T(3) * T(0.044715) * (x * x));
}

inline double abs_t(double x) { return x < 0.0 ? -x : x; }
inline float abs_t(float x) { return abs_f(x); }

// y = act(x); NaN stays NaN
template <typename T>
inline T act_forward(Act op, T x);

template <>
inline float act_forward<float>(Act op, float x) {
  float y = x;
  switch (op) {
    case Act::sigmoid:  // torch's form: no cancellation
      y = 1.0f / (1.0f + exp_f(-x));
      break;
    case Act::silu:
      y = x / (1.0f + exp_f(-x));
      break;
    case Act::tanh: {  // in double, rounded once
      const double a = abs_t(static_cast<double>(x)), a2 = a * a;
      const double t = exp_d(-2.0 * (a < 20.0 ? a : 20.0));
      // |x| < 1/16: the series to x^9 (error below 1e-13 of the result), else from t
      double s = 62.0 / 2835.0;
      s = s * a2 - 17.0 / 315.0;
      s = s * a2 + 2.0 / 15.0;
      s = s * a2 - 1.0 / 3.0;
      const double r = a < 0.0625 ? a + a * (a2 * s) : (1.0 - t) / (1.0 + t);
      y = static_cast<float>(x < 0.0f ? -r : r);
      break;
    }
    case Act::gelu: {
      float u2;
      y = x * normal_cdf_f(x, u2);
      break;
    }
    case Act::gelu_tanh:  // x (1 + tanh(v / 2)) / 2 = x sigmoid(v)
      y = x / (1.0f + exp_f(-gelu_tanh_arg(x)));
      break;
    case Act::hardsigmoid: {
      const float c = x + 3.0f;
      y = (c > 6.0f ? 6.0f : (c > 0.0f ? c : 0.0f)) / 6.0f;
      break;
    }
    case Act::hardswish: {
      const float c = x + 3.0f;
      y = x * (c > 6.0f ? 6.0f : (c > 0.0f ? c : 0.0f)) / 6.0f;
      break;
    }
  }
  return x != x ? x : y;
}

template <>
inline double act_forward<double>(Act op, double x) {
  double y = x;
  switch (op) {
    case Act::sigmoid:
      y = 1.0 / (1.0 + std::exp(-x));
      break;
    case Act::silu:
      y = x / (1.0 + std::exp(-x));
      break;
    case Act::tanh:
      y = std::tanh(x);
      break;
    case Act::gelu:
      y = x * normal_cdf_d(x);
      break;
    case Act::gelu_tanh:
      y = x / (1.0 + std::exp(-gelu_tanh_arg(x)));
      break;
    case Act::hardsigmoid: {
      const double c = x + 3.0;
      y = (c > 6.0 ? 6.0 : (c > 0.0 ? c : 0.0)) / 6.0;
      break;
    }
    case Act::hardswish: {
      const double c = x + 3.0;
      y = x * (c > 6.0 ? 6.0 : (c > 0.0 ? c : 0.0)) / 6.0;
      break;
    }
  }
  return x != x ? x : y;
}

// gx = g * act'(x)
template <typename T>
inline T act_backward(Act op, T g, T x);

template <>
inline float act_backward<float>(Act op, float g, float x) {
  float d = g;
  switch (op) {
    case Act::sigmoid: {  // s (1 - s) = t / (1 + t)^2, t = e^(-|x|)
      const float t = exp_f(-abs_f(x));
      const float r = 1.0f / (1.0f + t);
      d = g * (t * r * r);
      break;
    }
    case Act::silu: {  // s (1 + x (1 - s)) with q = t / (1 + t) the smaller of s and 1 - s:
      // (1 - q)(1 + x q) for x >= 0, q ((1 + x) - x q) for x < 0 (1 + x is exact near the
      // derivative's root at -1.28)
      const float t = exp_f(-abs_f(x));
      const float q = t / (1.0f + t);
      d = g * (x >= 0.0f ? (1.0f - q) * (1.0f + x * q) : q * ((1.0f + x) - x * q));
      break;
    }
    case Act::tanh: {  // 1 - tanh^2 = 4 t / (1 + t)^2, t = e^(-2|x|), in double
      const double a = abs_t(static_cast<double>(x));
      const double t = exp_d(-2.0 * (a < 20.0 ? a : 20.0));
      const double r = 1.0 / (1.0 + t);
      d = g * static_cast<float>(4.0 * t * r * r);
      break;
    }
    case Act::gelu: {  // Phi(x) + x phi(x)
      float u2;
      const float p = normal_cdf_f(x, u2);
      d = g * (p + x * (0.3989422804014327f * exp_f(-u2)));
      break;
    }
    case Act::gelu_tanh: {  // s + x v' s (1 - s), s = sigmoid(v)
      const float v = gelu_tanh_arg(x);
      const float t = exp_f(-abs_f(v));
      const float r = 1.0f / (1.0f + t);
      const float s = v >= 0.0f ? r : t * r;
      d = g * (s + x * gelu_tanh_arg_grad(x) * (t * r * r));
      break;
    }
    case Act::hardsigmoid:  // torch's: grad / 6 strictly inside (-3, 3)
      d = (x > -3.0f && x < 3.0f) ? g * (1.0f / 6.0f) : 0.0f;
      break;
    case Act::hardswish:  // torch's: 0 up to -3, grad (x / 3 + 1/2) below 3, grad from 3
      d = x <= -3.0f ? 0.0f : (x < 3.0f ? g * (x / 3.0f + 0.5f) : g);
      break;
  }
  return x != x ? x : d;
}

template <>
inline double act_backward<double>(Act op, double g, double x) {
  double d = g;
  switch (op) {
    case Act::sigmoid: {
      const double t = std::exp(-abs_t(x));
      const double r = 1.0 / (1.0 + t);
      d = g * (t * r * r);
      break;
    }
    case Act::silu: {
      const double t = std::exp(-abs_t(x));
      const double q = t / (1.0 + t);
      d = g * (x >= 0.0 ? (1.0 - q) * (1.0 + x * q) : q * ((1.0 + x) - x * q));
      break;
    }
    case Act::tanh: {
      const double t = std::exp(-2.0 * abs_t(x));
      const double r = 1.0 / (1.0 + t);
      d = g * (4.0 * t * r * r);
      break;
    }
    case Act::gelu:
      d = g * (normal_cdf_d(x) + x * (0.39894228040143267794 * std::exp(-0.5 * (x * x))));
      break;
    case Act::gelu_tanh: {
      const double v = gelu_tanh_arg(x);
      const double t = std::exp(-abs_t(v));
      const double r = 1.0 / (1.0 + t);
      const double s = v >= 0.0 ? r : t * r;
      d = g * (s + x * gelu_tanh_arg_grad(x) * (t * r * r));
      break;
    }
    case Act::hardsigmoid:
      d = (x > -3.0 && x < 3.0) ? g * (1.0 / 6.0) : 0.0;
      break;
    case Act::hardswish:
      d = x <= -3.0 ? 0.0 : (x < 3.0 ? g * (x / 3.0 + 0.5) : g);
      break;
  }
  return x != x ? x : d;
}

}  // namespace
}  // namespace detail
}  // namespace relprop

#pragma once
// CUDA twins of prox/elementwise.hpp, in sora::cuda::prox: the same names, arguments and
// semantics (boundary |x| == τ gives 0, NaN kept, ±inf as the limit), over device tensors.
// Every operator has three forms:
//   op_inplace(x, ...)       x: DeviceTensor<T>& or DeviceView<T>        (the primary form)
//   op_into(y, x, ...)       y = op(x), no allocation (y may be x)
//   op(x, ...)               returns a new DeviceTensor<T>
// T is float, double or bf16 (computed in float, rounded once). Weighted forms take a device
// tensor of x's shape (weights finite and >= 0, checked on the device before any write).
// A trailing cudaStream_t (default: the context's, cuda::context().stream()) orders the work;
// nothing synchronises except the weight check. Arguments are validated by the CPU operators' own
// checks, so both backends accept and reject exactly the same values with the same messages.

#include "sora/cuda/kernels.cuh"
#include "sora/prox/elementwise.hpp"

namespace sora::cuda::prox {
namespace detail {

using namespace ::sora::cuda::detail;
namespace pd = ::sora::prox::detail;

// The kernels in clamp/select form, as on the CPU. clamp(NaN) is NaN here (both comparisons
// false), so x - clamp(x) is NaN for NaN, like the CPU's x - max/min.
template <class C>
__device__ inline C clamp_sym(C x, C t) {
  return x < -t ? -t : (x > t ? t : x);
}
template <class C>
__device__ inline C abs_nan(C x) {
  return x < C(0) ? -x : x;  // NaN stays NaN
}

template <class C>
struct Soft {
  static constexpr bool kBinary = false;
  C tau;
  __device__ C operator()(C x) const { return x - clamp_sym(x, tau); }
};
template <class C>
struct SoftW {
  static constexpr bool kBinary = true;
  C tau;  // threshold τ w_i
  __device__ C operator()(C x, C w) const { return x - clamp_sym(x, w * tau); }
};
// Zero where |x| <= t (so NaN, for which the comparison is false, is kept).
template <class C>
struct Hard {
  static constexpr bool kBinary = false;
  C t;
  __device__ C operator()(C x) const { return abs_nan(x) <= t ? C(0) : x; }
};
template <class C>
struct HardW {
  static constexpr bool kBinary = true;
  C scale;  // threshold scale w_i
  __device__ C operator()(C x, C w) const { return abs_nan(x) <= w * scale ? C(0) : x; }
};
template <class C>
struct L0W {
  static constexpr bool kBinary = true;
  C scale;  // threshold sqrt(2γλ) sqrt(w_i)
  __device__ C operator()(C x, C w) const { return abs_nan(x) <= sqrt(w) * scale ? C(0) : x; }
};
template <class C>
struct Elastic {
  static constexpr bool kBinary = false;
  C tau, scale;
  __device__ C operator()(C x) const { return (x - clamp_sym(x, tau)) * scale; }
};
template <class C>
struct NonnegSoft {
  static constexpr bool kBinary = false;
  C tau;
  __device__ C operator()(C x) const { return x > tau ? x - tau : (x <= tau ? C(0) : x); }
};
template <class C>
struct Firm {
  static constexpr bool kBinary = false;
  C lo, hi, slope;
  bool convex;
  __device__ C operator()(C x) const {
    const C ax = abs_nan(x);
    if (ax <= lo) return C(0);
    if (convex && ax <= hi) return x > C(0) ? (ax - lo) * slope : -(ax - lo) * slope;
    return x;
  }
};
template <class C>
struct Box {
  static constexpr bool kBinary = false;
  C lo, hi;
  __device__ C operator()(C x) const { return x < lo ? lo : (x > hi ? hi : x); }
};

template <class T, class Op>
void ew(DeviceView<T> y, ConstView<T> x, const Op& op, cudaStream_t s) {
  check_same_shape("cuda::prox", "the output", x, y);
  run_ew(op, y, x, ConstView<T>{}, s);
}

template <class T, class Op>
void ew_w(const char* name, DeviceView<T> y, ConstView<T> x, ConstView<T> w, const Op& op,
          cudaStream_t s) {
  check_same_shape(name, "the output", x, y);
  check_same_shape(name, "weights", x, w);
  SORA_CHECK(all_valid(w, false, s), name, ": weights must be finite and >= 0");
  run_ew(op, y, x, w, s);
}

template <class X>
DeviceTensor<scalar_t<X>> alloc_like(const X& x) {
  const auto v = cview_of(x);
  return DeviceTensor<scalar_t<X>>(v.rows, v.cols);
}

}  // namespace detail

// Writing these out per operator keeps each signature visible (and searchable) next to its
// CPU twin; the bodies are one validation plus one launch.

// --- soft threshold: sign(x) max(|x| - τ, 0) ---------------------------------------------
template <DeviceArg Y, DeviceArg X>
void soft_threshold_into(Y&& y, const X& x, arg_t<X> tau, cudaStream_t s = context().stream()) {
  detail::pd::check_threshold("soft_threshold", "tau", tau);
  detail::ew<scalar_t<X>>(view_of(y), cview_of(x), detail::Soft<arg_t<X>>{tau}, s);
}
template <DeviceArg Y, DeviceArg X, DeviceArg W>
void soft_threshold_into(Y&& y, const X& x, arg_t<X> tau, const W& w,
                         cudaStream_t s = context().stream()) {
  detail::pd::check_threshold("soft_threshold", "tau", tau);
  detail::ew_w<scalar_t<X>>("soft_threshold", view_of(y), cview_of(x), cview_of(w),
                            detail::SoftW<arg_t<X>>{tau}, s);
}
template <DeviceArg X>
void soft_threshold_inplace(X&& x, arg_t<X> tau, cudaStream_t s = context().stream()) {
  soft_threshold_into(x, x, tau, s);
}
template <DeviceArg X, DeviceArg W>
void soft_threshold_inplace(X&& x, arg_t<X> tau, const W& w, cudaStream_t s = context().stream()) {
  soft_threshold_into(x, x, tau, w, s);
}
template <DeviceArg X>
DeviceTensor<scalar_t<X>> soft_threshold(const X& x, arg_t<X> tau,
                                         cudaStream_t s = context().stream()) {
  auto y = detail::alloc_like(x);
  soft_threshold_into(y, x, tau, s);
  return y;
}
template <DeviceArg X, DeviceArg W>
DeviceTensor<scalar_t<X>> soft_threshold(const X& x, arg_t<X> tau, const W& w,
                                         cudaStream_t s = context().stream()) {
  auto y = detail::alloc_like(x);
  soft_threshold_into(y, x, tau, w, s);
  return y;
}

// --- hard threshold: keep x where |x| > τ --------------------------------------------------
template <DeviceArg Y, DeviceArg X>
void hard_threshold_into(Y&& y, const X& x, arg_t<X> tau, cudaStream_t s = context().stream()) {
  detail::pd::check_threshold("hard_threshold", "tau", tau);
  detail::ew<scalar_t<X>>(view_of(y), cview_of(x), detail::Hard<arg_t<X>>{tau}, s);
}
template <DeviceArg Y, DeviceArg X, DeviceArg W>
void hard_threshold_into(Y&& y, const X& x, arg_t<X> tau, const W& w,
                         cudaStream_t s = context().stream()) {
  detail::pd::check_threshold("hard_threshold", "tau", tau);
  detail::ew_w<scalar_t<X>>("hard_threshold", view_of(y), cview_of(x), cview_of(w),
                            detail::HardW<arg_t<X>>{tau}, s);
}
template <DeviceArg X>
void hard_threshold_inplace(X&& x, arg_t<X> tau, cudaStream_t s = context().stream()) {
  hard_threshold_into(x, x, tau, s);
}
template <DeviceArg X, DeviceArg W>
void hard_threshold_inplace(X&& x, arg_t<X> tau, const W& w, cudaStream_t s = context().stream()) {
  hard_threshold_into(x, x, tau, w, s);
}
template <DeviceArg X>
DeviceTensor<scalar_t<X>> hard_threshold(const X& x, arg_t<X> tau,
                                         cudaStream_t s = context().stream()) {
  auto y = detail::alloc_like(x);
  hard_threshold_into(y, x, tau, s);
  return y;
}
template <DeviceArg X, DeviceArg W>
DeviceTensor<scalar_t<X>> hard_threshold(const X& x, arg_t<X> tau, const W& w,
                                         cudaStream_t s = context().stream()) {
  auto y = detail::alloc_like(x);
  hard_threshold_into(y, x, tau, w, s);
  return y;
}

// --- L1 prox: soft threshold at γλ (weights γλ w_i) ----------------------------------------
template <DeviceArg Y, DeviceArg X>
void l1_prox_into(Y&& y, const X& x, arg_t<X> gamma, arg_t<X> lambda,
                  cudaStream_t s = context().stream()) {
  detail::pd::check_positive("l1_prox", "gamma", gamma);
  detail::pd::check_threshold("l1_prox", "lambda", lambda);
  detail::ew<scalar_t<X>>(view_of(y), cview_of(x), detail::Soft<arg_t<X>>{gamma * lambda}, s);
}
template <DeviceArg Y, DeviceArg X, DeviceArg W>
void l1_prox_into(Y&& y, const X& x, arg_t<X> gamma, arg_t<X> lambda, const W& w,
                  cudaStream_t s = context().stream()) {
  detail::pd::check_positive("l1_prox", "gamma", gamma);
  detail::pd::check_threshold("l1_prox", "lambda", lambda);
  detail::ew_w<scalar_t<X>>("l1_prox", view_of(y), cview_of(x), cview_of(w),
                            detail::SoftW<arg_t<X>>{gamma * lambda}, s);
}
template <DeviceArg X>
void l1_prox_inplace(X&& x, arg_t<X> gamma, arg_t<X> lambda, cudaStream_t s = context().stream()) {
  l1_prox_into(x, x, gamma, lambda, s);
}
template <DeviceArg X, DeviceArg W>
void l1_prox_inplace(X&& x, arg_t<X> gamma, arg_t<X> lambda, const W& w,
                     cudaStream_t s = context().stream()) {
  l1_prox_into(x, x, gamma, lambda, w, s);
}
template <DeviceArg X>
DeviceTensor<scalar_t<X>> l1_prox(const X& x, arg_t<X> gamma, arg_t<X> lambda,
                                  cudaStream_t s = context().stream()) {
  auto y = detail::alloc_like(x);
  l1_prox_into(y, x, gamma, lambda, s);
  return y;
}
template <DeviceArg X, DeviceArg W>
DeviceTensor<scalar_t<X>> l1_prox(const X& x, arg_t<X> gamma, arg_t<X> lambda, const W& w,
                                  cudaStream_t s = context().stream()) {
  auto y = detail::alloc_like(x);
  l1_prox_into(y, x, gamma, lambda, w, s);
  return y;
}

// --- L0 prox: hard threshold at sqrt(2γλ) (weights sqrt(2γλ w_i)) ---------------------------
template <DeviceArg Y, DeviceArg X>
void l0_prox_into(Y&& y, const X& x, arg_t<X> gamma, arg_t<X> lambda,
                  cudaStream_t s = context().stream()) {
  const auto cut = detail::pd::l0_cutoff("l0_prox", gamma, lambda);
  detail::ew<scalar_t<X>>(view_of(y), cview_of(x), detail::Hard<arg_t<X>>{cut}, s);
}
template <DeviceArg Y, DeviceArg X, DeviceArg W>
void l0_prox_into(Y&& y, const X& x, arg_t<X> gamma, arg_t<X> lambda, const W& w,
                  cudaStream_t s = context().stream()) {
  const auto cut = detail::pd::l0_cutoff("l0_prox", gamma, lambda);
  detail::ew_w<scalar_t<X>>("l0_prox", view_of(y), cview_of(x), cview_of(w),
                            detail::L0W<arg_t<X>>{cut}, s);
}
template <DeviceArg X>
void l0_prox_inplace(X&& x, arg_t<X> gamma, arg_t<X> lambda, cudaStream_t s = context().stream()) {
  l0_prox_into(x, x, gamma, lambda, s);
}
template <DeviceArg X, DeviceArg W>
void l0_prox_inplace(X&& x, arg_t<X> gamma, arg_t<X> lambda, const W& w,
                     cudaStream_t s = context().stream()) {
  l0_prox_into(x, x, gamma, lambda, w, s);
}
template <DeviceArg X>
DeviceTensor<scalar_t<X>> l0_prox(const X& x, arg_t<X> gamma, arg_t<X> lambda,
                                  cudaStream_t s = context().stream()) {
  auto y = detail::alloc_like(x);
  l0_prox_into(y, x, gamma, lambda, s);
  return y;
}
template <DeviceArg X, DeviceArg W>
DeviceTensor<scalar_t<X>> l0_prox(const X& x, arg_t<X> gamma, arg_t<X> lambda, const W& w,
                                  cudaStream_t s = context().stream()) {
  auto y = detail::alloc_like(x);
  l0_prox_into(y, x, gamma, lambda, w, s);
  return y;
}

// --- elastic net: soft(x, γλ1) / (1 + γλ2) ------------------------------------------------
template <DeviceArg Y, DeviceArg X>
void elastic_net_prox_into(Y&& y, const X& x, arg_t<X> gamma, arg_t<X> lambda1, arg_t<X> lambda2,
                           cudaStream_t s = context().stream()) {
  const auto op = detail::pd::elastic_net_op(gamma, lambda1, lambda2);
  detail::ew<scalar_t<X>>(view_of(y), cview_of(x), detail::Elastic<arg_t<X>>{op.tau, op.scale}, s);
}
template <DeviceArg X>
void elastic_net_prox_inplace(X&& x, arg_t<X> gamma, arg_t<X> lambda1, arg_t<X> lambda2,
                              cudaStream_t s = context().stream()) {
  elastic_net_prox_into(x, x, gamma, lambda1, lambda2, s);
}
template <DeviceArg X>
DeviceTensor<scalar_t<X>> elastic_net_prox(const X& x, arg_t<X> gamma, arg_t<X> lambda1,
                                           arg_t<X> lambda2, cudaStream_t s = context().stream()) {
  auto y = detail::alloc_like(x);
  elastic_net_prox_into(y, x, gamma, lambda1, lambda2, s);
  return y;
}

// --- nonnegative soft threshold: max(x - τ, 0) ---------------------------------------------
template <DeviceArg Y, DeviceArg X>
void nonneg_soft_threshold_into(Y&& y, const X& x, arg_t<X> tau,
                                cudaStream_t s = context().stream()) {
  detail::pd::check_threshold("nonneg_soft_threshold", "tau", tau);
  detail::ew<scalar_t<X>>(view_of(y), cview_of(x), detail::NonnegSoft<arg_t<X>>{tau}, s);
}
template <DeviceArg X>
void nonneg_soft_threshold_inplace(X&& x, arg_t<X> tau, cudaStream_t s = context().stream()) {
  nonneg_soft_threshold_into(x, x, tau, s);
}
template <DeviceArg X>
DeviceTensor<scalar_t<X>> nonneg_soft_threshold(const X& x, arg_t<X> tau,
                                                cudaStream_t s = context().stream()) {
  auto y = detail::alloc_like(x);
  nonneg_soft_threshold_into(y, x, tau, s);
  return y;
}

// --- firm threshold (prox of γ·MCP(λ, μ)) --------------------------------------------------
template <DeviceArg Y, DeviceArg X>
void firm_threshold_into(Y&& y, const X& x, arg_t<X> gamma, arg_t<X> lambda, arg_t<X> mu,
                         cudaStream_t s = context().stream()) {
  const auto f = detail::pd::firm_op(gamma, lambda, mu).f;
  detail::ew<scalar_t<X>>(view_of(y), cview_of(x),
                          detail::Firm<arg_t<X>>{f.lo, f.hi, f.slope, f.convex}, s);
}
template <DeviceArg X>
void firm_threshold_inplace(X&& x, arg_t<X> gamma, arg_t<X> lambda, arg_t<X> mu,
                            cudaStream_t s = context().stream()) {
  firm_threshold_into(x, x, gamma, lambda, mu, s);
}
template <DeviceArg X>
DeviceTensor<scalar_t<X>> firm_threshold(const X& x, arg_t<X> gamma, arg_t<X> lambda, arg_t<X> mu,
                                         cudaStream_t s = context().stream()) {
  auto y = detail::alloc_like(x);
  firm_threshold_into(y, x, gamma, lambda, mu, s);
  return y;
}

// --- box projection: clamp(x, lo, hi) -------------------------------------------------------
template <DeviceArg Y, DeviceArg X>
void box_project_into(Y&& y, const X& x, arg_t<X> lo, arg_t<X> hi,
                      cudaStream_t s = context().stream()) {
  const auto b = detail::pd::box_op(lo, hi).f;
  detail::ew<scalar_t<X>>(view_of(y), cview_of(x), detail::Box<arg_t<X>>{b.lo, b.hi}, s);
}
template <DeviceArg X>
void box_project_inplace(X&& x, arg_t<X> lo, arg_t<X> hi, cudaStream_t s = context().stream()) {
  box_project_into(x, x, lo, hi, s);
}
template <DeviceArg X>
DeviceTensor<scalar_t<X>> box_project(const X& x, arg_t<X> lo, arg_t<X> hi,
                                      cudaStream_t s = context().stream()) {
  auto y = detail::alloc_like(x);
  box_project_into(y, x, lo, hi, s);
  return y;
}

}  // namespace sora::cuda::prox

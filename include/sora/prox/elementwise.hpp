#pragma once
// Elementwise proximal operators, prox_{γf}(x) = argmin_y f(y) + ||y - x||² / (2γ), for
// separable f. Every operator comes in place (the primary form, `*_inplace(x, ...)`, x any
// writable Eigen dense expression: Matrix, Array, Map, Block, Ref, m.row(i), ...) and out of
// place (`op(x, ...)`, returns x's plain object type).
//
// Kernels are in clamp/select form so that Eigen vectorizes them: soft threshold is
// x - clamp(x, -τ, τ) (identical to sign(x) max(|x| - τ, 0), which Eigen cannot vectorize);
// hard threshold is a compare-and-mask packet functor (Eigen 3.4's select() is scalar-only).
//
// Non-finite inputs, by design: nothing is ever silently erased. NaN stays NaN in every
// operator (a comparison with NaN is false, and each rule zeroes only what is provably small);
// ±inf behaves as the limit: soft(±inf) = ±inf, hard(±inf) = ±inf, firm(±inf) = ±inf,
// nonneg_soft(+inf) = +inf and nonneg_soft(-inf) = 0, box clamps ±inf to the bounds.

#include <Eigen/Core>
#include <cmath>

#include "sora/prox/detail.hpp"

namespace sora::prox {
namespace detail {

// sign(x) max(|x| - τ, 0) == x - clamp(x, -τ, τ): for |x| <= τ the clamp returns x itself
// (result exactly 0, so |x| == τ gives 0); otherwise it returns ±τ with x's sign. NaN - c is
// NaN whatever the clamp returned for NaN, and ±inf - (±τ) = ±inf.
template <class T>
struct SoftOp {
  T tau;
  template <class A>
  auto operator()(const A& a) const {
    return a - a.max(-tau).min(tau);
  }
};

// Per-element thresholds t = τ w (an array expression of x's shape).
struct SoftWeightedOp {
  template <class A, class Tau>
  auto operator()(const A& a, const Tau& t) const {
    return a - a.max(-t).min(t);
  }
};

// x if |x| > t else 0, written as "zero where |x| <= t" so that NaN (every comparison false)
// is kept, as documented. packetOp: a compare gives an all-ones mask where |x| <= t and
// andnot clears those lanes.
template <class T>
struct HardOp {
  T t;
  T operator()(const T& x) const { return std::abs(x) <= t ? T(0) : x; }
  template <class Packet>
  Packet packetOp(const Packet& x) const {
    using namespace Eigen::internal;
    return pandnot(x, pcmp_le(pabs(x), pset1<Packet>(t)));
  }
};

// The same with a per-element threshold (second operand).
template <class T>
struct HardBinaryOp {
  T operator()(const T& x, const T& t) const { return std::abs(x) <= t ? T(0) : x; }
  template <class Packet>
  Packet packetOp(const Packet& x, const Packet& t) const {
    using namespace Eigen::internal;
    return pandnot(x, pcmp_le(pabs(x), t));
  }
};

}  // namespace detail
}  // namespace sora::prox

// Let Eigen call packetOp on the hard-threshold functors.
namespace Eigen::internal {
template <class T>
struct functor_traits<sora::prox::detail::HardOp<T>> {
  enum { Cost = 3 * NumTraits<T>::AddCost, PacketAccess = packet_traits<T>::Vectorizable };
};
template <class T>
struct functor_traits<sora::prox::detail::HardBinaryOp<T>> {
  enum { Cost = 3 * NumTraits<T>::AddCost, PacketAccess = packet_traits<T>::Vectorizable };
};
}  // namespace Eigen::internal

namespace sora::prox {
namespace detail {

template <class T>
struct HardFixedOp {
  T t;
  template <class A>
  auto operator()(const A& a) const {
    return a.unaryExpr(HardOp<T>{t});
  }
};

template <class T>
struct HardWeightedOp {
  T scale;  // threshold_i = scale * w_i
  template <class A, class W>
  auto operator()(const A& a, const W& w) const {
    return a.binaryExpr(w * scale, HardBinaryOp<T>{});
  }
};

// Correctly rounded sqrt, scalar only. Eigen's packet sqrt for float (EIGEN_FAST_MATH, on by
// default) is rsqrt plus one Newton step, off by an ulp: sqrt(1) can come out below 1, so the
// vectorized body kept |x| == sqrt(2γλ) while the scalar tail (std::sqrt) dropped it.
template <class T>
struct ExactSqrtOp {
  T operator()(const T& v) const { return std::sqrt(v); }
};

// L0 with weights: threshold_i = sqrt(2γλ w_i) = sqrt(2γλ) sqrt(w_i).
template <class T>
struct L0WeightedOp {
  T scale;  // sqrt(2γλ)
  template <class A, class W>
  auto operator()(const A& a, const W& w) const {
    return a.binaryExpr(w.unaryExpr(ExactSqrtOp<T>{}) * scale, HardBinaryOp<T>{});
  }
};

template <class T>
struct SoftWeightedScaledOp {
  T tau;
  template <class A, class W>
  auto operator()(const A& a, const W& w) const {
    return SoftWeightedOp{}(a, w * tau);
  }
};

template <class T>
struct ElasticNetOp {
  T tau;    // γ λ1
  T scale;  // 1 / (1 + γ λ2)
  template <class A>
  auto operator()(const A& a) const {
    return (a - a.max(-tau).min(tau)) * scale;
  }
};

// max(x - τ, 0), with NaN kept (x > τ false and x <= τ false) and -inf -> 0.
template <class T>
struct NonnegSoftScalar {
  T tau;
  T operator()(const T& x) const { return x > tau ? x - tau : (x <= tau ? T(0) : x); }
};

template <class T>
struct NonnegSoftOp {
  T tau;
  template <class A>
  auto operator()(const A& a) const {
    return a.unaryExpr(NonnegSoftScalar<T>{tau});
  }
};

// Prox of γ·MCP(·; λ, μ). Derivation in firm_threshold_inplace below.
template <class T>
struct FirmScalar {
  T lo;     // γλ (μ > γ) or sqrt(γμ)λ (μ <= γ): below it (inclusive), 0
  T hi;     // μλ: above it, x unchanged (only used when convex)
  T slope;  // μ / (μ - γ)
  bool convex;
  T operator()(const T& x) const {
    const T ax = std::abs(x);
    if (ax <= lo) return T(0);
    if (convex && ax <= hi) return x > 0 ? (ax - lo) * slope : -(ax - lo) * slope;
    return x;  // includes NaN and ±inf
  }
};

template <class T>
struct FirmOp {
  FirmScalar<T> f;
  template <class A>
  auto operator()(const A& a) const {
    return a.unaryExpr(f);
  }
};

// Clamp to [lo, hi] with NaN kept: both comparisons are false for NaN.
template <class T>
struct BoxScalar {
  T lo, hi;
  T operator()(const T& x) const { return x < lo ? lo : (x > hi ? hi : x); }
};

template <class T>
struct BoxOp {
  BoxScalar<T> f;
  template <class A>
  auto operator()(const A& a) const {
    return a.unaryExpr(f);
  }
};

template <class Op, class X>
plain_of<X> apply_copy(const Op& op, const Eigen::DenseBase<X>& x) {
  plain_of<X> y(x.rows(), x.cols());
  apply_elementwise(op, y, x);
  return y;
}

template <class Op, class X, class W>
plain_of<X> apply_copy(const Op& op, const Eigen::DenseBase<X>& x, const Eigen::DenseBase<W>& w) {
  plain_of<X> y(x.rows(), x.cols());
  apply_elementwise(op, y, x, w);
  return y;
}

template <class X, class W>
void check_elementwise_weights(const char* op, const Eigen::DenseBase<X>& x,
                               const Eigen::DenseBase<W>& w) {
  static_assert(std::is_same_v<typename X::Scalar, typename W::Scalar>,
                "weights must have the scalar type of x");
  check_same_shape(op, "weights", x, w);
  check_weights(op, w);
}
}  // namespace detail

// ------------------------------------------------------------------------------------------
// Soft threshold (prox of τ||·||_1): sign(x) max(|x| - τ, 0). |x| == τ gives exactly 0.

template <detail::WritableDense X>
void soft_threshold_inplace(X&& x, detail::scalar_of<X> tau) {
  detail::check_threshold("soft_threshold", "tau", tau);
  detail::apply_elementwise(detail::SoftOp<detail::scalar_of<X>>{tau}, x, x);
}

// Weighted: threshold τ w_i per element (w: x's shape, finite, >= 0).
template <detail::WritableDense X, class W>
void soft_threshold_inplace(X&& x, detail::scalar_of<X> tau, const Eigen::DenseBase<W>& w) {
  detail::check_threshold("soft_threshold", "tau", tau);
  detail::check_elementwise_weights("soft_threshold", x, w);
  detail::apply_elementwise(detail::SoftWeightedScaledOp<detail::scalar_of<X>>{tau}, x, x, w);
}

template <class X>
detail::plain_of<X> soft_threshold(const Eigen::DenseBase<X>& x, typename X::Scalar tau) {
  detail::check_threshold("soft_threshold", "tau", tau);
  return detail::apply_copy(detail::SoftOp<typename X::Scalar>{tau}, x);
}

template <class X, class W>
detail::plain_of<X> soft_threshold(const Eigen::DenseBase<X>& x, typename X::Scalar tau,
                                   const Eigen::DenseBase<W>& w) {
  detail::check_threshold("soft_threshold", "tau", tau);
  detail::check_elementwise_weights("soft_threshold", x, w);
  return detail::apply_copy(detail::SoftWeightedScaledOp<typename X::Scalar>{tau}, x, w);
}

// ------------------------------------------------------------------------------------------
// Hard threshold: keep x where |x| > τ (strict), else 0. The raw cut-off; for the prox of
// the L0 penalty use l0_prox, whose cut-off is sqrt(2γλ).

template <detail::WritableDense X>
void hard_threshold_inplace(X&& x, detail::scalar_of<X> tau) {
  detail::check_threshold("hard_threshold", "tau", tau);
  detail::apply_elementwise(detail::HardFixedOp<detail::scalar_of<X>>{tau}, x, x);
}

template <detail::WritableDense X, class W>
void hard_threshold_inplace(X&& x, detail::scalar_of<X> tau, const Eigen::DenseBase<W>& w) {
  detail::check_threshold("hard_threshold", "tau", tau);
  detail::check_elementwise_weights("hard_threshold", x, w);
  detail::apply_elementwise(detail::HardWeightedOp<detail::scalar_of<X>>{tau}, x, x, w);
}

template <class X>
detail::plain_of<X> hard_threshold(const Eigen::DenseBase<X>& x, typename X::Scalar tau) {
  detail::check_threshold("hard_threshold", "tau", tau);
  return detail::apply_copy(detail::HardFixedOp<typename X::Scalar>{tau}, x);
}

template <class X, class W>
detail::plain_of<X> hard_threshold(const Eigen::DenseBase<X>& x, typename X::Scalar tau,
                                   const Eigen::DenseBase<W>& w) {
  detail::check_threshold("hard_threshold", "tau", tau);
  detail::check_elementwise_weights("hard_threshold", x, w);
  return detail::apply_copy(detail::HardWeightedOp<typename X::Scalar>{tau}, x, w);
}

// ------------------------------------------------------------------------------------------
// L1 prox: prox of γλ||·||_1 = soft threshold at γλ (weights: γλ w_i).

template <detail::WritableDense X>
void l1_prox_inplace(X&& x, detail::scalar_of<X> gamma, detail::scalar_of<X> lambda) {
  detail::check_positive("l1_prox", "gamma", gamma);
  detail::check_threshold("l1_prox", "lambda", lambda);
  detail::apply_elementwise(detail::SoftOp<detail::scalar_of<X>>{gamma * lambda}, x, x);
}

template <detail::WritableDense X, class W>
void l1_prox_inplace(X&& x, detail::scalar_of<X> gamma, detail::scalar_of<X> lambda,
                     const Eigen::DenseBase<W>& w) {
  detail::check_positive("l1_prox", "gamma", gamma);
  detail::check_threshold("l1_prox", "lambda", lambda);
  detail::check_elementwise_weights("l1_prox", x, w);
  detail::apply_elementwise(detail::SoftWeightedScaledOp<detail::scalar_of<X>>{gamma * lambda}, x,
                            x, w);
}

template <class X>
detail::plain_of<X> l1_prox(const Eigen::DenseBase<X>& x, typename X::Scalar gamma,
                            typename X::Scalar lambda) {
  detail::check_positive("l1_prox", "gamma", gamma);
  detail::check_threshold("l1_prox", "lambda", lambda);
  return detail::apply_copy(detail::SoftOp<typename X::Scalar>{gamma * lambda}, x);
}

template <class X, class W>
detail::plain_of<X> l1_prox(const Eigen::DenseBase<X>& x, typename X::Scalar gamma,
                            typename X::Scalar lambda, const Eigen::DenseBase<W>& w) {
  detail::check_positive("l1_prox", "gamma", gamma);
  detail::check_threshold("l1_prox", "lambda", lambda);
  detail::check_elementwise_weights("l1_prox", x, w);
  return detail::apply_copy(detail::SoftWeightedScaledOp<typename X::Scalar>{gamma * lambda}, x, w);
}

// ------------------------------------------------------------------------------------------
// L0 prox: prox of γλ||·||_0 = hard threshold at sqrt(2γλ) (weights: sqrt(2γλ w_i)).
// At |x| == sqrt(2γλ) both 0 and x are minimizers; we return 0 (the sparser one), the same
// strict rule as hard_threshold.

template <detail::WritableDense X>
void l0_prox_inplace(X&& x, detail::scalar_of<X> gamma, detail::scalar_of<X> lambda) {
  const auto cut = detail::l0_cutoff("l0_prox", gamma, lambda);
  detail::apply_elementwise(detail::HardFixedOp<detail::scalar_of<X>>{cut}, x, x);
}

template <detail::WritableDense X, class W>
void l0_prox_inplace(X&& x, detail::scalar_of<X> gamma, detail::scalar_of<X> lambda,
                     const Eigen::DenseBase<W>& w) {
  const auto cut = detail::l0_cutoff("l0_prox", gamma, lambda);
  detail::check_elementwise_weights("l0_prox", x, w);
  detail::apply_elementwise(detail::L0WeightedOp<detail::scalar_of<X>>{cut}, x, x, w);
}

template <class X>
detail::plain_of<X> l0_prox(const Eigen::DenseBase<X>& x, typename X::Scalar gamma,
                            typename X::Scalar lambda) {
  const auto cut = detail::l0_cutoff("l0_prox", gamma, lambda);
  return detail::apply_copy(detail::HardFixedOp<typename X::Scalar>{cut}, x);
}

template <class X, class W>
detail::plain_of<X> l0_prox(const Eigen::DenseBase<X>& x, typename X::Scalar gamma,
                            typename X::Scalar lambda, const Eigen::DenseBase<W>& w) {
  const auto cut = detail::l0_cutoff("l0_prox", gamma, lambda);
  detail::check_elementwise_weights("l0_prox", x, w);
  return detail::apply_copy(detail::L0WeightedOp<typename X::Scalar>{cut}, x, w);
}

// ------------------------------------------------------------------------------------------
// Elastic net: prox of γ(λ1|y| + (λ2/2) y²). Setting the subgradient to zero,
// 0 ∈ γλ1 ∂|y| + γλ2 y + y - x, gives y (1 + γλ2) = soft(x, γλ1), so
// y = soft(x, γλ1) / (1 + γλ2).

namespace detail {
template <class T>
ElasticNetOp<T> elastic_net_op(T gamma, T lambda1, T lambda2) {
  check_positive("elastic_net_prox", "gamma", gamma);
  check_threshold("elastic_net_prox", "lambda1", lambda1);
  check_threshold("elastic_net_prox", "lambda2", lambda2);
  return {gamma * lambda1, T(1) / (T(1) + gamma * lambda2)};
}
}  // namespace detail

template <detail::WritableDense X>
void elastic_net_prox_inplace(X&& x, detail::scalar_of<X> gamma, detail::scalar_of<X> lambda1,
                              detail::scalar_of<X> lambda2) {
  detail::apply_elementwise(detail::elastic_net_op(gamma, lambda1, lambda2), x, x);
}

template <class X>
detail::plain_of<X> elastic_net_prox(const Eigen::DenseBase<X>& x, typename X::Scalar gamma,
                                     typename X::Scalar lambda1, typename X::Scalar lambda2) {
  return detail::apply_copy(detail::elastic_net_op(gamma, lambda1, lambda2), x);
}

// ------------------------------------------------------------------------------------------
// Nonnegative soft threshold: prox of τ|y| + indicator(y >= 0) = max(x - τ, 0).
// (On y >= 0 the objective is τy + (y-x)²/2, minimized at x - τ, clipped at the boundary.)

template <detail::WritableDense X>
void nonneg_soft_threshold_inplace(X&& x, detail::scalar_of<X> tau) {
  detail::check_threshold("nonneg_soft_threshold", "tau", tau);
  detail::apply_elementwise(detail::NonnegSoftOp<detail::scalar_of<X>>{tau}, x, x);
}

template <class X>
detail::plain_of<X> nonneg_soft_threshold(const Eigen::DenseBase<X>& x, typename X::Scalar tau) {
  detail::check_threshold("nonneg_soft_threshold", "tau", tau);
  return detail::apply_copy(detail::NonnegSoftOp<typename X::Scalar>{tau}, x);
}

// ------------------------------------------------------------------------------------------
// Firm threshold = prox of γ·MCP, MCP(y; λ, μ) = λ|y| - y²/(2μ) for |y| <= μλ and μλ²/2
// beyond (λ >= 0, μ > 1, Zhang 2010).
//
// Case μ > γ (the 1-D objective is strictly convex): for 0 < y <= μλ the stationarity
// condition λ - y/μ + (y - x)/γ = 0 gives y = (x - γλ) / (1 - γ/μ) = (x - γλ) μ/(μ - γ),
// which lies in (0, μλ] exactly when γλ < x <= μλ; at y = 0 the subgradient condition holds
// for |x| <= γλ; for |x| > μλ the penalty is flat and y = x. So
//   |x| <= γλ: 0;   γλ < |x| <= μλ: sign(x)(|x| - γλ) μ/(μ - γ);   |x| > μλ: x.
// Case μ <= γ (large step, the objective is concave on [0, μλ]): the minimizer is 0 or x,
// whichever is cheaper: x²/(2γ) against μλ²/2, i.e. keep x iff |x| > sqrt(γμ) λ (a hard
// threshold; ties go to 0 like l0_prox). Both cases are checked by brute force in the tests.

namespace detail {
template <class T>
FirmOp<T> firm_op(T gamma, T lambda, T mu) {
  check_positive("firm_threshold", "gamma", gamma);
  check_threshold("firm_threshold", "lambda", lambda);
  SORA_CHECK(mu > T(1) && std::isfinite(mu), "firm_threshold: mu must be finite and > 1, got ", mu);
  if (mu > gamma) return {FirmScalar<T>{gamma * lambda, mu * lambda, mu / (mu - gamma), true}};
  return {FirmScalar<T>{std::sqrt(gamma * mu) * lambda, mu * lambda, T(1), false}};
}
}  // namespace detail

template <detail::WritableDense X>
void firm_threshold_inplace(X&& x, detail::scalar_of<X> gamma, detail::scalar_of<X> lambda,
                            detail::scalar_of<X> mu) {
  detail::apply_elementwise(detail::firm_op(gamma, lambda, mu), x, x);
}

template <class X>
detail::plain_of<X> firm_threshold(const Eigen::DenseBase<X>& x, typename X::Scalar gamma,
                                   typename X::Scalar lambda, typename X::Scalar mu) {
  return detail::apply_copy(detail::firm_op(gamma, lambda, mu), x);
}

// ------------------------------------------------------------------------------------------
// Box projection: prox of the indicator of [lo, hi] (any γ) = clamp(x, lo, hi). Infinite
// bounds are allowed (a half-line); lo > hi or a NaN bound throws.

namespace detail {
template <class T>
BoxOp<T> box_op(T lo, T hi) {
  SORA_CHECK(!std::isnan(lo) && !std::isnan(hi), "box_project: bounds must not be NaN, got [", lo,
             ", ", hi, "]");
  SORA_CHECK(lo <= hi, "box_project: lo must be <= hi, got lo = ", lo, " > hi = ", hi);
  return {BoxScalar<T>{lo, hi}};
}
}  // namespace detail

template <detail::WritableDense X>
void box_project_inplace(X&& x, detail::scalar_of<X> lo, detail::scalar_of<X> hi) {
  detail::apply_elementwise(detail::box_op(lo, hi), x, x);
}

template <class X>
detail::plain_of<X> box_project(const Eigen::DenseBase<X>& x, typename X::Scalar lo,
                                typename X::Scalar hi) {
  return detail::apply_copy(detail::box_op(lo, hi), x);
}

}  // namespace sora::prox

#pragma once
// Rank triplets of a gated low-rank adapter: with A (R, in), B (out, R) and gate g (R), rank i
// owns the group {row i of A, column i of B, g_i} -- everything that dies with that rank. The
// group operators of group.hpp applied to these R groups:
//   group_soft_threshold_triplets_inplace(A, B, g, τ [, w])      scale by max(0, 1 - τ w_i/n_i)
//   group_hard_threshold_triplets_inplace(A, B, g, τ [, w])      keep iff n_i > τ w_i
//   group_l0_prox_triplets_inplace(A, B, g, γ, λ [, w])          keep iff n_i > sqrt(2γλ w_i)
// with n_i² = ||A_i,:||² + ||B_:,i||² + g_i². Any of the three may be any writable dense
// expression (g a vector of any orientation); weights w: one per rank.

#include <Eigen/Core>
#include <cmath>

#include "sora/prox/group.hpp"

namespace sora::prox {
namespace detail {

template <class A, class B, class G>
Index check_triplets(const char* op, const Eigen::DenseBase<A>& a, const Eigen::DenseBase<B>& b,
                     const Eigen::DenseBase<G>& g) {
  static_assert(std::is_same_v<typename A::Scalar, typename B::Scalar> &&
                    std::is_same_v<typename A::Scalar, typename G::Scalar>,
                "A, B and g must share a scalar type");
  const Index R = a.rows();
  SORA_CHECK(b.cols() == R, op, ": B (out, R) has shape ", shape_of(b), " but A (R, in) has ",
             shape_of(a), "; B must have ", R, " columns");
  SORA_CHECK((g.rows() == 1 || g.cols() == 1 || g.size() == 0) && g.size() == R, op,
             ": gate g has shape ", shape_of(g), " but A (R, in) has ", shape_of(a),
             "; g must be a vector of ", R);
  return R;
}

// Squared triplet norms (R) in the scalar type.
template <class A, class B, class G>
Eigen::Array<typename A::Scalar, Eigen::Dynamic, 1> triplet_sq_norms(const Eigen::DenseBase<A>& a,
                                                                     const Eigen::DenseBase<B>& b,
                                                                     const Eigen::DenseBase<G>& g) {
  using T = typename A::Scalar;
  const Index R = a.rows();
  Eigen::Array<T, Eigen::Dynamic, 1> n2(R);  // (R)
  const auto aa = as_array(a);
  const auto ba = as_array(b);
  for (Index i = 0; i < R; ++i) {
    const T gi = g.coeff(i);
    n2(i) = aa.row(i).abs2().sum() + ba.col(i).abs2().sum() + gi * gi;
  }
  return n2;
}

template <class A, class B, class G, class Thr>
void triplet_apply(Eigen::DenseBase<A>& a, Eigen::DenseBase<B>& b, Eigen::DenseBase<G>& g,
                   GroupMode mode, const Thr& thr) {
  using T = typename A::Scalar;
  const Index R = a.rows();
  auto f = triplet_sq_norms(a, b, g);  // (R) squared norms, then factors
  bool all_one = true;
  for (Index i = 0; i < R; ++i) {
    f(i) = group_factor(mode, std::sqrt(f(i)), thr(i));
    all_one = all_one && f(i) == T(1);
  }
  if (all_one) return;
  decltype(auto) aa = as_array(a);
  decltype(auto) ba = as_array(b);
  // B's columns are strided in row-major storage: scale whole rows by the factor vector.
  ba.rowwise() *= f.transpose();
  for (Index i = 0; i < R; ++i) {
    if (f(i) == T(0)) {  // a dead rank: exact +0 everywhere (x * 0 would leave -0)
      aa.row(i).setZero();
      ba.col(i).setZero();
      g.coeffRef(i) = T(0);
    } else if (f(i) != T(1)) {
      aa.row(i) *= f(i);
      g.coeffRef(i) *= f(i);
    }
  }
}

template <class A, class B, class G>
void run_triplets(A& a, B& b, G& g, const char* op, GroupMode mode, typename A::Scalar thr) {
  check_triplets(op, a, b, g);
  triplet_apply(a, b, g, mode, ConstantThreshold<typename A::Scalar>{thr});
}

template <class A, class B, class G, class W>
void run_triplets(A& a, B& b, G& g, const char* op, GroupMode mode, typename A::Scalar scale,
                  bool sqrt_weight, const Eigen::DenseBase<W>& w) {
  static_assert(std::is_same_v<typename A::Scalar, typename W::Scalar>,
                "weights must have the scalar type of A");
  const Index R = check_triplets(op, a, b, g);
  check_group_weights(op, w, R);
  triplet_apply(a, b, g, mode,
                WeightedThreshold<typename A::Scalar, W>{scale, w.derived(), sqrt_weight});
}

}  // namespace detail

template <detail::WritableDense A, detail::WritableDense B, detail::WritableDense G>
void group_soft_threshold_triplets_inplace(A&& a, B&& b, G&& g, detail::scalar_of<A> tau) {
  detail::check_threshold("group_soft_threshold_triplets", "tau", tau);
  detail::run_triplets(a, b, g, "group_soft_threshold_triplets", detail::GroupMode::Shrink, tau);
}

template <detail::WritableDense A, detail::WritableDense B, detail::WritableDense G, class W>
void group_soft_threshold_triplets_inplace(A&& a, B&& b, G&& g, detail::scalar_of<A> tau,
                                           const Eigen::DenseBase<W>& w) {
  detail::check_threshold("group_soft_threshold_triplets", "tau", tau);
  detail::run_triplets(a, b, g, "group_soft_threshold_triplets", detail::GroupMode::Shrink, tau,
                       false, w);
}

template <detail::WritableDense A, detail::WritableDense B, detail::WritableDense G>
void group_hard_threshold_triplets_inplace(A&& a, B&& b, G&& g, detail::scalar_of<A> tau) {
  detail::check_threshold("group_hard_threshold_triplets", "tau", tau);
  detail::run_triplets(a, b, g, "group_hard_threshold_triplets", detail::GroupMode::Keep, tau);
}

template <detail::WritableDense A, detail::WritableDense B, detail::WritableDense G, class W>
void group_hard_threshold_triplets_inplace(A&& a, B&& b, G&& g, detail::scalar_of<A> tau,
                                           const Eigen::DenseBase<W>& w) {
  detail::check_threshold("group_hard_threshold_triplets", "tau", tau);
  detail::run_triplets(a, b, g, "group_hard_threshold_triplets", detail::GroupMode::Keep, tau,
                       false, w);
}

template <detail::WritableDense A, detail::WritableDense B, detail::WritableDense G>
void group_l0_prox_triplets_inplace(A&& a, B&& b, G&& g, detail::scalar_of<A> gamma,
                                    detail::scalar_of<A> lambda) {
  const auto cut = detail::l0_cutoff("group_l0_prox_triplets", gamma, lambda);
  detail::run_triplets(a, b, g, "group_l0_prox_triplets", detail::GroupMode::Keep, cut);
}

template <detail::WritableDense A, detail::WritableDense B, detail::WritableDense G, class W>
void group_l0_prox_triplets_inplace(A&& a, B&& b, G&& g, detail::scalar_of<A> gamma,
                                    detail::scalar_of<A> lambda, const Eigen::DenseBase<W>& w) {
  const auto cut = detail::l0_cutoff("group_l0_prox_triplets", gamma, lambda);
  detail::run_triplets(a, b, g, "group_l0_prox_triplets", detail::GroupMode::Keep, cut, true, w);
}

}  // namespace sora::prox

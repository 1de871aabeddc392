#pragma once
// Values of the regularizers whose proximal operators live in prox/, for tests and for loss
// reporting. Accumulated in double whatever the scalar type (a float sum over millions of
// terms would lose digits). Indicators return 0 or +inf. Weighted forms take the same
// weights as their operators (per element, or one per group).

#include <Eigen/Core>
#include <cmath>
#include <limits>
#include <vector>

#include "sora/prox/detail.hpp"
#include "sora/prox/groups.hpp"
#include "sora/prox/triplet.hpp"

namespace sora::prox {
namespace detail {

template <class X, class Fn>
double sum_elements(const Eigen::DenseBase<X>& x, Fn&& fn) {
  double total = 0.0;
  for (Index i = 0; i < x.rows(); ++i)
    for (Index j = 0; j < x.cols(); ++j) total += fn(static_cast<double>(x.coeff(i, j)), i, j);
  return total;
}

template <class X>
std::vector<double> group_norms(const Eigen::DenseBase<X>& x, const Groups& groups,
                                const char* op) {
  const Index G = groups.count(x.rows(), x.cols(), op);
  std::vector<double> n2(static_cast<std::size_t>(G), 0.0);  // (G)
  visit_groups(groups, x.rows(), x.cols(), [&](Index g, Index i, Index j) {
    const double v = static_cast<double>(x.coeff(i, j));
    n2[static_cast<std::size_t>(g)] += v * v;
  });
  for (double& v : n2) v = std::sqrt(v);
  return n2;
}

template <class A, class B, class G>
std::vector<double> triplet_norms(const Eigen::DenseBase<A>& a, const Eigen::DenseBase<B>& b,
                                  const Eigen::DenseBase<G>& g, const char* op) {
  const Index R = check_triplets(op, a, b, g);
  std::vector<double> n(static_cast<std::size_t>(R));  // (R)
  for (Index i = 0; i < R; ++i) {
    const double gi = static_cast<double>(g.coeff(i));
    n[static_cast<std::size_t>(i)] =
        std::sqrt(a.row(i).template cast<double>().squaredNorm() +
                  b.col(i).template cast<double>().squaredNorm() + gi * gi);
  }
  return n;
}

inline double weighted_sum(const std::vector<double>& values, bool indicator) {
  double total = 0.0;
  for (double v : values) total += indicator ? double(v != 0.0) : v;
  return total;
}

template <class W>
double weighted_sum(const std::vector<double>& values, bool indicator, const Eigen::DenseBase<W>& w,
                    const char* op) {
  check_group_weights(op, w, static_cast<Index>(values.size()));
  double total = 0.0;
  for (std::size_t k = 0; k < values.size(); ++k) {
    const double wk = static_cast<double>(w.coeff(static_cast<Index>(k)));
    total += wk * (indicator ? double(values[k] != 0.0) : values[k]);
  }
  return total;
}

}  // namespace detail

// Σ |x_i|  (and Σ w_i |x_i|).
template <class X>
double l1(const Eigen::DenseBase<X>& x) {
  return detail::sum_elements(x, [](double v, Index, Index) { return std::abs(v); });
}
template <class X, class W>
double l1(const Eigen::DenseBase<X>& x, const Eigen::DenseBase<W>& w) {
  detail::check_same_shape("l1", "weights", x, w);
  return detail::sum_elements(
      x, [&](double v, Index i, Index j) { return double(w.coeff(i, j)) * std::abs(v); });
}

// Number of non-zeros (and Σ w_i [x_i != 0]).
template <class X>
double l0(const Eigen::DenseBase<X>& x) {
  return detail::sum_elements(x, [](double v, Index, Index) { return double(v != 0.0); });
}
template <class X, class W>
double l0(const Eigen::DenseBase<X>& x, const Eigen::DenseBase<W>& w) {
  detail::check_same_shape("l0", "weights", x, w);
  return detail::sum_elements(
      x, [&](double v, Index i, Index j) { return double(w.coeff(i, j)) * double(v != 0.0); });
}

// λ1 Σ|x_i| + (λ2/2) Σ x_i²  (the f of elastic_net_prox).
template <class X>
double elastic_net(const Eigen::DenseBase<X>& x, double lambda1, double lambda2) {
  return detail::sum_elements(
      x, [&](double v, Index, Index) { return lambda1 * std::abs(v) + 0.5 * lambda2 * v * v; });
}

// Σ MCP(x_i; λ, μ): λ|x| - x²/(2μ) for |x| <= μλ, μλ²/2 beyond (the f of firm_threshold).
template <class X>
double mcp(const Eigen::DenseBase<X>& x, double lambda, double mu) {
  return detail::sum_elements(x, [&](double v, Index, Index) {
    const double a = std::abs(v);
    return a <= mu * lambda ? lambda * a - v * v / (2.0 * mu) : 0.5 * mu * lambda * lambda;
  });
}

// Σ x_i if every x_i >= 0, +inf otherwise (the f of nonneg_soft_threshold with τ = 1).
template <class X>
double nonneg_l1(const Eigen::DenseBase<X>& x) {
  return detail::sum_elements(x, [](double v, Index, Index) {
    return v >= 0.0 ? v : std::numeric_limits<double>::infinity();
  });
}

// Indicator of the box [lo, hi]^n.
template <class X>
double box_indicator(const Eigen::DenseBase<X>& x, double lo, double hi) {
  return detail::sum_elements(x, [&](double v, Index, Index) {
    return (v >= lo && v <= hi) ? 0.0 : std::numeric_limits<double>::infinity();
  });
}

// Indicator of the L0 ball {||x||_0 <= k}.
template <class X>
double l0_ball_indicator(const Eigen::DenseBase<X>& x, Index k) {
  return l0(x) <= static_cast<double>(k) ? 0.0 : std::numeric_limits<double>::infinity();
}

// Σ_g ||x_g||_2 (group lasso / L2,1) and Σ_g w_g ||x_g||_2.
template <class X>
double group_l21(const Eigen::DenseBase<X>& x, const Groups& groups) {
  return detail::weighted_sum(detail::group_norms(x, groups, "group_l21"), false);
}
template <class X, class W>
double group_l21(const Eigen::DenseBase<X>& x, const Groups& groups, const Eigen::DenseBase<W>& w) {
  return detail::weighted_sum(detail::group_norms(x, groups, "group_l21"), false, w, "group_l21");
}

// Number of non-zero groups and Σ_g w_g [x_g != 0].
template <class X>
double group_l0(const Eigen::DenseBase<X>& x, const Groups& groups) {
  return detail::weighted_sum(detail::group_norms(x, groups, "group_l0"), true);
}
template <class X, class W>
double group_l0(const Eigen::DenseBase<X>& x, const Groups& groups, const Eigen::DenseBase<W>& w) {
  return detail::weighted_sum(detail::group_norms(x, groups, "group_l0"), true, w, "group_l0");
}

// The same over rank triplets (row i of A, column i of B, g_i).
template <class A, class B, class G>
double group_l21_triplets(const Eigen::DenseBase<A>& a, const Eigen::DenseBase<B>& b,
                          const Eigen::DenseBase<G>& g) {
  return detail::weighted_sum(detail::triplet_norms(a, b, g, "group_l21_triplets"), false);
}
template <class A, class B, class G, class W>
double group_l21_triplets(const Eigen::DenseBase<A>& a, const Eigen::DenseBase<B>& b,
                          const Eigen::DenseBase<G>& g, const Eigen::DenseBase<W>& w) {
  return detail::weighted_sum(detail::triplet_norms(a, b, g, "group_l21_triplets"), false, w,
                              "group_l21_triplets");
}
template <class A, class B, class G>
double group_l0_triplets(const Eigen::DenseBase<A>& a, const Eigen::DenseBase<B>& b,
                         const Eigen::DenseBase<G>& g) {
  return detail::weighted_sum(detail::triplet_norms(a, b, g, "group_l0_triplets"), true);
}
template <class A, class B, class G, class W>
double group_l0_triplets(const Eigen::DenseBase<A>& a, const Eigen::DenseBase<B>& b,
                         const Eigen::DenseBase<G>& g, const Eigen::DenseBase<W>& w) {
  return detail::weighted_sum(detail::triplet_norms(a, b, g, "group_l0_triplets"), true, w,
                              "group_l0_triplets");
}

}  // namespace sora::prox

#pragma once
// Projection onto the L0 ball {y : ||y||_0 <= k}: keep the k entries of largest magnitude,
// zero the rest. (Among all y with at most k non-zeros, ||y - x||² is the sum of x_i² over the
// zeroed entries, minimized by zeroing the smallest.) Ties in |x| are broken by position, the
// earlier entry winning, in row-major (row, col) order whatever the storage order, so the
// result is deterministic. NaN has no magnitude order: an x containing NaN throws.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "sora/prox/detail.hpp"

namespace sora::prox {

template <detail::WritableDense X>
void topk_project_inplace(X&& x, Index k) {
  const Index n = x.size();
  SORA_CHECK(k >= 0 && k <= n, "topk_project: k must be in [0, ", n, "] for x of shape ",
             shape_of(x), ", got ", k);
  const Index C = x.cols();
  using T = detail::scalar_of<X>;
  std::vector<T> mag(static_cast<std::size_t>(n));  // (n) |x| in row-major order
  for (Index i = 0; i < n; ++i) {
    const T v = x.coeff(i / C, i % C);
    SORA_CHECK(!std::isnan(v), "topk_project: x contains NaN at (", i / C, ", ", i % C, ")");
    mag[static_cast<std::size_t>(i)] = std::abs(v);
  }
  if (k == n) return;
  std::vector<Index> order(static_cast<std::size_t>(n));  // (n) positions, best first
  std::iota(order.begin(), order.end(), Index(0));
  const auto better = [&](Index a, Index b) {
    const T ma = mag[static_cast<std::size_t>(a)], mb = mag[static_cast<std::size_t>(b)];
    return ma > mb || (ma == mb && a < b);
  };
  std::nth_element(order.begin(), order.begin() + k, order.end(), better);
  for (auto it = order.begin() + k; it != order.end(); ++it) x.coeffRef(*it / C, *it % C) = T(0);
}

template <class X>
detail::plain_of<X> topk_project(const Eigen::DenseBase<X>& x, Index k) {
  detail::plain_of<X> y = x.derived();
  topk_project_inplace(y, k);
  return y;
}

}  // namespace sora::prox

// Proximal operators over Eigen's Tensor / TensorMap (prox/eigen_tensor.hpp). The oracle is
// brute force, written here from the penalties' definitions: a 1-D grid search per element for
// the elementwise operators, and for a group operator a search along the ray c x_g, c in
// [0, 1] (the prox of a penalty of ||y_g|| or [y_g != 0] lies on that ray: any other
// direction costs as much penalty and more distance). Around it: in place == out of place,
// TensorMap == Tensor, both layouts, every axis, weights, and bad arguments.

#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <functional>
#include <initializer_list>
#include <sora/core/rng.hpp>
#include <sora/prox.hpp>
#include <sora/prox/eigen_tensor.hpp>
#include <string>
#include <vector>

namespace {

using sora::Index;
namespace px = sora::prox;

// argmin over y in [lo, hi] of phi: a 2001-point grid plus the candidates (isolated minima such
// as L0's y = 0 have no neighbourhood a grid could land in), then three rounds of a grid 40
// times finer around the best point.
double argmin_1d(const std::function<double(double)>& phi, double lo, double hi,
                 std::initializer_list<double> candidates) {
  double best_y = lo, best = phi(lo);
  const auto consider = [&](double y) {
    if (y < lo || y > hi) return;
    const double v = phi(y);
    if (v < best) {
      best = v;
      best_y = y;
    }
  };
  const int n = 2000;
  for (int k = 0; k <= n; ++k) consider(lo + (hi - lo) * k / n);
  for (double c : candidates) consider(c);
  double step = (hi - lo) / n;
  for (int round = 0; round < 3; ++round) {
    const double center = best_y;
    for (int k = -80; k <= 80; ++k) consider(center + step * k / 40.0);
    step /= 40.0;
  }
  return best_y;
}

template <class T, int N, int L>
Eigen::Tensor<T, N, L> random_tensor(const std::array<Index, N>& dims, std::uint64_t seed) {
  Eigen::Tensor<T, N, L> t(dims);
  sora::Rng rng(seed, 5);
  for (Index i = 0; i < t.size(); ++i) t.data()[i] = static_cast<T>(rng.normal());
  return t;
}

template <class A, class B>
bool bit_equal(const A& a, const B& b) {
  if (a.size() != b.size()) return false;
  for (Index i = 0; i < a.size(); ++i) {
    if (!(a.data()[i] == b.data()[i]) || std::signbit(a.data()[i]) != std::signbit(b.data()[i]))
      return false;
  }
  return true;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const sora::Error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// ---- elementwise ---------------------------------------------------------------------------

// L1 and L0 prox of a rank-3 tensor (with and without per-element weights) against the 1-D
// oracle, element by element, through the tensor's own (i, j, k) indexing, not its storage.
template <int L>
void check_elementwise_oracle() {
  const double gamma = 0.5, lambda = 0.6;
  auto x = random_tensor<double, 3, L>({3, 4, 5}, 11);
  auto w = random_tensor<double, 3, L>({3, 4, 5}, 12);
  for (Index i = 0; i < w.size(); ++i) w.data()[i] = std::abs(w.data()[i]);
  const auto l1 = px::l1_prox(x, gamma, lambda);
  const auto l1w = px::l1_prox(x, gamma, lambda, w);
  const auto l0 = px::l0_prox(x, gamma, lambda);
  const auto l0w = px::l0_prox(x, gamma, lambda, w);
  Index zeros_l1 = 0, zeros_l0 = 0;
  for (Index i = 0; i < 3; ++i) {
    for (Index j = 0; j < 4; ++j) {
      for (Index k = 0; k < 5; ++k) {
        const double v = x(i, j, k), wk = w(i, j, k);
        const auto dist = [&](double y) { return (y - v) * (y - v) / (2 * gamma); };
        const auto oracle_l1 = [&](double weight) {
          return argmin_1d([&](double y) { return lambda * weight * std::abs(y) + dist(y); }, -6, 6,
                           {0.0, v});
        };
        const auto oracle_l0 = [&](double weight) {
          return argmin_1d([&](double y) { return lambda * weight * (y != 0.0) + dist(y); }, -6, 6,
                           {0.0, v});
        };
        INFO("x(", i, ", ", j, ", ", k, ") = ", v, ", w = ", wk);
        CHECK(std::abs(l1(i, j, k) - oracle_l1(1.0)) <= 1e-6);
        CHECK(std::abs(l1w(i, j, k) - oracle_l1(wk)) <= 1e-6);
        CHECK(l0(i, j, k) == oracle_l0(1.0));
        CHECK(l0w(i, j, k) == oracle_l0(wk));
        zeros_l1 += l1(i, j, k) == 0.0;
        zeros_l0 += l0(i, j, k) == 0.0;
      }
    }
  }
  // Both sides of each cut-off occur (the check above is not only about zeros, nor only x).
  CHECK(zeros_l1 > 5);
  CHECK(zeros_l1 < 55);
  CHECK(zeros_l0 > 5);
  CHECK(zeros_l0 < 55);
}

// Every elementwise operator on a tensor: in place == out of place == the dense operator on
// the same coefficients, bit for bit; a TensorMap over a buffer == the Tensor.
template <class T, int L>
void check_elementwise_forms() {
  const auto x = random_tensor<T, 4, L>({2, 3, 4, 5}, 21);
  auto w = random_tensor<T, 4, L>({2, 3, 4, 5}, 22);
  for (Index i = 0; i < w.size(); ++i) w.data()[i] = std::abs(w.data()[i]);
  using Flat = Eigen::Array<T, Eigen::Dynamic, 1>;
  const Flat xf = px::flat(x);
  const Flat wf = px::flat(w);
  const auto same = [&](const char* what, const auto& in_place_fn, const auto& copy_fn,
                        const auto& dense_fn) {
    INFO(what);
    Eigen::Tensor<T, 4, L> y = x;
    in_place_fn(y);
    const auto z = copy_fn(x);
    Flat d = xf;
    dense_fn(d);
    CHECK(bit_equal(y, z));
    CHECK(bit_equal(y, d));
    std::vector<T> buffer(x.data(), x.data() + x.size());
    Eigen::TensorMap<Eigen::Tensor<T, 4, L>> map(buffer.data(), 2, 3, 4, 5);
    in_place_fn(map);
    CHECK(bit_equal(map, y));
    CHECK_FALSE(bit_equal(y, x));  // the operator changed something
  };
  const T tau = T(0.7), g = T(0.5), l = T(0.6);
  same(
      "soft", [&](auto& t) { px::soft_threshold_inplace(t, tau); },
      [&](const auto& t) { return px::soft_threshold(t, tau); },
      [&](Flat& d) { px::soft_threshold_inplace(d, tau); });
  same(
      "soft weighted", [&](auto& t) { px::soft_threshold_inplace(t, tau, w); },
      [&](const auto& t) { return px::soft_threshold(t, tau, w); },
      [&](Flat& d) { px::soft_threshold_inplace(d, tau, wf); });
  same(
      "hard", [&](auto& t) { px::hard_threshold_inplace(t, tau); },
      [&](const auto& t) { return px::hard_threshold(t, tau); },
      [&](Flat& d) { px::hard_threshold_inplace(d, tau); });
  same(
      "hard weighted", [&](auto& t) { px::hard_threshold_inplace(t, tau, w); },
      [&](const auto& t) { return px::hard_threshold(t, tau, w); },
      [&](Flat& d) { px::hard_threshold_inplace(d, tau, wf); });
  same(
      "l0 weighted", [&](auto& t) { px::l0_prox_inplace(t, g, l, w); },
      [&](const auto& t) { return px::l0_prox(t, g, l, w); },
      [&](Flat& d) { px::l0_prox_inplace(d, g, l, wf); });
  same(
      "elastic net", [&](auto& t) { px::elastic_net_prox_inplace(t, g, l, T(0.3)); },
      [&](const auto& t) { return px::elastic_net_prox(t, g, l, T(0.3)); },
      [&](Flat& d) { px::elastic_net_prox_inplace(d, g, l, T(0.3)); });
  same(
      "nonneg soft", [&](auto& t) { px::nonneg_soft_threshold_inplace(t, tau); },
      [&](const auto& t) { return px::nonneg_soft_threshold(t, tau); },
      [&](Flat& d) { px::nonneg_soft_threshold_inplace(d, tau); });
  same(
      "firm", [&](auto& t) { px::firm_threshold_inplace(t, g, l, T(3)); },
      [&](const auto& t) { return px::firm_threshold(t, g, l, T(3)); },
      [&](Flat& d) { px::firm_threshold_inplace(d, g, l, T(3)); });
  same(
      "box", [&](auto& t) { px::box_project_inplace(t, T(-0.5), T(0.25)); },
      [&](const auto& t) { return px::box_project(t, T(-0.5), T(0.25)); },
      [&](Flat& d) { px::box_project_inplace(d, T(-0.5), T(0.25)); });
}

// ---- groups along an axis ------------------------------------------------------------------

enum class Rule { soft, hard, l0 };

// The brute-force group oracle: for each index g along `axis`, gather the slice through the
// tensor's own indexing, minimise penalty(c x_g) + (1 - c)² ||x_g||² / (2γ) over c in [0, 1].
// soft: penalty γτ w ||y|| (γ = 1); hard at τ: the L0 prox with λ = τ² / 2 (γ = 1), whose cut
// ||x|| > sqrt(2λ) is τ; l0: λ w [y != 0] with the given γ.
template <int L>
Eigen::Tensor<double, 3, L> group_oracle(const Eigen::Tensor<double, 3, L>& x, int axis, Rule rule,
                                         double gamma, double param, const Eigen::VectorXd& w) {
  Eigen::Tensor<double, 3, L> y = x;
  const Index G = x.dimension(axis);
  for (Index g = 0; g < G; ++g) {
    double norm2 = 0;
    for (Index i = 0; i < x.dimension(0); ++i)
      for (Index j = 0; j < x.dimension(1); ++j)
        for (Index k = 0; k < x.dimension(2); ++k)
          if ((axis == 0 ? i : axis == 1 ? j : k) == g) norm2 += x(i, j, k) * x(i, j, k);
    const double norm = std::sqrt(norm2), wg = w.size() > 0 ? w(g) : 1.0;
    const auto dist = [&](double c) { return (1 - c) * (1 - c) * norm2 / (2 * gamma); };
    std::function<double(double)> phi;
    if (rule == Rule::soft) {
      phi = [&](double c) { return param * wg * c * norm + dist(c); };
    } else if (rule == Rule::hard) {
      const double t = param * wg;
      phi = [t, &dist](double c) { return (t * t / 2) * (c != 0.0) + dist(c); };
    } else {
      phi = [&](double c) { return param * wg * (c != 0.0) + dist(c); };
    }
    const double c = argmin_1d(phi, 0.0, 1.0, {0.0, 1.0});
    for (Index i = 0; i < x.dimension(0); ++i)
      for (Index j = 0; j < x.dimension(1); ++j)
        for (Index k = 0; k < x.dimension(2); ++k)
          if ((axis == 0 ? i : axis == 1 ? j : k) == g) y(i, j, k) = c * x(i, j, k);
  }
  return y;
}

template <int L>
void check_groups_along_axes() {
  const auto x = random_tensor<double, 3, L>({3, 4, 5}, 31);
  for (int axis = 0; axis < 3; ++axis) {
    const Index G = x.dimension(axis);
    Eigen::VectorXd w(G);
    for (Index g = 0; g < G; ++g) w(g) = 0.4 + 0.5 * static_cast<double>(g % 3);
    const Eigen::VectorXd none;
    // Thresholds near the slices' norms (~sqrt(n) for n standard normal entries), so some
    // groups go and some stay.
    const double n = static_cast<double>(x.size() / G), root = std::sqrt(n);
    struct Case {
      const char* name;
      Rule rule;
      double gamma, param;
      bool weighted;
    };
    const Case cases[] = {
        {"soft", Rule::soft, 1.0, root, false}, {"soft weighted", Rule::soft, 1.0, root, true},
        {"hard", Rule::hard, 1.0, root, false}, {"hard weighted", Rule::hard, 1.0, root, true},
        {"l0", Rule::l0, 0.5, n, false},  // cut sqrt(2 γ λ) = sqrt(n)
        {"l0 weighted", Rule::l0, 0.5, n, true}};
    for (const Case& c : cases) {
      INFO("axis ", axis, ", ", std::string(c.name), ", layout ", L);
      const auto want = group_oracle<L>(x, axis, c.rule, c.gamma, c.param, c.weighted ? w : none);
      Eigen::Tensor<double, 3, L> got;
      const px::Axis a{axis};
      if (c.rule == Rule::soft) {
        got = c.weighted ? px::group_soft_threshold(x, a, c.param, w)
                         : px::group_soft_threshold(x, a, c.param);
      } else if (c.rule == Rule::hard) {
        got = c.weighted ? px::group_hard_threshold(x, a, c.param, w)
                         : px::group_hard_threshold(x, a, c.param);
      } else {
        got = c.weighted ? px::group_l0_prox(x, a, c.gamma, c.param, w)
                         : px::group_l0_prox(x, a, c.gamma, c.param);
      }
      Index zero = 0, kept = 0;
      for (Index i = 0; i < got.size(); ++i) {
        CHECK(std::abs(got.data()[i] - want.data()[i]) <= 1e-6);
        zero += got.data()[i] == 0.0;
        kept += got.data()[i] == x.data()[i];
      }
      // The case is not degenerate: some groups are dropped and some are not.
      CHECK(zero > 0);
      CHECK(zero < got.size());
      if (c.rule != Rule::soft) CHECK(kept + zero == got.size());
      // In place == out of place, and through a TensorMap of a buffer.
      std::vector<double> buffer(x.data(), x.data() + x.size());
      Eigen::TensorMap<Eigen::Tensor<double, 3, L>> map(buffer.data(), 3, 4, 5);
      if (c.rule == Rule::soft) {
        c.weighted ? px::group_soft_threshold_inplace(map, a, c.param, w)
                   : px::group_soft_threshold_inplace(map, a, c.param);
      } else if (c.rule == Rule::hard) {
        c.weighted ? px::group_hard_threshold_inplace(map, a, c.param, w)
                   : px::group_hard_threshold_inplace(map, a, c.param);
      } else {
        c.weighted ? px::group_l0_prox_inplace(map, a, c.gamma, c.param, w)
                   : px::group_l0_prox_inplace(map, a, c.gamma, c.param);
      }
      CHECK(bit_equal(map, got));
    }
  }
}

}  // namespace

TEST_CASE("tensor prox: L1 and L0 of a rank-3 tensor against the brute-force oracle") {
  check_elementwise_oracle<Eigen::ColMajor>();
  check_elementwise_oracle<Eigen::RowMajor>();
}

TEST_CASE("tensor prox: every elementwise operator, in place == out of place == dense, maps") {
  check_elementwise_forms<float, Eigen::ColMajor>();
  check_elementwise_forms<float, Eigen::RowMajor>();
  check_elementwise_forms<double, Eigen::ColMajor>();
}

TEST_CASE("tensor prox: group soft / hard / L0 along each axis against the brute-force oracle") {
  check_groups_along_axes<Eigen::ColMajor>();
  check_groups_along_axes<Eigen::RowMajor>();
}

TEST_CASE("tensor prox: a rank-2 tensor along axis 0 / 1 equals Groups::rows() / cols()") {
  Eigen::MatrixXf m(6, 7);
  sora::Rng rng(41, 1);
  rng.fill_normal(m, 0.0f, 1.0f);
  Eigen::TensorMap<Eigen::Tensor<float, 2>> t(m.data(), 6, 7);
  const Eigen::Tensor<float, 2> rows = px::group_soft_threshold(t, px::Axis{0}, 2.0f);
  const Eigen::Tensor<float, 2> cols = px::group_hard_threshold(t, px::Axis{1}, 2.4f);
  const Eigen::MatrixXf want_rows = px::group_soft_threshold(m, px::Groups::rows(), 2.0f);
  const Eigen::MatrixXf want_cols = px::group_hard_threshold(m, px::Groups::cols(), 2.4f);
  CHECK(bit_equal(rows, want_rows));
  CHECK(bit_equal(cols, want_cols));
  CHECK_FALSE(bit_equal(rows, m));
  CHECK_FALSE(bit_equal(cols, m));
}

TEST_CASE("tensor prox: zero-size tensors, and exactly-at-threshold groups drop") {
  Eigen::Tensor<float, 3> empty(0, 4, 2);
  px::group_soft_threshold_inplace(empty, px::Axis{1}, 1.0f);
  px::soft_threshold_inplace(empty, 1.0f);
  CHECK(empty.size() == 0);
  // Column 0 has norm exactly 5 (3-4-5) at τ = 5: ties go to 0, as in group.hpp; column 1
  // (norm 10) stays.
  Eigen::Tensor<double, 2> t(2, 2);
  t.setValues({{3.0, -6.0}, {4.0, 8.0}});
  px::group_hard_threshold_inplace(t, px::Axis{1}, 5.0);
  CHECK(t(0, 0) == 0.0);
  CHECK(t(1, 0) == 0.0);
  CHECK(t(0, 1) == -6.0);
  CHECK(t(1, 1) == 8.0);
}

TEST_CASE("tensor prox: bad arguments are errors naming what was wrong, and change nothing") {
  auto x = random_tensor<float, 3, Eigen::ColMajor>({2, 3, 4}, 51);
  const auto before = x;
  const Eigen::Tensor<float, 3> w_wrong(2, 4, 3);
  CHECK(contains(error_of([&] { px::soft_threshold_inplace(x, 0.5f, w_wrong); }),
                 "soft_threshold: weights have dimensions (2, 4, 3) but x has (2, 3, 4)"));
  auto w_negative = random_tensor<float, 3, Eigen::ColMajor>({2, 3, 4}, 52);
  w_negative.setConstant(1.0f);
  w_negative(1, 2, 3) = -1.0f;
  CHECK(contains(error_of([&] { px::hard_threshold_inplace(x, 0.5f, w_negative); }),
                 "weights must be finite and >= 0"));
  CHECK(contains(error_of([&] { px::l1_prox_inplace(x, -1.0f, 0.5f); }), "gamma"));
  CHECK(contains(error_of([&] { px::soft_threshold_inplace(x, NAN); }), "tau"));
  CHECK(contains(error_of([&] { px::group_soft_threshold_inplace(x, px::Axis{3}, 0.5f); }),
                 "group_soft_threshold: axis 3 is out of range for a tensor of rank 3"));
  CHECK(contains(error_of([&] { px::group_hard_threshold_inplace(x, px::Axis{-1}, 0.5f); }),
                 "axis -1 is out of range"));
  const Eigen::VectorXf w_groups = Eigen::VectorXf::Ones(4);  // axis 1 has 3 groups
  CHECK(contains(error_of([&] { px::group_l0_prox_inplace(x, px::Axis{1}, 1.0f, 1.0f, w_groups); }),
                 "there are 3 groups"));
  CHECK(contains(error_of([&] { px::group_hard_threshold_inplace(x, px::Axis{0}, -0.1f); }),
                 "tau must be finite and >= 0"));
  CHECK(bit_equal(x, before));
}

// Group proximal operators (prox/groups.hpp, group.hpp, triplet.hpp) and the group
// regularizers. The oracle is a per-group brute-force search (see group_brute_scale), checked
// itself against a full 2-D search for groups of two; around it the subgradient conditions,
// the Moreau identity against projection onto the L2 ball, degenerate equivalences, every
// group kind and storage path, non-finite values and the argument checks.

#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <sora/core/rng.hpp>
#include <sora/prox.hpp>
#include <vector>

namespace px = sora::prox;

namespace {

using px::Groups;
using sora::Index;

constexpr double kInf = std::numeric_limits<double>::infinity();

using IndexLists = std::vector<std::vector<Index>>;

// The groups of a (R, C) x as lists of row-major flat indices, from their definitions.
IndexLists rows_of(Index R, Index C) {
  IndexLists g(static_cast<std::size_t>(R));
  for (Index i = 0; i < R; ++i)
    for (Index j = 0; j < C; ++j) g[static_cast<std::size_t>(i)].push_back(i * C + j);
  return g;
}
IndexLists cols_of(Index R, Index C) {
  IndexLists g(static_cast<std::size_t>(C));
  for (Index j = 0; j < C; ++j)
    for (Index i = 0; i < R; ++i) g[static_cast<std::size_t>(j)].push_back(i * C + j);
  return g;
}
IndexLists blocks_of(Index n, Index b) {
  IndexLists g(static_cast<std::size_t>(n / b));
  for (Index k = 0; k < n; ++k) g[static_cast<std::size_t>(k / b)].push_back(k);
  return g;
}

// Per-group brute force. For a penalty that depends on y_g only through ||y_g|| (group L2)
// or through [y_g != 0] (group L0), the minimizer of pen(y_g) + ||y_g - x_g||²/(2γ) lies on
// the ray {t x_g : t >= 0}: write y = a x/||x|| + y⊥ with y⊥ ⟂ x; then
// ||y - x||² = (a - ||x||)² + ||y⊥||² and ||y|| = sqrt(a² + ||y⊥||²) >= |a|, so dropping y⊥
// and replacing a by |a| lowers (never raises) both terms, and keeps y != 0 unless a = 0 and
// y⊥ = 0 -- for L0, the y != 0 branch is minimized by y = x itself. So a 1-D search over the
// scale t (t = 0 included as a candidate) is exact; "pen" takes ||y_g||.
double group_brute_scale(const std::function<double(double)>& pen, double norm, double gamma) {
  const auto phi = [&](double t) {
    return pen(t * norm) + (t - 1.0) * (t - 1.0) * norm * norm / (2.0 * gamma);
  };
  double best_t = 0.0, best = phi(0.0);
  const auto consider = [&](double t) {
    if (t < 0.0) return;
    if (const double v = phi(t); v < best) {
      best = v;
      best_t = t;
    }
  };
  consider(1.0);
  const int n = 3000;
  for (int k = 0; k <= n; ++k) consider(1.5 * k / n);
  double step = 1.5 / n;
  for (int round = 0; round < 4; ++round) {
    const double c = best_t;
    for (int k = -100; k <= 100; ++k) consider(c + step * k / 50.0);
    step /= 50.0;
  }
  return best_t;
}

enum class Rule { Soft, Hard, L0 };

// Reference: each group scaled by its brute-force factor. Soft: pen = τ w ||y||; L0:
// pen = λ w [y != 0] at step γ; Hard at τ w: L0 with λ w = (τ w)²/(2γ), γ = 1.
sora::Matrix<double> group_reference(const sora::Matrix<double>& x, const IndexLists& groups,
                                     Rule rule, double tau_or_gamma, double lambda,
                                     const std::vector<double>& w) {
  sora::Matrix<double> y = x;
  const Index C = x.cols();
  for (std::size_t g = 0; g < groups.size(); ++g) {
    double n2 = 0.0;
    for (Index k : groups[g]) n2 += x(k / C, k % C) * x(k / C, k % C);
    const double norm = std::sqrt(n2);
    if (norm == 0.0) continue;
    double t = 1.0;
    if (rule == Rule::Soft) {
      const double tau = tau_or_gamma * w[g];
      t = group_brute_scale([&](double r) { return tau * r; }, norm, 1.0);
    } else if (rule == Rule::Hard) {
      const double lam = (tau_or_gamma * w[g]) * (tau_or_gamma * w[g]) / 2.0;
      t = group_brute_scale([&](double r) { return r != 0.0 ? lam : 0.0; }, norm, 1.0);
    } else {
      const double lam = lambda * w[g];
      t = group_brute_scale([&](double r) { return r != 0.0 ? lam : 0.0; }, norm, tau_or_gamma);
    }
    for (Index k : groups[g]) y(k / C, k % C) *= t;
  }
  return y;
}

// The brute force pins a minimizer down to ~1e-8 (the objective is flat to second order
// there), so results are compared with an absolute tolerance above that.
bool near(const sora::Matrix<double>& a, const sora::Matrix<double>& b) {
  return (a - b).cwiseAbs().maxCoeff() <= 1e-7;
}

std::vector<double> uniform_weights(std::size_t n) {
  return std::vector<double>(n, 1.0);
}

}  // namespace

TEST_CASE("the ray argument behind the oracle: a 2-D search finds the same group prox") {
  // Groups of two (blocks of 2): search the whole plane around x, not just the ray.
  sora::Rng rng(1);
  sora::RowVector<double> x(12);
  rng.fill_uniform(x, -2.0, 2.0);
  const double tau = 0.9, gamma = 0.8, lambda = 0.6;
  const auto ys = px::group_soft_threshold(x, Groups::blocks(2), tau);
  const auto yl = px::group_l0_prox(x, Groups::blocks(2), gamma, lambda);
  for (Index g = 0; g < 6; ++g) {
    const double a = x(2 * g), b = x(2 * g + 1);
    const auto search = [&](const std::function<double(double, double)>& phi) {
      double bu = 0.0, bv = 0.0, best = phi(0.0, 0.0);
      if (phi(a, b) < best) bu = a, bv = b, best = phi(a, b);
      double step = 0.01;
      double cu = 0.0, cv = 0.0;
      for (int round = 0; round < 4; ++round) {
        cu = round == 0 ? 0.0 : bu;
        cv = round == 0 ? 0.0 : bv;
        const int n = round == 0 ? 300 : 40;
        for (int i = -n; i <= n; ++i) {
          for (int j = -n; j <= n; ++j) {
            const double u = cu + i * step, v = cv + j * step;
            if (const double p = phi(u, v); p < best) bu = u, bv = v, best = p;
          }
        }
        step /= 20.0;
      }
      return std::pair{bu, bv};
    };
    const auto [su, sv] = search([&](double u, double v) {
      return tau * std::hypot(u, v) + ((u - a) * (u - a) + (v - b) * (v - b)) / 2.0;
    });
    CHECK(ys(2 * g) == doctest::Approx(su).epsilon(1e-4));
    CHECK(ys(2 * g + 1) == doctest::Approx(sv).epsilon(1e-4));
    const auto [lu, lv] = search([&](double u, double v) {
      return (u != 0.0 || v != 0.0 ? lambda : 0.0) +
             ((u - a) * (u - a) + (v - b) * (v - b)) / (2.0 * gamma);
    });
    CHECK(yl(2 * g) == doctest::Approx(lu).epsilon(1e-4));
    CHECK(yl(2 * g + 1) == doctest::Approx(lv).epsilon(1e-4));
  }
}

TEST_CASE("group soft / hard / L0 equal the per-group brute force for every group kind") {
  sora::Rng rng(2);
  const Index R = 6, C = 10;
  sora::Matrix<double> x(R, C);
  rng.fill_uniform(x, -1.0, 1.0);
  x.row(4).setZero();  // a zero group for the row kind
  // An irregular explicit partition of the 60 indices into 7 groups.
  IndexLists part(7);
  for (Index k = 0; k < R * C; ++k)
    part[static_cast<std::size_t>((k * 5 + k / 7) % 7)].push_back(k);
  struct Kind {
    const char* name;
    Groups groups;
    IndexLists lists;
  };
  const std::vector<Kind> kinds{{"rows", Groups::rows(), rows_of(R, C)},
                                {"cols", Groups::cols(), cols_of(R, C)},
                                {"blocks", Groups::blocks(4), blocks_of(R * C, 4)},
                                {"partition", Groups::partition(part, R * C), part}};
  for (const auto& kind : kinds) {
    INFO("groups: ", std::string(kind.name));
    const auto w1 = uniform_weights(kind.lists.size());
    std::vector<double> w(kind.lists.size());
    for (auto& v : w) v = rng.uniform(0.0, 2.0);
    const Eigen::VectorXd wv = Eigen::Map<const Eigen::VectorXd>(w.data(), Index(w.size()));
    for (double tau : {0.0, 0.4, 1.3}) {
      INFO("tau = ", tau);
      CHECK(near(px::group_soft_threshold(x, kind.groups, tau),
                 group_reference(x, kind.lists, Rule::Soft, tau, 0, w1)));
      CHECK(near(px::group_soft_threshold(x, kind.groups, tau, wv),
                 group_reference(x, kind.lists, Rule::Soft, tau, 0, w)));
      CHECK(px::group_hard_threshold(x, kind.groups, tau) ==
            group_reference(x, kind.lists, Rule::Hard, tau, 0, w1));
      CHECK(px::group_hard_threshold(x, kind.groups, tau, wv) ==
            group_reference(x, kind.lists, Rule::Hard, tau, 0, w));
    }
    const double gamma = 0.7, lambda = 0.9;
    CHECK(px::group_l0_prox(x, kind.groups, gamma, lambda) ==
          group_reference(x, kind.lists, Rule::L0, gamma, lambda, w1));
    CHECK(px::group_l0_prox(x, kind.groups, gamma, lambda, wv) ==
          group_reference(x, kind.lists, Rule::L0, gamma, lambda, w));
    // group_l21_prox is group soft at γλ.
    sora::Matrix<double> y = x;
    px::group_l21_prox_inplace(y, kind.groups, gamma, lambda);
    CHECK(near(y, group_reference(x, kind.lists, Rule::Soft, gamma * lambda, 0, w1)));
  }
}

TEST_CASE(
    "group soft: subgradient optimality and the Moreau identity with the L2-ball projection") {
  sora::Rng rng(3);
  sora::Matrix<double> x(20, 8);
  rng.fill_uniform(x, -1.0, 1.0);
  const double gamma = 0.6, lambda = 2.0, tau = gamma * lambda;
  sora::Matrix<double> y = x;
  px::group_l21_prox_inplace(y, Groups::rows(), gamma, lambda);
  Index zeroed = 0;
  for (Index i = 0; i < x.rows(); ++i) {
    const Eigen::RowVectorXd d = (x.row(i) - y.row(i)) / gamma;  // must be in λ ∂||y_i||
    if (y.row(i).norm() > 0) {
      CHECK((d - lambda * y.row(i) / y.row(i).norm()).norm() <= 1e-12);
    } else {
      ++zeroed;
      CHECK(d.norm() <= lambda + 1e-12);
    }
    // (τ||·||_2)* is the indicator of the L2 ball of radius τ; its prox is the projection.
    const double n = x.row(i).norm();
    const Eigen::RowVectorXd proj = x.row(i) * std::min(1.0, tau / n);
    CHECK((y.row(i) + proj - x.row(i)).norm() <= 1e-14);
  }
  CHECK(zeroed > 0);  // the data make both branches occur
  CHECK(zeroed < x.rows());
}

TEST_CASE_TEMPLATE("degenerate equivalences: size-1 groups == elementwise, uniform weights", T,
                   float, double) {
  sora::Rng rng(4);
  sora::Matrix<T> x(5, 7);
  rng.fill_uniform(x, -1.0, 1.0);
  const T tau = T(0.45), gamma = T(0.5), lambda = T(0.3);
  // |x_i| is the norm of a one-element group, so group soft/hard/L0 reduce to soft/hard/L0.
  CHECK(px::group_soft_threshold(x, Groups::blocks(1), tau)
            .isApprox(px::soft_threshold(x, tau), T(1e-6)));
  CHECK(px::group_hard_threshold(x, Groups::blocks(1), tau) == px::hard_threshold(x, tau));
  CHECK(px::group_l0_prox(x, Groups::blocks(1), gamma, lambda) == px::l0_prox(x, gamma, lambda));
  const sora::RowVector<T> row = x.row(0);
  CHECK(px::group_soft_threshold(row, Groups::cols(), tau)
            .isApprox(px::soft_threshold(row, tau), T(1e-6)));
  // Uniform weights == unweighted; weights c == threshold c τ.
  const Eigen::Matrix<T, Eigen::Dynamic, 1> ones = Eigen::Matrix<T, Eigen::Dynamic, 1>::Ones(5);
  CHECK(px::group_soft_threshold(x, Groups::rows(), tau, ones) ==
        px::group_soft_threshold(x, Groups::rows(), tau));
  CHECK(px::group_hard_threshold(x, Groups::rows(), tau, ones) ==
        px::group_hard_threshold(x, Groups::rows(), tau));
  CHECK(px::group_l0_prox(x, Groups::rows(), gamma, lambda, ones) ==
        px::group_l0_prox(x, Groups::rows(), gamma, lambda));
  CHECK(px::group_soft_threshold(x, Groups::rows(), tau, (ones * T(3)).eval())
            .isApprox(px::group_soft_threshold(x, Groups::rows(), T(3) * tau), T(1e-6)));
}

TEST_CASE_TEMPLATE("every storage path agrees with the reference", T, float, double) {
  sora::Rng rng(5);
  const Index R = 9, C = 12;
  sora::Matrix<T> x(R, C);  // row-major
  rng.fill_uniform(x, -1.0, 1.0);
  const T tau = T(0.9);
  const sora::Matrix<double> xd = x.template cast<double>();
  const auto ref_rows = group_reference(xd, rows_of(R, C), Rule::Soft, tau, 0, uniform_weights(R));
  const auto ref_cols = group_reference(xd, cols_of(R, C), Rule::Soft, tau, 0, uniform_weights(C));
  const auto ref_blk =
      group_reference(xd, blocks_of(R * C, 6), Rule::Soft, tau, 0, uniform_weights(R * C / 6));
  const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> xc = x;  // column-major copy
  const auto close = [](const auto& a, const sora::Matrix<double>& b) {
    return (a.template cast<double>() - b).cwiseAbs().maxCoeff() <= 1e-5;
  };
  {  // rows of row-major (one pass), rows of column-major (two passes)
    sora::Matrix<T> a = x;
    px::group_soft_threshold_inplace(a, Groups::rows(), tau);
    CHECK(close(a, ref_rows));
    auto b = xc;
    px::group_soft_threshold_inplace(b, Groups::rows(), tau);
    CHECK(close(b, ref_rows));
  }
  {  // columns of row-major (two passes), columns of column-major (one pass)
    sora::Matrix<T> a = x;
    px::group_soft_threshold_inplace(a, Groups::cols(), tau);
    CHECK(close(a, ref_cols));
    auto b = xc;
    px::group_soft_threshold_inplace(b, Groups::cols(), tau);
    CHECK(close(b, ref_cols));
  }
  {  // blocks: contiguous row-major (flat), column-major storage and a strided block (generic)
    sora::Matrix<T> a = x;
    px::group_soft_threshold_inplace(a, Groups::blocks(6), tau);
    CHECK(close(a, ref_blk));
    auto b = xc;  // blocks follow row-major (row, col) order whatever the storage
    px::group_soft_threshold_inplace(b, Groups::blocks(6), tau);
    CHECK(close(b, ref_blk));
    sora::Matrix<T> big = sora::Matrix<T>::Constant(R + 2, C + 3, T(7));
    big.block(1, 2, R, C) = x;
    px::group_soft_threshold_inplace(big.block(1, 2, R, C), Groups::blocks(6), tau);
    CHECK(close(big.block(1, 2, R, C), ref_blk));
    CHECK(big.row(0).isConstant(T(7)));
    CHECK(big.col(C + 2).isConstant(T(7)));
  }
  {  // Array, Map, row() rvalue
    sora::Array<T> a = x.array();
    px::group_soft_threshold_inplace(a, Groups::rows(), tau);
    CHECK(close(a.matrix(), ref_rows));
    std::vector<T> buf(x.data(), x.data() + x.size());
    Eigen::Map<sora::Matrix<T>> m(buf.data(), R, C);
    px::group_soft_threshold_inplace(m, Groups::cols(), tau);
    CHECK(close(m, ref_cols));
    sora::Matrix<T> r = x;
    px::group_soft_threshold_inplace(r.row(3), Groups::blocks(4), T(0.5));
    const auto expect =
        group_reference(xd.row(3), blocks_of(C, 4), Rule::Soft, 0.5, 0, uniform_weights(3));
    CHECK(close(r.row(3), expect));
    CHECK(r.row(2) == x.row(2));
  }
  {  // in place == out of place for every group operator
    for (const Groups& g : {Groups::rows(), Groups::cols(), Groups::blocks(3)}) {
      sora::Matrix<T> a = x, b = x, c = x;
      px::group_soft_threshold_inplace(a, g, tau);
      px::group_hard_threshold_inplace(b, g, tau);
      px::group_l0_prox_inplace(c, g, T(0.5), T(0.4));
      CHECK(a == px::group_soft_threshold(x, g, tau));
      CHECK(b == px::group_hard_threshold(x, g, tau));
      CHECK(c == px::group_l0_prox(x, g, T(0.5), T(0.4)));
    }
  }
}

TEST_CASE_TEMPLATE("zero groups stay zero without NaN; NaN and inf inside a group", T, float,
                   double) {
  sora::Matrix<T> x = sora::Matrix<T>::Zero(3, 4);
  x.row(1) << T(3), T(-4), T(0), T(0);  // norm 5
  for (T tau : {T(0), T(1)}) {
    for (const Groups& g : {Groups::rows(), Groups::cols(), Groups::blocks(2)}) {
      const auto s = px::group_soft_threshold(x, g, tau);
      const auto h = px::group_hard_threshold(x, g, tau);
      CHECK(s.allFinite());
      CHECK(h.allFinite());
      CHECK(s.row(0).isZero(0));
      CHECK(s.row(2).isZero(0));
    }
  }
  const auto s = px::group_soft_threshold(x, Groups::rows(), T(1));
  CHECK(s(1, 0) == doctest::Approx(T(3) * T(0.8)));  // 1 - 1/5
  CHECK(s(1, 1) == doctest::Approx(T(-4) * T(0.8)));
  // Boundary: ||x_g|| == τ gives exactly 0 (soft) and drops the group (hard: strict >).
  CHECK(px::group_soft_threshold(x, Groups::rows(), T(5)).isZero(0));
  CHECK(px::group_hard_threshold(x, Groups::rows(), T(5)).isZero(0));
  CHECK(px::group_hard_threshold(x, Groups::rows(), T(4.99)).row(1) == x.row(1));

  const T nan = std::numeric_limits<T>::quiet_NaN();
  const T inf = std::numeric_limits<T>::infinity();
  sora::Matrix<T> y = sora::Matrix<T>::Constant(3, 4, T(0.01));
  y(0, 1) = nan;
  y(2, 2) = inf;
  const auto ys = px::group_soft_threshold(y, Groups::rows(), T(1));
  CHECK(ys.row(0).array().isNaN().all());  // NaN norm: the whole group becomes NaN
  CHECK(ys.row(1).isZero(0));
  CHECK(ys.row(2) == y.row(2));  // infinite norm: factor 1 - τ/inf = 1
  const auto yh = px::group_hard_threshold(y, Groups::rows(), T(1));
  CHECK(std::isnan(yh(0, 1)));  // kept: only provably small groups are zeroed
  CHECK(yh(0, 0) == T(0.01));
  CHECK(yh(2, 2) == inf);
}

TEST_CASE_TEMPLATE(
    "small blocks (the fixed-size branch-free path) == the same groups as a partition", T, float,
    double) {
  // Blocks of 4, 8, 16 and 32 take a fixed-size path with selects instead of branches; an
  // explicit partition of the same indices takes the generic path. They must agree: the same
  // zero pattern (+0, never -0), the same NaNs and infinities, and values equal up to the
  // rounding of a norm summed in another order. The cases include zero groups, NaN and inf,
  // a norm exactly at the threshold and a tiny all-negative group.
  sora::Rng rng(31);
  for (Index b : {4, 8, 16, 32}) {
    INFO("block size ", b);
    const Index n = 8 * b;
    sora::Matrix<T> x(1, n);
    rng.fill_uniform(x, -1.0, 1.0);
    x.block(0, 0, 1, b).setZero();                     // group 0: zero
    x(0, b) = std::numeric_limits<T>::quiet_NaN();     // group 1: NaN
    x(0, 2 * b) = std::numeric_limits<T>::infinity();  // group 2: inf
    x.block(0, 3 * b, 1, b).setZero();                 // group 3: norm exactly 0.5
    x(0, 3 * b + 1) = T(-0.5);
    x.block(0, 4 * b, 1, b).setConstant(T(-1e-3));  // group 4: tiny, negative
    const auto groups = Groups::partition(blocks_of(n, b), n);
    for (T tau : {T(0), T(0.5), T(1.7)}) {
      INFO("tau = ", tau);
      auto same = [](const sora::Matrix<T>& a, const sora::Matrix<T>& c) {
        for (Index j = 0; j < a.cols(); ++j) {
          const T u = a(0, j), v = c(0, j);
          if (std::isnan(u) || std::isnan(v)) {
            if (std::isnan(u) != std::isnan(v)) return false;
          } else if (u == T(0) || v == T(0) || std::isinf(u) || std::isinf(v)) {
            if (u != v || std::signbit(u) != std::signbit(v)) return false;
          } else if (std::abs(u - v) > 8 * std::numeric_limits<T>::epsilon() * std::abs(v)) {
            return false;
          }
        }
        return true;
      };
      CHECK(same(px::group_soft_threshold(x, Groups::blocks(b), tau),
                 px::group_soft_threshold(x, groups, tau)));
      CHECK(same(px::group_hard_threshold(x, Groups::blocks(b), tau),
                 px::group_hard_threshold(x, groups, tau)));
      if (tau > 0)
        CHECK(same(px::group_l0_prox(x, Groups::blocks(b), tau, T(0.3)),
                   px::group_l0_prox(x, groups, tau, T(0.3))));
    }
  }
}

TEST_CASE_TEMPLATE(
    "group hard / L0 over many small blocks (chunks of 64 with a tail): kept blocks untouched, "
    "dropped ones +0, the same as a partition",
    T, float, double) {
  // The fixed-size Keep path decides 64 blocks at a time (a bit mask) and then writes only the
  // dropped blocks: 64 * 2 + 37 blocks cross two chunk boundaries and end in a partial chunk.
  // Block magnitudes vary so that about half are dropped in every chunk, and with weights the
  // threshold differs per block.
  sora::Rng rng(77);
  for (Index b : {4, 16, 32}) {
    INFO("block size ", b);
    const Index G = 64 * 2 + 37, n = G * b;
    sora::Matrix<T> x(1, n);
    rng.fill_uniform(x, -1.0, 1.0);
    sora::RowVector<T> w(G);
    rng.fill_uniform(w, 0.5, 1.5);
    for (Index g = 0; g < G; ++g) x.middleCols(g * b, b) *= T(0.2) + T(g % 7) / T(3);
    x(0, 70 * b + 1) = std::numeric_limits<T>::quiet_NaN();  // a NaN block in the second chunk
    const auto partition = Groups::partition(blocks_of(n, b), n);
    const T tau = static_cast<T>(std::sqrt(static_cast<double>(b) / 3.0));
    sora::Matrix<T> unweighted = x, weighted = x, l0 = x;
    px::group_hard_threshold_inplace(unweighted, Groups::blocks(b), tau);
    px::group_hard_threshold_inplace(weighted, Groups::blocks(b), tau, w);
    px::group_l0_prox_inplace(l0, Groups::blocks(b), tau, T(0.4), w);
    const sora::Matrix<T> want_unweighted = px::group_hard_threshold(x, partition, tau);
    const sora::Matrix<T> want_weighted = px::group_hard_threshold(x, partition, tau, w);
    const sora::Matrix<T> want_l0 = px::group_l0_prox(x, partition, tau, T(0.4), w);
    Index dropped = 0, kept = 0;
    for (Index j = 0; j < n; ++j) {
      INFO("entry ", j, " (block ", j / b, ")");
      for (const auto& [got, want] :
           {std::pair{&unweighted, &want_unweighted}, std::pair{&weighted, &want_weighted},
            std::pair{&l0, &want_l0}}) {
        const T u = (*got)(0, j), v = (*want)(0, j);
        if (std::isnan(v)) {
          CHECK(std::isnan(u));
        } else {
          // Same bits: a kept entry is x itself, a dropped one +0 (never -0).
          CHECK(u == v);
          CHECK(std::signbit(u) == std::signbit(v));
        }
      }
      if (j % b == 0) (want_unweighted(0, j) == T(0) ? dropped : kept) += 1;
    }
    CHECK(dropped > G / 5);  // both outcomes occur often enough to exercise the mask
    CHECK(kept > G / 5);
    CHECK(std::isnan(unweighted(0, 70 * b + 1)));  // a NaN norm keeps its block
  }
  // Norms within a hair of the threshold (the squared-norm shortcut must defer to the square
  // root there), and thresholds whose square is subnormal or overflows.
  const T tiny = std::sqrt(std::numeric_limits<T>::min()) / T(64);  // tiny^2 is subnormal
  const T huge = std::sqrt(std::numeric_limits<T>::max()) * T(4);   // huge^2 overflows
  for (T tau : {T(1), tiny, huge}) {
    INFO("tau = ", tau);
    const Index b = 16, G = 64 + 9, n = G * b;
    sora::Matrix<T> x = sora::Matrix<T>::Zero(1, n);
    for (Index g = 0; g < G; ++g) {
      // One entry per block: its norm is exactly |entry|, spread over tau (1 +- a few ulp) and
      // a few far-off values.
      const int ulps = static_cast<int>(g % 9) - 4;
      T v = tau;
      for (int u = 0; u < std::abs(ulps); ++u)
        v = std::nextafter(v, ulps < 0 ? T(0) : std::numeric_limits<T>::infinity());
      if (g % 11 == 10) v = tau * T(3);
      if (g % 13 == 12) v = tau / T(1000);
      x(0, g * b + g % b) = g % 2 == 0 ? v : -v;
    }
    const auto partition = Groups::partition(blocks_of(n, b), n);
    sora::Matrix<T> got = x;
    px::group_hard_threshold_inplace(got, Groups::blocks(b), tau);
    const sora::Matrix<T> want = px::group_hard_threshold(x, partition, tau);
    Index kept = 0;
    for (Index j = 0; j < n; ++j) {
      CHECK(got(0, j) == want(0, j));
      CHECK(std::signbit(got(0, j)) == std::signbit(want(0, j)));
      kept += want(0, j) != T(0);
    }
    CHECK(kept > 0);
    CHECK(kept < G);
  }
}

TEST_CASE_TEMPLATE("rank triplets == an explicit partition of the concatenated (A, B, g)", T, float,
                   double) {
  sora::Rng rng(6);
  const Index Rk = 5, In = 7, Out = 4;
  sora::Matrix<T> A(Rk, In), B(Out, Rk);
  sora::RowVector<T> g(Rk);
  rng.fill_uniform(A, -1.0, 1.0);
  rng.fill_uniform(B, -1.0, 1.0);
  rng.fill_uniform(g, -1.0, 1.0);
  A.row(2) *= T(0.05);  // a weak rank that the thresholds below kill
  B.col(2) *= T(0.05);
  g(2) = T(0.01);
  // Concatenate [A (row-major flat), B (row-major flat), g] into one row of N; rank i owns
  // A's row i, B's column i and g_i.
  const Index N = Rk * In + Out * Rk + Rk;
  sora::RowVector<T> v(N);
  v << Eigen::Map<const sora::RowVector<T>>(A.data(), Rk * In),
      Eigen::Map<const sora::RowVector<T>>(B.data(), Out * Rk), g;
  IndexLists part(static_cast<std::size_t>(Rk));
  for (Index i = 0; i < Rk; ++i) {
    auto& p = part[static_cast<std::size_t>(i)];
    for (Index j = 0; j < In; ++j) p.push_back(i * In + j);
    for (Index o = 0; o < Out; ++o) p.push_back(Rk * In + o * Rk + i);
    p.push_back(Rk * In + Out * Rk + i);
  }
  const Groups groups = Groups::partition(part, N);
  const auto split = [&](const sora::RowVector<T>& flat, sora::Matrix<T>& a, sora::Matrix<T>& b,
                         sora::RowVector<T>& gg) {
    a = Eigen::Map<const sora::Matrix<T>>(flat.data(), Rk, In);
    b = Eigen::Map<const sora::Matrix<T>>(flat.data() + Rk * In, Out, Rk);
    gg = flat.tail(Rk);
  };
  Eigen::Matrix<T, Eigen::Dynamic, 1> w(Rk);
  w << T(1), T(0.5), T(2), T(0), T(1.5);
  sora::Matrix<T> ea, eb;
  sora::RowVector<T> eg;
  const T tau = T(0.8), gamma = T(0.5), lambda = T(0.7);
  {
    sora::Matrix<T> a = A, b = B;
    sora::RowVector<T> gg = g;
    px::group_soft_threshold_triplets_inplace(a, b, gg, tau);
    split(px::group_soft_threshold(v, groups, tau), ea, eb, eg);
    CHECK(a.isApprox(ea, T(1e-6)));
    CHECK(b.isApprox(eb, T(1e-6)));
    CHECK(gg.isApprox(eg, T(1e-6)));
    CHECK(a.row(2).isZero(0));  // the weak rank died
    CHECK(gg(2) == T(0));
    CHECK(px::group_l0_triplets(a, b, gg) == 4.0);
  }
  {
    sora::Matrix<T> a = A, b = B;
    sora::RowVector<T> gg = g;
    px::group_soft_threshold_triplets_inplace(a, b, gg, tau, w);
    split(px::group_soft_threshold(v, groups, tau, w), ea, eb, eg);
    CHECK(a.isApprox(ea, T(1e-6)));
    CHECK(b.isApprox(eb, T(1e-6)));
    CHECK(gg.isApprox(eg, T(1e-6)));
  }
  {
    sora::Matrix<T> a = A, b = B;
    sora::RowVector<T> gg = g;
    px::group_hard_threshold_triplets_inplace(a, b, gg, tau);
    split(px::group_hard_threshold(v, groups, tau), ea, eb, eg);
    CHECK((a == ea && b == eb && gg == eg));
    a = A, b = B, gg = g;
    px::group_hard_threshold_triplets_inplace(a, b, gg, tau, w);
    split(px::group_hard_threshold(v, groups, tau, w), ea, eb, eg);
    CHECK((a == ea && b == eb && gg == eg));
    a = A, b = B, gg = g;
    px::group_l0_prox_triplets_inplace(a, b, gg, gamma, lambda);
    split(px::group_l0_prox(v, groups, gamma, lambda), ea, eb, eg);
    CHECK((a == ea && b == eb && gg == eg));
    a = A, b = B, gg = g;
    px::group_l0_prox_triplets_inplace(a, b, gg, gamma, lambda, w);
    split(px::group_l0_prox(v, groups, gamma, lambda, w), ea, eb, eg);
    CHECK((a == ea && b == eb && gg == eg));
  }
  {  // other expression kinds: column-major B, a column-vector gate, A as a block
    sora::Matrix<T> abig = sora::Matrix<T>::Zero(Rk + 1, In);
    abig.topRows(Rk) = A;
    Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> b = B;
    Eigen::Matrix<T, Eigen::Dynamic, 1> gg = g.transpose();
    px::group_soft_threshold_triplets_inplace(abig.topRows(Rk), b, gg, tau);
    split(px::group_soft_threshold(v, groups, tau), ea, eb, eg);
    CHECK(abig.topRows(Rk).isApprox(ea, T(1e-6)));
    CHECK(b.isApprox(eb, T(1e-6)));
    CHECK(gg.transpose().isApprox(eg, T(1e-6)));
  }
  // Values: Σ w_i n_i over triplets == group_l21 over the partition.
  CHECK(px::group_l21_triplets(A, B, g) ==
        doctest::Approx(px::group_l21(v, groups)).epsilon(1e-12));
  CHECK(px::group_l21_triplets(A, B, g, w) ==
        doctest::Approx(px::group_l21(v, groups, w)).epsilon(1e-12));
  CHECK(px::group_l0_triplets(A, B, g, w) ==
        doctest::Approx(5.0).epsilon(1e-12));  // 1 + .5 + 2 + 0 + 1.5
}

TEST_CASE("group regularizer values") {
  sora::Matrix<double> x(2, 3);
  x << 3.0, 4.0, 0.0, 0.0, 0.0, 0.0;
  CHECK(px::group_l21(x, Groups::rows()) == doctest::Approx(5.0).epsilon(1e-12));
  CHECK(px::group_l0(x, Groups::rows()) == 1.0);
  CHECK(px::group_l21(x, Groups::cols()) == doctest::Approx(7.0).epsilon(1e-12));
  CHECK(px::group_l0(x, Groups::cols()) == 2.0);
  const Eigen::Vector3d w(2.0, 0.5, 1.0);
  CHECK(px::group_l21(x, Groups::cols(), w) == doctest::Approx(8.0).epsilon(1e-12));
  CHECK(px::group_l0(x, Groups::cols(), w) == doctest::Approx(2.5).epsilon(1e-12));
  CHECK(px::group_l21(x, Groups::blocks(2)) == doctest::Approx(5.0).epsilon(1e-12));
  CHECK(px::group_l0(x, Groups::blocks(2)) == 1.0);
  CHECK(px::group_l21(x, Groups::partition({{0, 4}, {1, 2, 3, 5}}, 6)) ==
        doctest::Approx(3.0 + 4.0).epsilon(1e-12));
}

TEST_CASE("bad groups and arguments throw sora::Error naming the problem") {
  CHECK_THROWS_WITH_AS(Groups::partition({{0, 1}, {1, 2}}, 3),
                       doctest::Contains("index 1 appears twice (in group 0 and in group 1)"),
                       sora::Error);
  CHECK_THROWS_WITH_AS(Groups::partition({{0, 1}, {3}}, 3),
                       doctest::Contains("index 3 in group 1 is out of range [0, 3)"), sora::Error);
  CHECK_THROWS_WITH_AS(Groups::partition({{0, -1}}, 3),
                       doctest::Contains("index -1 in group 0 is out of range"), sora::Error);
  CHECK_THROWS_WITH_AS(Groups::partition({{0}, {2}}, 3),
                       doctest::Contains("index 1 is in no group"), sora::Error);
  CHECK_THROWS_WITH_AS(Groups::blocks(0), doctest::Contains("block size must be > 0, got 0"),
                       sora::Error);

  sora::Matrix<float> x = sora::Matrix<float>::Ones(3, 4);
  CHECK_THROWS_WITH_AS(px::group_soft_threshold_inplace(x, Groups::blocks(5), 0.1f),
                       doctest::Contains("group_soft_threshold: x of shape (3, 4) has 12 "
                                         "elements, not a multiple of the block size 5"),
                       sora::Error);
  CHECK_THROWS_WITH_AS(px::group_hard_threshold(x, Groups::partition({{0, 1, 2}}, 3), 0.1f),
                       doctest::Contains("the partition covers 3 indices but x of shape (3, 4)"),
                       sora::Error);
  CHECK_THROWS_WITH_AS(px::group_soft_threshold_inplace(x, Groups::rows(), -1.0f),
                       doctest::Contains("group_soft_threshold: tau must be finite and >= 0"),
                       sora::Error);
  CHECK_THROWS_WITH_AS(px::group_l0_prox_inplace(x, Groups::rows(), 0.0f, 1.0f),
                       doctest::Contains("group_l0_prox: gamma"), sora::Error);
  const Eigen::VectorXf w4 = Eigen::VectorXf::Ones(4);
  CHECK_THROWS_WITH_AS(px::group_soft_threshold_inplace(x, Groups::rows(), 0.1f, w4),
                       doctest::Contains("group weights have shape (4, 1) but there are 3 groups"),
                       sora::Error);
  const sora::Matrix<float> w_mat = sora::Matrix<float>::Ones(3, 3);
  CHECK_THROWS_WITH_AS(px::group_hard_threshold(x, Groups::rows(), 0.1f, w_mat),
                       doctest::Contains("group weights have shape (3, 3)"), sora::Error);
  Eigen::VectorXf w_neg = Eigen::VectorXf::Ones(3);
  w_neg(1) = -2.0f;
  CHECK_THROWS_WITH_AS(px::group_l0_prox(x, Groups::rows(), 1.0f, 1.0f, w_neg),
                       doctest::Contains("weights must be finite and >= 0, got -2"), sora::Error);

  sora::Matrix<float> A = sora::Matrix<float>::Ones(3, 5), B = sora::Matrix<float>::Ones(4, 2);
  sora::RowVector<float> g = sora::RowVector<float>::Ones(3);
  CHECK_THROWS_WITH_AS(
      px::group_soft_threshold_triplets_inplace(A, B, g, 0.1f),
      doctest::Contains("B (out, R) has shape (4, 2) but A (R, in) has (3, 5); B must have 3 "
                        "columns"),
      sora::Error);
  sora::Matrix<float> B3 = sora::Matrix<float>::Ones(4, 3);
  sora::RowVector<float> g2 = sora::RowVector<float>::Ones(2);
  CHECK_THROWS_WITH_AS(px::group_hard_threshold_triplets_inplace(A, B3, g2, 0.1f),
                       doctest::Contains("gate g has shape (1, 2)"), sora::Error);
  CHECK_THROWS_WITH_AS(px::group_l0_prox_triplets_inplace(A, B3, g, 1.0f, 1.0f, w4),
                       doctest::Contains("group_l0_prox_triplets: group weights have shape "
                                         "(4, 1) but there are 3 groups"),
                       sora::Error);
  CHECK_THROWS_WITH_AS(px::group_l21_triplets(A, B, g), doctest::Contains("group_l21_triplets"),
                       sora::Error);
  CHECK(A == sora::Matrix<float>::Ones(3, 5));  // nothing written before the checks failed
  CHECK(x == sora::Matrix<float>::Ones(3, 4));
}

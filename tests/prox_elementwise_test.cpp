// Elementwise proximal operators (prox/elementwise.hpp, prox/topk.hpp) and their regularizer
// values. The oracle is brute force: prox_{γf}(x) = argmin_y f(y) + (y - x)²/(2γ) found by a
// dense 1-D grid search refined locally, in double, with f written out here independently of
// the library. Around it: subgradient optimality, the Moreau identity against an independently
// written conjugate prox, boundary values, non-finite inputs, every expression kind, and the
// (ξ, 2ξ) band regression of the official SoRA code.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <initializer_list>
#include <limits>
#include <sora/core/rng.hpp>
#include <sora/prox.hpp>
#include <string>
#include <vector>

namespace {

using sora::Index;
namespace px = sora::prox;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// argmin over y in [lo, hi] of phi(y): a 4001-point grid plus the given candidates (the kinks
// and jumps of the penalties: 0, x, box bounds -- an isolated minimum such as L0's y = 0 has
// no neighbourhood a grid could land in), then four rounds of a finer grid around the best
// point, each 50 times finer. Exact to ~1e-10 of the interval for the objectives used here.
double argmin_1d(const std::function<double(double)>& phi, double lo, double hi,
                 std::initializer_list<double> candidates) {
  double best_y = lo;
  double best = phi(lo);
  const auto consider = [&](double y) {
    if (y < lo || y > hi) return;
    const double v = phi(y);
    if (v < best) {
      best = v;
      best_y = y;
    }
  };
  const int n = 4000;
  for (int k = 0; k <= n; ++k) consider(lo + (hi - lo) * k / n);
  for (double c : candidates) consider(c);
  double step = (hi - lo) / n;
  for (int round = 0; round < 4; ++round) {
    const double center = best_y;
    for (int k = -100; k <= 100; ++k) consider(center + step * k / 50.0);
    for (double c : candidates) consider(c);
    step /= 50.0;
  }
  return best_y;
}

// The penalties, written here from their definitions.
double f_l1(double y, double lambda) {
  return lambda * std::abs(y);
}
double f_l0(double y, double lambda) {
  return y != 0.0 ? lambda : 0.0;
}
double f_elastic(double y, double l1, double l2) {
  return l1 * std::abs(y) + 0.5 * l2 * y * y;
}
double f_nonneg(double y, double tau) {
  return y >= 0.0 ? tau * y : kInf;
}
double f_mcp(double y, double lambda, double mu) {
  const double a = std::abs(y);
  return a <= mu * lambda ? lambda * a - y * y / (2.0 * mu) : 0.5 * mu * lambda * lambda;
}
double f_box(double y, double lo, double hi) {
  return (y >= lo && y <= hi) ? 0.0 : kInf;
}

// Brute-force prox of γ f at x.
double brute_prox(const std::function<double(double)>& f, double x, double gamma,
                  std::initializer_list<double> extra = {}) {
  const double r = 2.0 * std::abs(x) + 2.0;
  std::vector<double> cands{0.0, x};
  cands.insert(cands.end(), extra.begin(), extra.end());
  const auto phi = [&](double y) { return f(y) + (y - x) * (y - x) / (2.0 * gamma); };
  double best_y = 0.0;
  double best = kInf;
  // Candidates are passed in two groups so the initializer_list stays simple.
  for (double c : cands) {
    if (phi(c) < best) {
      best = phi(c);
      best_y = c;
    }
  }
  const double y = argmin_1d(phi, -r, r, {0.0, x});
  return phi(y) < best ? y : best_y;
}

// Checks prox(x) against brute force at many x: same objective value (the prox is a
// minimizer) and same point (the minimizer is unique away from measure-zero ties).
template <class Prox>
void check_against_brute(const Prox& prox, const std::function<double(double)>& f, double gamma,
                         std::initializer_list<double> extra = {}, double x_range = 3.0) {
  sora::Rng rng(7);
  sora::RowVector<double> x(301);
  for (Index i = 0; i < x.size(); ++i) x(i) = rng.uniform(-x_range, x_range);
  const sora::RowVector<double> y = prox(x);
  for (Index i = 0; i < x.size(); ++i) {
    const double yb = brute_prox(f, x(i), gamma, extra);
    const auto phi = [&](double v) { return f(v) + (v - x(i)) * (v - x(i)) / (2.0 * gamma); };
    INFO("x = ", x(i), ", prox = ", y(i), ", brute force = ", yb);
    CHECK(phi(y(i)) <= phi(yb) + 1e-12);
    CHECK(std::abs(y(i) - yb) <= 1e-6);
  }
}

// The official SoRA code's gate update (three masked in-place steps), reproduced to show the
// defect the library avoids: a gate in (ξ, 2ξ) is first shrunk below ξ, then zeroed.
void official_sora_update(std::vector<double>& g, double xi) {
  for (double& v : g) {
    if (v > xi) v -= xi;
  }
  for (double& v : g) {
    if (v < -xi) v += xi;
  }
  for (double& v : g) {
    if (std::abs(v) <= xi) v = 0.0;
  }
}

}  // namespace

// ------------------------------------------------------------------------------------------
// Brute force: every operator.

TEST_CASE("soft threshold and l1_prox equal the brute-force prox of the L1 penalty") {
  for (double tau : {0.0, 0.3, 1.7}) {
    check_against_brute([&](const auto& x) { return px::soft_threshold(x, tau); },
                        [&](double y) { return f_l1(y, tau); }, 1.0);
  }
  const double gamma = 0.4, lambda = 2.5;
  check_against_brute([&](const auto& x) { return px::l1_prox(x, gamma, lambda); },
                      [&](double y) { return f_l1(y, lambda); }, gamma);
}

TEST_CASE("l0_prox equals the brute-force prox of the L0 penalty (cut-off sqrt(2 gamma lambda))") {
  for (const auto& [gamma, lambda] : {std::pair{1.0, 0.5}, std::pair{0.3, 2.0}, {2.0, 0.1}}) {
    check_against_brute([&](const auto& x) { return px::l0_prox(x, gamma, lambda); },
                        [&](double y) { return f_l0(y, lambda); }, gamma);
  }
  // The cut-off itself: gamma * lambda (a common mistake) is not it.
  sora::RowVector<double> x(2);
  x << 0.9, 1.1;  // gamma = lambda = 1: gamma*lambda = 1, sqrt(2) = 1.414
  const auto y = px::l0_prox(x, 1.0, 1.0);
  CHECK(y(0) == 0.0);
  CHECK(y(1) == 0.0);
}

TEST_CASE("hard threshold at tau is the prox of (tau^2 / (2 gamma)) * L0") {
  for (double tau : {0.2, 1.0, 2.4}) {
    const double gamma = 0.7;
    check_against_brute([&](const auto& x) { return px::hard_threshold(x, tau); },
                        [&](double y) { return f_l0(y, tau * tau / (2.0 * gamma)); }, gamma);
  }
}

TEST_CASE("elastic_net_prox equals the brute-force prox") {
  for (const auto& [gamma, l1, l2] : {std::tuple{1.0, 0.5, 0.5}, std::tuple{0.3, 2.0, 4.0},
                                      std::tuple{2.0, 0.0, 1.0}, std::tuple{0.5, 1.0, 0.0}}) {
    check_against_brute([&](const auto& x) { return px::elastic_net_prox(x, gamma, l1, l2); },
                        [&](double y) { return f_elastic(y, l1, l2); }, gamma);
  }
}

TEST_CASE("nonneg_soft_threshold equals the brute-force prox of tau*y + indicator(y >= 0)") {
  for (double tau : {0.0, 0.4, 1.5}) {
    check_against_brute([&](const auto& x) { return px::nonneg_soft_threshold(x, tau); },
                        [&](double y) { return f_nonneg(y, tau); }, 1.0);
  }
}

TEST_CASE("firm_threshold equals the brute-force prox of gamma * MCP, convex and not") {
  // mu > gamma: the firm-threshold formula; mu <= gamma: the hard-threshold regime.
  for (const auto& [gamma, lambda, mu] :
       {std::tuple{1.0, 0.5, 3.0}, std::tuple{0.5, 1.0, 1.5}, std::tuple{0.2, 2.0, 4.0},
        std::tuple{2.0, 0.5, 1.5}, std::tuple{3.0, 0.4, 3.0}, std::tuple{1.0, 1.0, 1.0001}}) {
    INFO("gamma = ", gamma, ", lambda = ", lambda, ", mu = ", mu);
    check_against_brute([&](const auto& x) { return px::firm_threshold(x, gamma, lambda, mu); },
                        [&](double y) { return f_mcp(y, lambda, mu); }, gamma,
                        {mu * lambda, -mu * lambda}, 4.0);
  }
}

TEST_CASE("box_project equals the brute-force prox of the box indicator") {
  for (const auto& [lo, hi] : {std::pair{-0.5, 1.0}, std::pair{0.3, 0.3}, std::pair{1.0, 2.5}}) {
    check_against_brute([&](const auto& x) { return px::box_project(x, lo, hi); },
                        [&](double y) { return f_box(y, lo, hi); }, 1.0, {lo, hi});
  }
}

TEST_CASE("weighted soft, hard and L0 equal the brute force with per-element thresholds") {
  sora::Rng rng(11);
  sora::Matrix<double> x(7, 9), w(7, 9);
  rng.fill_uniform(x, -3.0, 3.0);
  rng.fill_uniform(w, 0.0, 2.0);
  w(0, 0) = 0.0;  // a zero weight: no penalty, the identity
  const double tau = 0.8, gamma = 0.6, lambda = 1.2;
  const auto ys = px::soft_threshold(x, tau, w);
  const auto yh = px::hard_threshold(x, tau, w);
  const auto yl = px::l0_prox(x, gamma, lambda, w);
  const auto y1 = px::l1_prox(x, gamma, lambda, w);
  for (Index i = 0; i < x.rows(); ++i) {
    for (Index j = 0; j < x.cols(); ++j) {
      const double xi = x(i, j), wi = w(i, j);
      INFO("x = ", xi, ", w = ", wi);
      CHECK(ys(i, j) ==
            doctest::Approx(brute_prox([&](double y) { return f_l1(y, tau * wi); }, xi, 1.0))
                .epsilon(1e-8)
                .epsilon(1e-7));
      const double lh = (tau * wi) * (tau * wi) / 2.0;  // hard at tau*w = L0 prox, gamma 1
      CHECK(yh(i, j) == doctest::Approx(brute_prox([&](double y) { return f_l0(y, lh); }, xi, 1.0))
                            .epsilon(1e-8));
      CHECK(yl(i, j) ==
            doctest::Approx(brute_prox([&](double y) { return f_l0(y, lambda * wi); }, xi, gamma))
                .epsilon(1e-8));
      CHECK(y1(i, j) ==
            doctest::Approx(brute_prox([&](double y) { return f_l1(y, lambda * wi); }, xi, gamma))
                .epsilon(1e-8)
                .epsilon(1e-7));
    }
  }
}

TEST_CASE("topk_project equals the best subset by exhaustive search, ties to the earlier index") {
  sora::Rng rng(3);
  for (int trial = 0; trial < 20; ++trial) {
    sora::Matrix<double> x(2, 4);
    rng.fill_uniform(x, -2.0, 2.0);
    if (trial % 4 == 0) x(1, 2) = -x(0, 1);  // a tie in magnitude
    for (Index k = 0; k <= 8; ++k) {
      // Exhaustive: the best subset of size k maximizes the kept energy; the earliest such
      // subset in lexicographic "earlier index wins" order is what the tie-break promises.
      double best = -1.0;
      sora::Matrix<double> best_y;
      for (unsigned mask = 0; mask < 256u; ++mask) {
        if (__builtin_popcount(mask) != k) continue;
        sora::Matrix<double> y = sora::Matrix<double>::Zero(2, 4);
        double kept = 0.0;
        for (Index p = 0; p < 8; ++p) {
          if (mask & (1u << p)) {
            y(p / 4, p % 4) = x(p / 4, p % 4);
            kept += x(p / 4, p % 4) * x(p / 4, p % 4);
          }
        }
        if (kept > best) {
          best = kept;
          best_y = y;
        }
      }
      const auto y = px::topk_project(x, k);
      CHECK((y - x).squaredNorm() == doctest::Approx((best_y - x).squaredNorm()).epsilon(1e-8));
      CHECK(px::l0(y) <= static_cast<double>(k));
    }
  }
  sora::RowVector<double> t(5);
  t << 1.0, -2.0, 2.0, -1.0, 2.0;  // three |x| == 2: the first two by index are kept
  const auto y = px::topk_project(t, 2);
  CHECK(y(0) == 0.0);
  CHECK(y(1) == -2.0);
  CHECK(y(2) == 2.0);
  CHECK(y(3) == 0.0);
  CHECK(y(4) == 0.0);
}

// ------------------------------------------------------------------------------------------
// Optimality conditions and the Moreau identity.

TEST_CASE("subgradient optimality (x - y)/gamma in the subdifferential of f at y") {
  sora::Rng rng(5);
  sora::RowVector<double> x(500);
  rng.fill_uniform(x, -3.0, 3.0);
  const double gamma = 0.7, lambda = 1.3, l2 = 0.8, mu = 2.5, tau = 0.9;
  const double tol = 1e-12;

  const auto y1 = px::l1_prox(x, gamma, lambda);
  const auto ye = px::elastic_net_prox(x, gamma, lambda, l2);
  const auto yn = px::nonneg_soft_threshold(x, tau);
  const auto yf = px::firm_threshold(x, gamma, lambda, mu);
  const auto yb = px::box_project(x, -0.5, 1.0);
  for (Index i = 0; i < x.size(); ++i) {
    const double xi = x(i);
    // L1: ∂(λ|y|) = {λ sign y} for y != 0, [-λ, λ] at 0.
    const double g1 = (xi - y1(i)) / gamma;
    if (y1(i) != 0.0) {
      CHECK(g1 == doctest::Approx(lambda * (y1(i) > 0 ? 1.0 : -1.0)).epsilon(1e-9));
    } else {
      CHECK(std::abs(g1) <= lambda + tol);
    }
    // Elastic net: (x - y)/γ - λ2 y ∈ λ1 ∂|y|.
    const double ge = (xi - ye(i)) / gamma - l2 * ye(i);
    if (ye(i) != 0.0) {
      CHECK(ge == doctest::Approx(lambda * (ye(i) > 0 ? 1.0 : -1.0)).epsilon(1e-9));
    } else {
      CHECK(std::abs(ge) <= lambda + tol);
    }
    // Nonneg: ∂(τy + ι(y >= 0)) = {τ} for y > 0, (-inf, τ] at 0; and y >= 0.
    CHECK(yn(i) >= 0.0);
    if (yn(i) > 0.0) {
      CHECK(xi - yn(i) == doctest::Approx(tau).epsilon(1e-9));
    } else {
      CHECK(xi <= tau + tol);
    }
    // MCP (μ > γ, so the prox is the unique stationary point): ρ'(y) = sign(y)(λ - |y|/μ)
    // inside [-μλ, μλ], 0 beyond, [-λ, λ] at 0.
    const double gf = (xi - yf(i)) / gamma;
    const double ay = std::abs(yf(i));
    if (yf(i) == 0.0) {
      CHECK(std::abs(gf) <= lambda + tol);
    } else if (ay < mu * lambda) {
      CHECK(gf == doctest::Approx((yf(i) > 0 ? 1.0 : -1.0) * (lambda - ay / mu)).epsilon(1e-9));
    } else {
      CHECK(std::abs(gf) <= tol);
    }
    // Box: x - y in the normal cone of [lo, hi] at y.
    if (yb(i) > -0.5 && yb(i) < 1.0) {
      CHECK(xi == yb(i));
    } else if (yb(i) == -0.5) {
      CHECK(xi <= -0.5);
    } else {
      CHECK(yb(i) == 1.0);
      CHECK(xi >= 1.0);
    }
  }
}

TEST_CASE("Moreau identity: soft threshold + projection onto [-tau, tau] (the conjugate) == x") {
  sora::Rng rng(9);
  sora::Matrix<double> x(13, 17);
  rng.fill_uniform(x, -4.0, 4.0);
  for (double tau : {0.0, 0.5, 2.0}) {
    const auto y = px::soft_threshold(x, tau);
    for (Index i = 0; i < x.rows(); ++i) {
      for (Index j = 0; j < x.cols(); ++j) {
        // (τ||·||_1)* = indicator of the L∞ ball of radius τ; its prox is the clamp.
        const double conj = std::clamp(x(i, j), -tau, tau);
        CHECK(y(i, j) + conj == doctest::Approx(x(i, j)).epsilon(1e-15));
      }
    }
  }
  // With a step: x = prox_{γf}(x) + γ prox_{f*/γ}(x/γ), f = λ|·|.
  const double gamma = 0.3, lambda = 1.7;
  const auto y = px::l1_prox(x, gamma, lambda);
  for (Index i = 0; i < x.rows(); ++i) {
    for (Index j = 0; j < x.cols(); ++j) {
      const double conj = gamma * std::clamp(x(i, j) / gamma, -lambda, lambda);
      CHECK(y(i, j) + conj == doctest::Approx(x(i, j)).epsilon(1e-14));
    }
  }
}

// ------------------------------------------------------------------------------------------
// Boundaries, non-finite values, the (ξ, 2ξ) band.

TEST_CASE_TEMPLATE("boundary |x| == tau: soft gives exactly 0, hard drops it (strict >)", T, float,
                   double) {
  sora::RowVector<T> x(4);
  x << T(0.5), T(-0.5), T(0.25), T(-0.75);
  const auto s = px::soft_threshold(x, T(0.5));
  CHECK(s(0) == T(0));
  CHECK(s(1) == T(0));
  CHECK_FALSE(std::signbit(s(0)));  // x - clamp(x) = +0, not -0
  const auto h = px::hard_threshold(x, T(0.5));
  CHECK(h(0) == T(0));
  CHECK(h(1) == T(0));
  CHECK(h(3) == T(-0.75));
  // L0 at its cut-off sqrt(2γλ) = 0.5 (γ = 0.125, λ = 1): both 0 and x minimize; 0 is chosen.
  const auto l = px::l0_prox(x, T(0.125), T(1));
  CHECK(l(0) == T(0));
  CHECK(l(3) == T(-0.75));
}

// The test above uses whole SIMD packets, so only packetOp sees |x| == tau. Strided views (no
// packet access) and the scalar tails of odd lengths go through operator(); a `<` there in
// place of `<=` would keep +-tau, and only a boundary value on these paths can show it.
TEST_CASE_TEMPLATE("boundary |x| == tau on the scalar path: strided views and odd-length tails", T,
                   float, double) {
  const T tau = T(0.5);
  // L0 cut-off sqrt(2 gamma lambda) = 0.5 exactly (gamma = 0.125, lambda = 1); unit weights
  // keep the weighted thresholds at exactly 0.5 too (0.5 * 1, sqrt(1) * 0.5).
  const T gamma = T(0.125);
  const T lambda = T(1);
  // Which operator, on which view, in place or not: each must give 0 at +-tau and keep 0.75.
  const auto check_row = [&](const auto& y, Index n, const std::string& what) {
    INFO(what);
    for (Index i = 0; i < n; ++i) {
      INFO("i = " << i);
      if (i % 3 == 2) {
        CHECK(y(i) == (i % 2 == 0 ? T(0.75) : T(-0.75)));
      } else {
        CHECK(y(i) == T(0));
      }
    }
  };
  // Pattern: tau, -tau, +-0.75, repeated; the odd lengths end in a scalar tail for every
  // packet size (4, 8, 16 floats; 2, 4, 8 doubles), with boundary values inside the tail.
  const auto fill = [&](auto&& y, Index n) {
    for (Index i = 0; i < n; ++i) {
      if (i % 3 == 0) y(i) = tau;
      if (i % 3 == 1) y(i) = -tau;
      if (i % 3 == 2) y(i) = i % 2 == 0 ? T(0.75) : T(-0.75);
    }
  };
  for (const Index n : {Index(7), Index(37), Index(67)}) {
    CAPTURE(n);
    const sora::RowVector<T> ones = sora::RowVector<T>::Ones(n);
    // Odd-length contiguous vectors: body by packetOp, tail by operator().
    sora::RowVector<T> v(n);
    fill(v, n);
    check_row(px::hard_threshold(v, tau), n, "hard, contiguous");
    check_row(px::hard_threshold(v, tau, ones), n, "weighted hard, contiguous");
    check_row(px::l0_prox(v, gamma, lambda), n, "l0, contiguous");
    check_row(px::l0_prox(v, gamma, lambda, ones), n, "weighted l0, contiguous");
    // A row of a column-major matrix has inner stride 3: no packet access, all scalar.
    using ColMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;
    ColMajor m = ColMajor::Constant(3, n, T(9));
    fill(m.row(1), n);
    check_row(px::hard_threshold(m.row(1), tau), n, "hard, strided");
    check_row(px::hard_threshold(m.row(1), tau, ones), n, "weighted hard, strided");
    check_row(px::l0_prox(m.row(1), gamma, lambda), n, "l0, strided");
    check_row(px::l0_prox(m.row(1), gamma, lambda, ones), n, "weighted l0, strided");
    const auto in_place = [&](auto op, const char* what) {
      ColMajor w = m;
      op(w.row(1));
      check_row(w.row(1), n, what);
      CHECK((w.row(0).array() == T(9)).all());  // the neighbouring rows are untouched
      CHECK((w.row(2).array() == T(9)).all());
      sora::RowVector<T> c = v;
      op(c);
      check_row(c, n, what);
    };
    in_place([&](auto&& y) { px::hard_threshold_inplace(y, tau); }, "hard, in place");
    in_place([&](auto&& y) { px::hard_threshold_inplace(y, tau, ones); },
             "weighted hard, in place");
    in_place([&](auto&& y) { px::l0_prox_inplace(y, gamma, lambda); }, "l0, in place");
    in_place([&](auto&& y) { px::l0_prox_inplace(y, gamma, lambda, ones); },
             "weighted l0, in place");
  }
}

TEST_CASE_TEMPLATE("NaN propagates, infinities behave as limits (vectorized body and tail)", T,
                   float, double) {
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const T inf = std::numeric_limits<T>::infinity();
  // 37 elements: non-finite values in the packet body (0, 5, 17) and in the scalar tail (36).
  sora::RowVector<T> x = sora::RowVector<T>::Constant(37, T(0.1));
  x(0) = nan;
  x(5) = inf;
  x(17) = -inf;
  x(36) = nan;
  const auto s = px::soft_threshold(x, T(0.5));
  CHECK(std::isnan(s(0)));
  CHECK(s(5) == inf);
  CHECK(s(17) == -inf);
  CHECK(std::isnan(s(36)));
  CHECK(s(1) == T(0));
  for (const auto& h : {px::hard_threshold(x, T(0.5)), px::l0_prox(x, T(1), T(0.5)),
                        px::firm_threshold(x, T(1), T(0.5), T(3))}) {
    CHECK(std::isnan(h(0)));
    CHECK(h(5) == inf);
    CHECK(h(17) == -inf);
    CHECK(std::isnan(h(36)));
    CHECK(h(1) == T(0));
  }
  const auto n = px::nonneg_soft_threshold(x, T(0.5));
  CHECK(std::isnan(n(0)));
  CHECK(n(5) == inf);
  CHECK(n(17) == T(0));
  const auto b = px::box_project(x, T(-1), T(1));
  CHECK(std::isnan(b(0)));
  CHECK(b(5) == T(1));
  CHECK(b(17) == T(-1));
  const auto e = px::elastic_net_prox(x, T(1), T(0.5), T(1));
  CHECK(std::isnan(e(0)));
  CHECK(e(5) == inf);
  // Weighted kernels take the same rules.
  const auto ws = px::soft_threshold(x, T(0.5), sora::RowVector<T>::Ones(37));
  const auto wh = px::hard_threshold(x, T(0.5), sora::RowVector<T>::Ones(37));
  CHECK(std::isnan(ws(36)));
  CHECK(std::isnan(wh(36)));
  CHECK(wh(5) == inf);
  CHECK_THROWS_WITH_AS(px::topk_project(x, 3), doctest::Contains("NaN at (0, 0)"), sora::Error);
}

TEST_CASE("regression: gates in (xi, 2 xi) are shrunk by xi, not zeroed (official-code defect)") {
  const double xi = 3e-4;
  std::vector<double> gates{1.2 * xi, 1.5 * xi, -1.9 * xi, 2.5 * xi, 0.5 * xi};
  std::vector<double> official = gates;
  official_sora_update(official, xi);
  CHECK(official[0] == 0.0);  // the defect: (ξ, 2ξ) is wiped out
  CHECK(official[1] == 0.0);
  CHECK(official[2] == 0.0);

  sora::RowVector<double> g = Eigen::Map<sora::RowVector<double>>(gates.data(), 5);
  px::soft_threshold_inplace(g, xi);
  CHECK(g(0) == doctest::Approx(0.2 * xi).epsilon(1e-12));
  CHECK(g(1) == doctest::Approx(0.5 * xi).epsilon(1e-12));
  CHECK(g(2) == doctest::Approx(-0.9 * xi).epsilon(1e-12));
  CHECK(g(3) == doctest::Approx(1.5 * xi).epsilon(1e-12));
  CHECK(g(4) == 0.0);
  sora::RowVector<float> gf = g.cast<float>();
  gf << 1.2f * 3e-4f, 1.5f * 3e-4f, -1.9f * 3e-4f, 2.5f * 3e-4f, 0.5f * 3e-4f;
  px::soft_threshold_inplace(gf, 3e-4f);
  CHECK(gf(0) > 0.0f);
  CHECK(gf(1) > 0.0f);
  CHECK(gf(2) < 0.0f);
}

// ------------------------------------------------------------------------------------------
// Expression kinds and forms.

TEST_CASE_TEMPLATE("in place == out of place, on every expression kind", T, float, double) {
  sora::Rng rng(21);
  sora::Matrix<T> base(9, 37);  // 37 columns: rows are not a multiple of any packet size
  rng.fill_uniform(base, -2.0, 2.0);
  const T tau = T(0.6);
  const sora::Matrix<T> ref = px::soft_threshold(base, tau);
  const auto href = px::hard_threshold(base, tau);

  {  // Matrix, lvalue
    sora::Matrix<T> m = base;
    px::soft_threshold_inplace(m, tau);
    CHECK(m == ref);
  }
  {  // Array (column-major) and its out-of-place twin
    Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic> a = base.array();
    px::hard_threshold_inplace(a, tau);
    CHECK((a.matrix() == href));
    CHECK((px::hard_threshold(base.array(), tau).matrix() == href));
  }
  {  // Map over a raw buffer
    std::vector<T> buf(base.data(), base.data() + base.size());
    Eigen::Map<sora::Matrix<T>> m(buf.data(), 9, 37);
    px::soft_threshold_inplace(m, tau);
    CHECK(m == ref);
  }
  {  // row(): an rvalue block, contiguous
    sora::Matrix<T> m = base;
    px::soft_threshold_inplace(m.row(2), tau);
    CHECK(m.row(2) == ref.row(2));
    CHECK(m.row(1) == base.row(1));
  }
  {  // col(): an rvalue block, strided (the coefficient path)
    sora::Matrix<T> m = base;
    px::hard_threshold_inplace(m.col(5), tau);
    CHECK(m.col(5) == href.col(5));
    CHECK(m.col(4) == base.col(4));
  }
  {  // an inner block (strided rows) and a contiguous row band
    sora::Matrix<T> m = base;
    px::soft_threshold_inplace(m.block(1, 3, 4, 20), tau);
    CHECK(m.block(1, 3, 4, 20) == ref.block(1, 3, 4, 20));
    CHECK(m.block(0, 0, 1, 37) == base.block(0, 0, 1, 37));
    CHECK(m.col(2) == base.col(2));
    sora::Matrix<T> n = base;
    px::soft_threshold_inplace(n.middleRows(2, 5), tau);
    CHECK(n.middleRows(2, 5) == ref.middleRows(2, 5));
    CHECK(n.row(1) == base.row(1));
  }
  {  // Ref
    sora::Matrix<T> m = base;
    Eigen::Ref<sora::Matrix<T>> r(m);
    px::soft_threshold_inplace(r, tau);
    CHECK(m == ref);
  }
  {  // every other operator: in place == out of place (a block to exercise both paths)
    const T g = T(0.5), l = T(0.7);
    const auto same = [&](auto&& inplace, auto&& outplace) {
      sora::Matrix<T> m = base;
      inplace(m.block(1, 1, 6, 30));
      const sora::Matrix<T> o = outplace(base.block(1, 1, 6, 30));
      CHECK(m.block(1, 1, 6, 30) == o);
    };
    same([&](auto&& b) { px::l0_prox_inplace(b, g, l); },
         [&](const auto& b) { return px::l0_prox(b, g, l); });
    same([&](auto&& b) { px::l1_prox_inplace(b, g, l); },
         [&](const auto& b) { return px::l1_prox(b, g, l); });
    same([&](auto&& b) { px::elastic_net_prox_inplace(b, g, l, l); },
         [&](const auto& b) { return px::elastic_net_prox(b, g, l, l); });
    same([&](auto&& b) { px::nonneg_soft_threshold_inplace(b, l); },
         [&](const auto& b) { return px::nonneg_soft_threshold(b, l); });
    same([&](auto&& b) { px::firm_threshold_inplace(b, g, l, T(2)); },
         [&](const auto& b) { return px::firm_threshold(b, g, l, T(2)); });
    same([&](auto&& b) { px::box_project_inplace(b, -l, g); },
         [&](const auto& b) { return px::box_project(b, -l, g); });
    same([&](auto&& b) { px::topk_project_inplace(b, 17); },
         [&](const auto& b) { return px::topk_project(b, 17); });
    const sora::Matrix<T> w = sora::Matrix<T>::Constant(6, 30, T(1.5));
    same([&](auto&& b) { px::soft_threshold_inplace(b, l, w); },
         [&](const auto& b) { return px::soft_threshold(b, l, w); });
    same([&](auto&& b) { px::hard_threshold_inplace(b, l, w); },
         [&](const auto& b) { return px::hard_threshold(b, l, w); });
    same([&](auto&& b) { px::l0_prox_inplace(b, g, l, w); },
         [&](const auto& b) { return px::l0_prox(b, g, l, w); });
  }
}

TEST_CASE_TEMPLATE("float agrees with double; uniform weights == unweighted", T, float, double) {
  sora::Rng rng(4);
  sora::Matrix<double> xd(8, 33);
  rng.fill_uniform(xd, -2.0, 2.0);
  const sora::Matrix<T> x = xd.cast<T>();
  const T tau = T(0.7);
  CHECK(px::soft_threshold(x, tau).template cast<double>().isApprox(
      px::soft_threshold(x.template cast<double>(), double(tau)), 1e-6));
  // w = 1 is the unweighted operator; w = c is the unweighted one at c τ (exactly: τ w is
  // formed the same way). Also a column-major weight matrix against a row-major x.
  const sora::Matrix<T> ones = sora::Matrix<T>::Ones(8, 33);
  const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> ones_cm = ones;
  CHECK(px::soft_threshold(x, tau, ones) == px::soft_threshold(x, tau));
  CHECK(px::soft_threshold(x, tau, ones_cm) == px::soft_threshold(x, tau));
  CHECK(px::hard_threshold(x, tau, ones) == px::hard_threshold(x, tau));
  CHECK(px::l0_prox(x, T(0.5), T(0.4), ones) == px::l0_prox(x, T(0.5), T(0.4)));
  CHECK(px::l1_prox(x, T(0.5), T(0.4), ones) == px::l1_prox(x, T(0.5), T(0.4)));
  CHECK(px::soft_threshold(x, tau, (ones * T(2)).eval()) == px::soft_threshold(x, T(2) * tau));
  // A weight pattern (not uniform) must differ from the unweighted result, or the test above
  // could pass with the weights ignored.
  sora::Matrix<T> w = ones;
  w.col(3).setZero();
  CHECK(px::soft_threshold(x, tau, w).col(3) == x.col(3));
}

// ------------------------------------------------------------------------------------------
// Regularizer values and argument checks.

TEST_CASE("regularizer values match their definitions") {
  sora::Matrix<double> x(2, 3);
  x << 1.0, -2.0, 0.0, 0.5, 0.0, -3.0;
  CHECK(px::l1(x) == doctest::Approx(6.5).epsilon(1e-12));
  CHECK(px::l0(x) == 4.0);
  sora::Matrix<double> w(2, 3);
  w << 1.0, 2.0, 3.0, 0.0, 1.0, 0.5;
  CHECK(px::l1(x, w) == doctest::Approx(1.0 + 4.0 + 1.5).epsilon(1e-12));
  CHECK(px::l0(x, w) == doctest::Approx(1.0 + 2.0 + 0.0 + 0.5).epsilon(1e-12));
  double en = 0.0, mc = 0.0;
  for (Index i = 0; i < x.size(); ++i) {
    en += f_elastic(x.data()[i], 0.3, 0.8);
    mc += f_mcp(x.data()[i], 0.7, 2.0);
  }
  CHECK(px::elastic_net(x, 0.3, 0.8) == doctest::Approx(en).epsilon(1e-12));
  CHECK(px::mcp(x, 0.7, 2.0) == doctest::Approx(mc).epsilon(1e-12));
  CHECK(px::nonneg_l1(x) == kInf);
  CHECK(px::nonneg_l1(x.cwiseAbs()) == doctest::Approx(6.5).epsilon(1e-12));
  CHECK(px::box_indicator(x, -3.0, 1.0) == 0.0);
  CHECK(px::box_indicator(x, -2.5, 1.0) == kInf);
  CHECK(px::l0_ball_indicator(x, 4) == 0.0);
  CHECK(px::l0_ball_indicator(x, 3) == kInf);
  (void)kNaN;
}

TEST_CASE("bad arguments throw sora::Error naming the problem") {
  sora::Matrix<float> x = sora::Matrix<float>::Ones(3, 4);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH_AS(px::soft_threshold_inplace(x, -0.1f),
                       doctest::Contains("soft_threshold: tau must be finite and >= 0"),
                       sora::Error);
  CHECK_THROWS_WITH_AS(px::soft_threshold_inplace(x, nan), doctest::Contains("got nan"),
                       sora::Error);
  CHECK_THROWS_WITH_AS(px::hard_threshold(x, std::numeric_limits<float>::infinity()),
                       doctest::Contains("hard_threshold: tau"), sora::Error);
  CHECK_THROWS_WITH_AS(px::l0_prox_inplace(x, 0.0f, 1.0f),
                       doctest::Contains("l0_prox: gamma must be finite and > 0"), sora::Error);
  CHECK_THROWS_WITH_AS(px::l1_prox(x, -1.0f, 1.0f), doctest::Contains("l1_prox: gamma"),
                       sora::Error);
  CHECK_THROWS_WITH_AS(px::l0_prox(x, 1.0f, -1.0f), doctest::Contains("l0_prox: lambda"),
                       sora::Error);
  CHECK_THROWS_WITH_AS(px::elastic_net_prox(x, 1.0f, 1.0f, -2.0f),
                       doctest::Contains("elastic_net_prox: lambda2"), sora::Error);
  CHECK_THROWS_WITH_AS(px::firm_threshold(x, 1.0f, 1.0f, 1.0f),
                       doctest::Contains("firm_threshold: mu must be finite and > 1, got 1"),
                       sora::Error);
  CHECK_THROWS_WITH_AS(px::firm_threshold(x, 0.0f, 1.0f, 2.0f),
                       doctest::Contains("firm_threshold: gamma"), sora::Error);
  CHECK_THROWS_WITH_AS(px::nonneg_soft_threshold(x, -1.0f),
                       doctest::Contains("nonneg_soft_threshold: tau"), sora::Error);
  CHECK_THROWS_WITH_AS(px::box_project(x, 1.0f, 0.0f),
                       doctest::Contains("box_project: lo must be <= hi, got lo = 1 > hi = 0"),
                       sora::Error);
  CHECK_THROWS_WITH_AS(px::box_project(x, nan, 0.0f), doctest::Contains("box_project: bounds"),
                       sora::Error);
  CHECK_THROWS_WITH_AS(px::topk_project(x, 13),
                       doctest::Contains("topk_project: k must be in [0, 12]"), sora::Error);
  CHECK_THROWS_WITH_AS(px::topk_project_inplace(x, -1), doctest::Contains("got -1"), sora::Error);
  const sora::Matrix<float> w_wrong = sora::Matrix<float>::Ones(4, 3);
  CHECK_THROWS_WITH_AS(
      px::soft_threshold_inplace(x, 0.1f, w_wrong),
      doctest::Contains("soft_threshold: weights have shape (4, 3) but x has shape (3, 4)"),
      sora::Error);
  CHECK_THROWS_WITH_AS(px::hard_threshold(x, 0.1f, w_wrong),
                       doctest::Contains("shape (4, 3) but x has shape (3, 4)"), sora::Error);
  CHECK_THROWS_WITH_AS(px::l0_prox(x, 1.0f, 1.0f, w_wrong), doctest::Contains("l0_prox: weights"),
                       sora::Error);
  sora::Matrix<float> w_neg = sora::Matrix<float>::Ones(3, 4);
  w_neg(2, 1) = -1.0f;
  CHECK_THROWS_WITH_AS(px::soft_threshold(x, 0.1f, w_neg),
                       doctest::Contains("weights must be finite and >= 0, got -1 at (2, 1)"),
                       sora::Error);
  CHECK_THROWS_WITH_AS(px::l1(x, w_wrong), doctest::Contains("l1: weights have shape (4, 3)"),
                       sora::Error);
  // A failed check leaves x untouched.
  CHECK(x == sora::Matrix<float>::Ones(3, 4));
}

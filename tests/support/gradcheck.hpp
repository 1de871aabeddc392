#pragma once
// A reusable gradient checker: central differences in double precision against the analytic
// gradients of hand-written backward passes.
//
// The loss is whatever scalar the caller computes; for an op or layer with a matrix output use
// linear_functional(out, W) with a random W, so that every output entry carries weight and the
// analytic gradient is simply backward(dout = W).
//
// Each checked entry x gets L(x + h) and L(x - h). Their central difference is compared with the
// analytic value by relative error |a - n| / max(|a|, |n|, floor). A point where the two
// one-sided differences disagree by more than kink_tolerance sits on (or within h of) a kink
// of the function (a threshold, a max, a mask boundary): the derivative is not defined there
// and the point is skipped rather than reported. Skips are bounded (max_skipped_share of the
// entries tried): a backward that is wrong everywhere can make the one-sided differences of a
// smooth function look like a kink only if the loss itself is broken, but a loss with kinks
// everywhere (a wrong mask, a threshold at the wrong place) would otherwise pass unchecked.

#include <algorithm>
#include <cmath>
#include <functional>
#include <sora/core/rng.hpp>
#include <sora/core/tensor.hpp>
#include <sstream>
#include <string>
#include <vector>

namespace sora::testing {

struct GradcheckOptions {
  double step = 1e-5;              // h; chosen per op (smaller for sharply curved functions)
  double tolerance = 1e-5;         // maximum relative error
  double floor = 1e-4;             // relative-error denominator floor: near-zero gradients
  double kink_tolerance = 1e-2;    // one-sided differences further apart than this: a kink
  Index max_entries = 96;          // per tensor; larger tensors are sampled at random entries
  double max_skipped_share = 0.1;  // of all entries tried; more skips fail the check
  std::uint64_t seed = 7;
};

// One tensor to check: its value (perturbed in place, restored afterwards) and the analytic
// gradient of the loss with respect to it.
struct GradTarget {
  std::string name;
  MatrixD* value;
  MatrixD analytic;
};

struct GradcheckResult {
  double max_error = 0;
  std::string worst;  // "<name>(i, j): analytic a, numeric n"
  Index checked = 0;
  Index skipped = 0;
  double max_skipped_share = 0.1;  // copied from the options
  bool skips_ok() const {
    return static_cast<double>(skipped) <=
           max_skipped_share * static_cast<double>(checked + skipped);
  }
  bool ok(double tolerance) const { return max_error <= tolerance && skips_ok(); }
};

inline GradcheckResult gradcheck(const std::function<double()>& loss,
                                 std::vector<GradTarget>& targets,
                                 const GradcheckOptions& options = {}) {
  GradcheckResult result;
  result.max_skipped_share = options.max_skipped_share;
  Rng rng(options.seed, 99);
  const double L0 = loss();
  for (auto& target : targets) {
    MatrixD& value = *target.value;
    if (target.analytic.rows() != value.rows() || target.analytic.cols() != value.cols()) {
      result.max_error = INFINITY;
      result.worst = target.name + ": analytic gradient " + shape_of(target.analytic) +
                     " vs value " + shape_of(value);
      return result;
    }
    std::vector<Index> entries;
    if (value.size() <= options.max_entries) {
      for (Index e = 0; e < value.size(); ++e) entries.push_back(e);
    } else {
      for (Index e = 0; e < options.max_entries; ++e)
        entries.push_back(static_cast<Index>(rng.below(static_cast<std::uint64_t>(value.size()))));
    }
    for (Index e : entries) {
      const Index i = e / value.cols(), j = e % value.cols();
      const double saved = value(i, j);
      const double h = options.step * std::max(1.0, std::abs(saved));
      value(i, j) = saved + h;
      const double Lp = loss();
      value(i, j) = saved - h;
      const double Lm = loss();
      value(i, j) = saved;
      const double forward = (Lp - L0) / h, backward = (L0 - Lm) / h;
      const double numeric = (Lp - Lm) / (2 * h);
      if (std::abs(forward - backward) >
          options.kink_tolerance * std::max(1.0, std::abs(numeric))) {
        ++result.skipped;
        continue;
      }
      const double analytic = target.analytic(i, j);
      const double error = std::abs(analytic - numeric) /
                           std::max({std::abs(analytic), std::abs(numeric), options.floor});
      ++result.checked;
      if (error > result.max_error) {
        result.max_error = error;
        std::ostringstream out;
        out << target.name << '(' << i << ", " << j << "): analytic " << analytic << ", numeric "
            << numeric;
        result.worst = out.str();
      }
    }
  }
  return result;
}

// sum(W ⊙ out): a random linear functional of an output. Its gradient with respect to out is W.
template <class Derived>
double linear_functional(const Eigen::MatrixBase<Derived>& out, const MatrixD& W) {
  return out.cwiseProduct(W).sum();
}

inline MatrixD random_matrix(Rng& rng, Index rows, Index cols, double stddev = 1.0) {
  MatrixD m(rows, cols);
  rng.fill_normal(m, 0.0, stddev);
  return m;
}

// Two models that must compute the same gradients (one of them by another route): the largest
// |gradient| of the first's trainable parameters and the largest difference from the second's,
// in visiting order; then one SGD step of `lr` on both, so that a next step starts elsewhere.
struct GradientGap {
  double largest = 0.0;  // > 0: there was a gradient to compare
  double differs = 0.0;
};
template <class P>
GradientGap gradient_gap_then_step(const std::vector<P*>& a, const std::vector<P*>& b, double lr) {
  GradientGap gap;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
    if (!a[i]->trainable()) continue;
    gap.largest =
        std::max(gap.largest, static_cast<double>(a[i]->gradient().cwiseAbs().maxCoeff()));
    gap.differs =
        std::max(gap.differs,
                 static_cast<double>((a[i]->gradient() - b[i]->gradient()).cwiseAbs().maxCoeff()));
    a[i]->value -= lr * a[i]->gradient();
    b[i]->value -= lr * b[i]->gradient();
  }
  return gap;
}

}  // namespace sora::testing

// REQUIRE-style check with the worst entry in the failure message.
#define SORA_CHECK_GRADS(result, tol)                                                 \
  do {                                                                                \
    const auto& gc_result_ = (result);                                                \
    INFO("worst: ", gc_result_.worst, " (checked ", gc_result_.checked, ", skipped ", \
         gc_result_.skipped, ")");                                                    \
    CHECK(gc_result_.checked > 0);                                                    \
    CHECK(gc_result_.max_error <= (tol));                                             \
    CHECK(gc_result_.skips_ok());                                                     \
  } while (false)

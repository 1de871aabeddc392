#pragma once
// SparseAdamW: the SoRA gate optimizer (docs/design.md section 4; paper section 3, the proximal
// gradient step on the gates). One step is
//   g <- AdamW step on g with no weight decay
//   g <- soft_threshold(g, ξ')          sign(g) max(|g| - ξ', 0), |g| == ξ' gives 0
// with ξ' = ξ (default, as the official code: ξ is a per-step shrinkage) or ξ' = ξ lr
// (`scale_xi_by_lr`, the textbook proximal-gradient form where the step size scales the
// penalty).
//
// `official_compat` reproduces the official code instead: three masked in-place updates
//   g[g > ξ] -= ξ;   g[g < -ξ] += ξ;   g[|g| < ξ] = 0
// each mask read after the previous update. A gate in (ξ, 2ξ) is first shrunk into (0, ξ)
// and then zeroed by the third mask, so every |g| < 2ξ dies (twice the paper's threshold),
// while |g| == ξ exactly survives untouched. Offered only to reproduce published numbers;
// never the default.

#include <cmath>
#include <utility>
#include <vector>

#include "sora/optim/adamw.hpp"
#include "sora/prox/elementwise.hpp"

namespace sora::optim {

struct SparseAdamWOptions {
  double lr = 8e-4;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double xi = 3e-4;              // sparsity strength ξ (>= 0; 0 disables the proximal step)
  bool scale_xi_by_lr = false;   // threshold ξ lr instead of ξ
  bool official_compat = false;  // the official code's three masked updates (zeros |g| < 2ξ)
};

namespace detail {

// The official code's three masked updates, one element at a time (each mask is read after
// the previous update, so applying the three rules in order per element is the same thing).
template <class T>
T official_gate_prox(T g, T xi) {
  if (g > xi) g -= xi;
  if (g < -xi) g += xi;
  if (std::abs(g) < xi) g = T(0);
  return g;
}

template <class T>
void gate_prox_inplace(Matrix<T>& g, T threshold, bool official_compat) {
  if (official_compat) {
    g = g.unaryExpr([threshold](T v) { return official_gate_prox(v, threshold); });
  } else {
    prox::soft_threshold_inplace(g, threshold);
  }
}

}  // namespace detail

template <class T>
class SparseAdamW : public AdamW<T> {
 public:
  SparseAdamW() = default;
  SparseAdamW(std::vector<Param<T>*> gates, SparseAdamWOptions options)
      : AdamW<T>(std::move(gates), adamw_options(options)), sparse_(options) {
    check_xi(options.xi);
  }

  void set_xi(double xi) {
    check_xi(xi);
    sparse_.xi = xi;
  }
  double xi() const { return sparse_.xi; }
  bool scale_xi_by_lr() const { return sparse_.scale_xi_by_lr; }
  bool official_compat() const { return sparse_.official_compat; }

  // The threshold the proximal step applies at the current learning rate.
  double threshold() const { return sparse_.scale_xi_by_lr ? sparse_.xi * this->lr() : sparse_.xi; }

  void step() {
    this->check_all_fit("SparseAdamW");  // a refused step changes nothing
    ++this->step_;
    const AdamWScalars s = adamw_scalars(this->options_, this->step_);
    const T thr = static_cast<T>(threshold());
    for (std::size_t i = 0; i < this->params_.size(); ++i) {
      Param<T>& p = *this->params_[i];
      AdamState<T>& st = this->state_[i];
      detail::adamw_update(p.value, st.m, st.v, p.gradient(), s, 0.0);
      if (thr > T(0)) detail::gate_prox_inplace(p.value, thr, sparse_.official_compat);
    }
  }

 private:
  static AdamWOptions adamw_options(const SparseAdamWOptions& o) {
    AdamWOptions a;
    a.lr = o.lr;
    a.beta1 = o.beta1;
    a.beta2 = o.beta2;
    a.eps = o.eps;
    a.weight_decay = 0.0;  // gates are never decayed: the L1 prox is their regularizer
    return a;
  }
  static void check_xi(double xi) {
    SORA_CHECK(std::isfinite(xi) && xi >= 0.0, "SparseAdamW: xi must be finite and >= 0, got ", xi);
  }

  SparseAdamWOptions sparse_;
};

}  // namespace sora::optim

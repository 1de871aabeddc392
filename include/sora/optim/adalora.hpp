#pragma once
// AdaLoRA's adaptive rank allocation (Zhang et al. 2023, "Adaptive Budget Allocation for
// Parameter-Efficient Fine-Tuning"; docs/design.md section 6), with the semantics of PEFT's
// RankAllocator, and the optimizer that runs it inside step().
//
// Each AdaLoRA module is ΔW = P diag(E) Q s with P = lora_B (OC, R), E = lora_E (1, R),
// Q = lora_A (R, C). Rank i is the triplet (Q[i, :], E_i, P[:, i]).
//
// Importance (paper eq. 8-11), per element of A, E and B, after each optimizer step:
//   I   = |p ⊙ ∇p|                                     sensitivity (eq. 8)
//   Ī  <- β1 Ī + (1 - β1) I                            smoothed sensitivity (eq. 9)
//   Ū  <- β2 Ū + (1 - β2) |I - Ī|                      uncertainty, with the new Ī (eq. 10)
//   s   = Ī ⊙ Ū                                        element score (eq. 11)
// Triplet score (eq. 7): S_i = s(E_i) + mean_j s(A_ij) + mean_j s(B_ji).
//
// Budget (eq. 12, the cubic schedule), with t the 1-based optimizer step (the t-th call of
// step(), so a run of T steps ends at t = T), b_init = Σ r_init over modules and
// b_target = target_rank x modules:
//   t <= t_init                 b(t) = b_init                    no masking (warm-up)
//   t_init < t < T - t_final    b(t) = floor(b_target + (b_init - b_target)
//                                      (1 - (t - t_init) / (T - t_final - t_init))^3)
//                               masking when t % ΔT == 0
//   t == T - t_final            b(t) = b_target, masking forced: the final rank pattern;
//                               the importance statistics are reset (nothing reads them after)
//   t >  T - t_final            the final pattern re-applied after every step, so a masked
//                               E_i that AdamW moved off zero is zeroed again
// Masking sets E_i = 0 for the b_init - b(t) triplets of lowest score over all modules; the
// triplet stays trainable (and may come back at a later allocation) until the final pattern.
// One deliberate difference from PEFT: PEFT masks every triplet whose score is <= the k-th
// smallest, so ties can mask more than the budget says; here exactly b_init - b(t) are masked,
// ties broken by (module, rank) order, so the kept count is exactly the budget.
//
// Orthogonal regularizer (paper eq. 4), in PEFT's exact form: PEFT adds
//   w * Σ_{A and B of every module} ||C - I||_F / (number of such matrices)
// with C = A Aᵀ (R, R) for A and C = Bᵀ B (R, R) for B, i.e.
//   R(A, B) = w * mean over modules of (||A Aᵀ - I||_F + ||Bᵀ B - I||_F) / 2.
// Its gradient, with M = A Aᵀ - I symmetric: d||M||_F / dA = (1 / (2||M||)) d||M||²/dA
// = (1 / (2||M||)) 4 M A = 2 M A / ||M||; likewise d||N||_F / dB = 2 B N / ||N|| with
// N = Bᵀ B - I. So with n modules: dA += (w / n) M A / ||M||, dB += (w / n) B N / ||N||
// (0 where the norm is 0: the subgradient at an orthonormal point).
//
// AdaLoraOptimizer: AdamW over every trainable parameter (weight decay on matrices, none on
// vectors: biases, LayerNorms, lora_E), and a RankAllocator. step() adds the regularizer's
// gradient (unless add_orth_regularizer() already did this step), takes the AdamW step, then
// updates the importance and allocates: a user who only calls step() gets AdaLoRA.
// PEFT computes the importance after the optimizer step with the updated p and the step's
// gradient (update_and_allocate is called between optimizer.step() and zero_grad()); so here.
//
// The device twin, cuda::DeviceAdaLoraOptimizer (cuda/adalora.cuh), shares this file's module
// collection, budget schedule and selection (collect_adalora_modules, adalora_budgets,
// adalora_budget, select_rank_pattern), so the two allocate alike by construction.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sora/core/backend.hpp"
#include "sora/core/error.hpp"
#include "sora/core/param.hpp"
#include "sora/core/tensor.hpp"
#include "sora/optim/adamw.hpp"

namespace sora::optim {

// One AdaLoRA module's parameters: rank i is (A[i, :], E[0, i], B[:, i]). Backend is the
// parameters' (Cpu here; cuda::Cuda for the device twin, cuda/adalora.cuh).
template <class T, class Backend = Cpu>
struct AdaLoraModule {
  std::string name;                // the module's dotted path, e.g. "blocks.0.attn.q"
  Param<T, Backend>* A = nullptr;  // lora_A (R, C)
  Param<T, Backend>* B = nullptr;  // lora_B (OC, R)
  Param<T, Backend>* E = nullptr;  // lora_E (1, R)
  Index rank() const { return E->value.cols(); }
};

namespace detail {

// "(rows, cols)" of a tensor of any backend, for error messages.
template <class Tensor>
std::string adalora_shape(const Tensor& t) {
  return sora::detail::concat('(', t.rows(), ", ", t.cols(), ')');
}

}  // namespace detail

// The AdaLoRA modules of anything with visit_params(fn) over Param<T, Backend>: every parameter
// of role singular_value ("<m>.lora_E") with the adapter_A and adapter_B parameters of the same
// module "<m>", in visiting order. Throws on an
// incomplete or misshapen triplet. The pointers stay valid while the model is neither rebuilt
// nor pruned.
template <class T, class Backend = Cpu, class Model>
std::vector<AdaLoraModule<T, Backend>> collect_adalora_modules(Model& model) {
  using P = Param<T, Backend>;
  struct Parts {
    P* A = nullptr;
    P* B = nullptr;
    P* E = nullptr;
  };
  std::vector<std::string> order;
  std::map<std::string, Parts, std::less<>> parts;
  model.visit_params([&](P& p) {
    const auto dot = p.name.rfind('.');
    if (dot == std::string::npos) return;
    if (!is_adapter_role(p.role)) return;
    P** slot = nullptr;
    Parts& entry = parts[p.name.substr(0, dot)];
    if (p.role == ParamRole::adapter_A) slot = &entry.A;
    if (p.role == ParamRole::adapter_B) slot = &entry.B;
    if (p.role == ParamRole::singular_value) {
      slot = &entry.E;
      order.push_back(p.name.substr(0, dot));
    }
    if (slot != nullptr) *slot = &p;
  });
  std::vector<AdaLoraModule<T, Backend>> modules;
  for (const std::string& name : order) {
    const Parts& m = parts[name];
    SORA_CHECK(m.A != nullptr && m.B != nullptr, "collect_adalora_modules: '", name,
               ".lora_E' has no lora_A / lora_B beside it");
    const Index R = m.E->value.cols();
    SORA_CHECK(m.E->value.rows() == 1 && m.A->value.rows() == R && m.B->value.cols() == R,
               "collect_adalora_modules: module '", name, "' has A ",
               detail::adalora_shape(m.A->value), ", B ", detail::adalora_shape(m.B->value),
               " and E ", detail::adalora_shape(m.E->value), ", not (R, C), (OC, R) and (1, R)");
    modules.push_back(AdaLoraModule<T, Backend>{name, m.A, m.B, m.E});
  }
  return modules;
}

// ---- orthogonal regularizer ------------------------------------------------------------------

// R = w * mean over modules of (||A Aᵀ - I||_F + ||Bᵀ B - I||_F) / 2 (PEFT's form, see the file
// header). With accumulate_grad, adds dR/dA and dR/dB onto the trainable A and B gradients.
// Returns R (0 without modules).
template <class T>
double orthogonal_regularizer(const std::vector<AdaLoraModule<T>>& modules, double weight,
                              bool accumulate_grad) {
  SORA_CHECK(std::isfinite(weight) && weight >= 0.0,
             "orthogonal_regularizer: weight must be finite and >= 0, got ", weight);
  if (modules.empty() || weight == 0.0) return 0.0;
  const double n = static_cast<double>(modules.size());
  double total = 0.0;
  Matrix<T> M;  // (R, R): A Aᵀ - I, then Bᵀ B - I
  for (const AdaLoraModule<T>& m : modules) {
    const Matrix<T>& A = m.A->value;  // (R, C)
    const Matrix<T>& B = m.B->value;  // (OC, R)
    M.noalias() = A * A.transpose();
    M.diagonal().array() -= T(1);
    double norm = static_cast<double>(M.norm());
    total += norm;
    if (accumulate_grad && norm > 0.0 && m.A->trainable())
      m.A->gradient().noalias() += static_cast<T>(weight / (n * norm)) * M * A;  // (w/n) M A/||M||
    M.noalias() = B.transpose() * B;
    M.diagonal().array() -= T(1);
    norm = static_cast<double>(M.norm());
    total += norm;
    if (accumulate_grad && norm > 0.0 && m.B->trainable())
      m.B->gradient().noalias() += static_cast<T>(weight / (n * norm)) * B * M;  // (w/n) B N/||N||
  }
  return weight * total / (2.0 * n);
}

// ---- budget schedule -------------------------------------------------------------------------

struct AdaLoraOptions {
  Index target_rank = 8;         // PEFT's target_r: the final budget is target_rank x modules
  long total_steps = 0;          // T, the run's optimizer steps (required)
  long t_init = 0;               // warm-up steps before any masking
  long t_final = 0;              // final steps with the fixed rank pattern
  long delta_t = 1;              // ΔT, steps between two allocations in the cubic phase
  double beta1 = 0.85;           // EMA of the sensitivity
  double beta2 = 0.85;           // EMA of the uncertainty
  double orth_reg_weight = 0.5;  // w of the orthogonal regularizer (PEFT's default)
};

enum class AdaLoraPhase { warmup, budgeting, finalize, fixed };

struct BudgetStep {
  Index budget = 0;
  bool mask = false;  // whether step t masks (allocates)
  AdaLoraPhase phase = AdaLoraPhase::warmup;
};

inline void check_adalora_options(const AdaLoraOptions& o) {
  SORA_CHECK(o.total_steps > 0, "AdaLoRA: total_steps must be > 0, got ", o.total_steps);
  SORA_CHECK(o.t_init >= 0 && o.t_final >= 0, "AdaLoRA: t_init and t_final must be >= 0, got ",
             o.t_init, " and ", o.t_final);
  SORA_CHECK(o.t_init < o.total_steps - o.t_final, "AdaLoRA: t_init (", o.t_init,
             ") must be < total_steps - t_final (", o.total_steps, " - ", o.t_final, ")");
  SORA_CHECK(o.delta_t >= 1, "AdaLoRA: delta_t must be >= 1, got ", o.delta_t);
  SORA_CHECK(o.target_rank >= 0, "AdaLoRA: target_rank must be >= 0, got ", o.target_rank);
  SORA_CHECK(o.beta1 > 0.0 && o.beta1 < 1.0 && o.beta2 > 0.0 && o.beta2 < 1.0,
             "AdaLoRA: beta1 and beta2 must be in (0, 1), got ", o.beta1, " and ", o.beta2);
}

// The budget at 1-based step t (eq. 12; see the file header for the phases).
inline BudgetStep adalora_budget(long t, Index b_init, Index b_target, const AdaLoraOptions& o) {
  BudgetStep s;
  const long t_end = o.total_steps - o.t_final;  // the final allocation's step
  if (t <= o.t_init) {
    s.budget = b_init;
    s.phase = AdaLoraPhase::warmup;
  } else if (t >= t_end) {
    s.budget = b_target;
    s.mask = true;
    s.phase = t == t_end ? AdaLoraPhase::finalize : AdaLoraPhase::fixed;
  } else {
    const double progress =
        static_cast<double>(t - o.t_init) / static_cast<double>(t_end - o.t_init);
    const double left = 1.0 - progress;
    s.budget =
        static_cast<Index>(std::floor(static_cast<double>(b_init - b_target) * left * left * left +
                                      static_cast<double>(b_target)));
    s.mask = t % o.delta_t == 0;
    s.phase = AdaLoraPhase::budgeting;
  }
  return s;
}

// b_init = Σ r_init over the modules and b_target = target_rank x modules, after checking the
// options and that the target fits (`who` names the caller in the messages).
struct AdaLoraBudgets {
  Index initial = 0;  // b_init
  Index target = 0;   // b_target
};

template <class Module>
AdaLoraBudgets adalora_budgets(const std::vector<Module>& modules, const AdaLoraOptions& options,
                               const char* who) {
  check_adalora_options(options);
  SORA_CHECK(!modules.empty(), who, ": the model has no AdaLoRA module (lora_E)");
  AdaLoraBudgets b;
  for (const auto& m : modules) b.initial += m.rank();
  b.target = options.target_rank * static_cast<Index>(modules.size());
  SORA_CHECK(b.target <= b.initial, who, ": the target budget (", options.target_rank, " x ",
             modules.size(), " modules = ", b.target, ") exceeds the initial one (", b.initial,
             ")");
  return b;
}

// ---- selection -------------------------------------------------------------------------------

// The score of rank `rank` of module `module` (eq. 7), one entry of a selection.
template <class T>
struct TripletScore {
  T score;
  std::size_t module;
  Index rank;
};

// The rank pattern that keeps `budget` of the given triplets: the other ones, the lowest under
// the strict total order (score, module, rank), are masked (false). The order is total, so the
// masked set does not depend on the order of `triplets` (which is used as workspace and left
// permuted) and ties are broken by position. `pattern` holds one entry per rank of every
// module (every one is rewritten), and every triplet must name one of its entries.
// The one selection of the CPU allocator and of its device twin (cuda/adalora.cuh).
template <class T>
void select_rank_pattern(std::vector<TripletScore<T>>& triplets, Index budget,
                         std::vector<std::vector<bool>>& pattern) {
  SORA_CHECK(budget >= 0 && budget <= static_cast<Index>(triplets.size()),
             "select_rank_pattern: budget ", budget, " is not in [0, ", triplets.size(), "]");
  for (const TripletScore<T>& t : triplets)
    SORA_CHECK(t.module < pattern.size() && t.rank >= 0 &&
                   static_cast<std::size_t>(t.rank) < pattern[t.module].size(),
               "select_rank_pattern: rank ", t.rank, " of module ", t.module,
               " is outside the pattern");
  const std::size_t masked = triplets.size() - static_cast<std::size_t>(budget);
  std::nth_element(triplets.begin(), triplets.begin() + static_cast<std::ptrdiff_t>(masked),
                   triplets.end(), [](const TripletScore<T>& a, const TripletScore<T>& b) {
                     if (a.score != b.score) return a.score < b.score;
                     return a.module != b.module ? a.module < b.module : a.rank < b.rank;
                   });
  for (auto& p : pattern) std::fill(p.begin(), p.end(), true);
  for (std::size_t e = 0; e < masked; ++e)
    pattern[triplets[e].module][static_cast<std::size_t>(triplets[e].rank)] = false;
}

// The kept ranks (true entries) of each module of a rank pattern.
inline std::vector<Index> kept_per_module(const std::vector<std::vector<bool>>& pattern) {
  std::vector<Index> r;
  for (const auto& p : pattern)
    r.push_back(static_cast<Index>(std::count(p.begin(), p.end(), true)));
  return r;
}

// ---- rank allocator --------------------------------------------------------------------------

// The smoothed sensitivity Ī and uncertainty Ū of one tensor (its shape).
template <class T>
struct ImportanceStats {
  Matrix<T> sensitivity;                                                     // Ī
  Matrix<T> uncertainty;                                                     // Ū
  Matrix<T> score() const { return sensitivity.cwiseProduct(uncertainty); }  // s = Ī ⊙ Ū
};

template <class T>
struct ModuleImportance {
  ImportanceStats<T> A, B, E;
};

// What a RankAllocator learns while it runs (everything else follows from the modules and the
// options), as plain data for checkpoints: state() / load_state().
template <class T>
struct RankAllocatorState {
  std::vector<ModuleImportance<T>> importance;  // Ī and Ū of A, B, E, per module
  std::vector<std::vector<bool>> rank_pattern;  // per module (R), true = kept
  bool finalized = false;
  Index budget = -1;  // the last allocation's budget; -1 before the first step
};

template <class T>
class RankAllocator {
 public:
  RankAllocator() = default;
  RankAllocator(std::vector<AdaLoraModule<T>> modules, const AdaLoraOptions& options)
      : modules_(std::move(modules)), options_(options) {
    const AdaLoraBudgets b = adalora_budgets(modules_, options_, "RankAllocator");
    b_init_ = b.initial;
    b_target_ = b.target;
    stats_.resize(modules_.size());
    scores_.resize(modules_.size());
    pattern_.resize(modules_.size());
    for (std::size_t k = 0; k < modules_.size(); ++k) {
      pattern_[k].assign(static_cast<std::size_t>(modules_[k].rank()), true);
      scores_[k].setZero(modules_[k].rank());
    }
    order_.reserve(static_cast<std::size_t>(b_init_));
    reset_importance();
  }

  template <class Model>
  static RankAllocator for_model(Model& model, const AdaLoraOptions& options) {
    return RankAllocator(collect_adalora_modules<T>(model), options);
  }

  const std::vector<AdaLoraModule<T>>& modules() const { return modules_; }
  const AdaLoraOptions& options() const { return options_; }
  Index initial_budget() const { return b_init_; }
  Index target_budget() const { return b_target_; }
  BudgetStep budget_at(long t) const { return adalora_budget(t, b_init_, b_target_, options_); }

  // The statistics of module k (mutable: tests set hand-made scores through it).
  ModuleImportance<T>& importance(std::size_t k) { return stats_[k]; }
  const ModuleImportance<T>& importance(std::size_t k) const { return stats_[k]; }

  void reset_importance() {
    for (std::size_t k = 0; k < modules_.size(); ++k) {
      zero_like(stats_[k].A, modules_[k].A->value);
      zero_like(stats_[k].B, modules_[k].B->value);
      zero_like(stats_[k].E, modules_[k].E->value);
    }
  }

  // Eq. 8-10 for every element of every A, B, E, from the current values and gradients.
  // A frozen tensor (no gradient) keeps zero importance.
  void update_importance() {
    for (std::size_t k = 0; k < modules_.size(); ++k) {
      update_one(stats_[k].A, *modules_[k].A);
      update_one(stats_[k].B, *modules_[k].B);
      update_one(stats_[k].E, *modules_[k].E);
    }
  }

  // Eq. 7 for every triplet of module k: S_i = s(E_i) + mean_j s(A_ij) + mean_j s(B_ji).
  const std::vector<RowVector<T>>& triplet_scores() {
    for (std::size_t k = 0; k < modules_.size(); ++k) {
      const ModuleImportance<T>& st = stats_[k];
      RowVector<T>& S = scores_[k];  // (R)
      S = st.E.sensitivity.cwiseProduct(st.E.uncertainty).row(0);
      S += st.A.sensitivity.cwiseProduct(st.A.uncertainty).rowwise().mean().transpose();
      S += st.B.sensitivity.cwiseProduct(st.B.uncertainty).colwise().mean();
    }
    return scores_;
  }

  // Masks (E_i = 0) the b_init - budget triplets of lowest score over all modules, ties broken
  // by (module, rank) order; the pattern (true = kept) is stored and returned.
  const std::vector<std::vector<bool>>& mask_to_budget(Index budget) {
    SORA_CHECK(budget >= 0 && budget <= b_init_, "RankAllocator::mask_to_budget: budget ", budget,
               " is not in [0, ", b_init_, "]");
    triplet_scores();
    order_.clear();
    for (std::size_t k = 0; k < modules_.size(); ++k)
      for (Index i = 0; i < modules_[k].rank(); ++i) order_.push_back({scores_[k](i), k, i});
    select_rank_pattern(order_, budget, pattern_);
    apply_rank_pattern();
    return pattern_;
  }

  // E_i = 0 wherever the stored pattern says masked.
  void apply_rank_pattern() {
    for (std::size_t k = 0; k < modules_.size(); ++k) {
      Matrix<T>& E = modules_[k].E->value;
      for (Index i = 0; i < E.cols(); ++i)
        if (!pattern_[k][static_cast<std::size_t>(i)]) E(0, i) = T(0);
    }
  }

  // The allocation of step t (1-based), called after the optimizer step that used this
  // step's gradients (PEFT's AdaLoraModel.update_and_allocate). Returns the step's budget.
  BudgetStep update_and_allocate(long t) {
    const BudgetStep s = budget_at(t);
    switch (s.phase) {
      case AdaLoraPhase::warmup:
      case AdaLoraPhase::budgeting:
        update_importance();
        if (s.mask) mask_to_budget(s.budget);
        break;
      case AdaLoraPhase::finalize:
        update_importance();
        mask_to_budget(s.budget);
        finalized_ = true;
        reset_importance();
        break;
      case AdaLoraPhase::fixed:
        // Steps past the end without a finalization (an allocator attached late): finalize
        // from what is known, so the pattern is never left unset.
        if (!finalized_) {
          mask_to_budget(s.budget);
          finalized_ = true;
        }
        apply_rank_pattern();
        break;
    }
    budget_ = s.budget;
    return s;
  }

  // The pattern of the last allocation (all true before the first): true = rank kept.
  const std::vector<std::vector<bool>>& rank_pattern() const { return pattern_; }
  bool finalized() const { return finalized_; }
  Index current_budget() const { return budget_ < 0 ? b_init_ : budget_; }

  // Kept ranks per module under the current pattern (the final rank pattern once finalized).
  std::vector<Index> ranks() const { return kept_per_module(pattern_); }

  double orthogonal_regularizer(bool accumulate_grad) const {
    return optim::orthogonal_regularizer(modules_, options_.orth_reg_weight, accumulate_grad);
  }

  RankAllocatorState<T> state() const {
    return RankAllocatorState<T>{stats_, pattern_, finalized_, budget_};
  }

  // Restores a saved state; every shape must fit this allocator's modules. The pattern is not
  // re-applied: the saved E already obeys it.
  void load_state(RankAllocatorState<T> state) {
    SORA_CHECK(
        state.importance.size() == modules_.size() && state.rank_pattern.size() == modules_.size(),
        "RankAllocator::load_state: state for ", state.importance.size(), " modules and ",
        state.rank_pattern.size(), " patterns, the allocator has ", modules_.size());
    SORA_CHECK(state.budget >= -1 && state.budget <= b_init_, "RankAllocator::load_state: budget ",
               state.budget, " is not in [-1, ", b_init_, "]");
    for (std::size_t k = 0; k < modules_.size(); ++k) {
      const AdaLoraModule<T>& m = modules_[k];
      const ModuleImportance<T>& st = state.importance[k];
      const auto fits = [](const ImportanceStats<T>& s, const Param<T>* p) {
        return s.sensitivity.rows() == p->value.rows() && s.sensitivity.cols() == p->value.cols() &&
               s.uncertainty.rows() == p->value.rows() && s.uncertainty.cols() == p->value.cols();
      };
      SORA_CHECK(fits(st.A, m.A) && fits(st.B, m.B) && fits(st.E, m.E),
                 "RankAllocator::load_state: the importance of module '", m.name,
                 "' does not fit its A ", shape_of(m.A->value), ", B ", shape_of(m.B->value),
                 " and E ", shape_of(m.E->value));
      SORA_CHECK(static_cast<Index>(state.rank_pattern[k].size()) == m.rank(),
                 "RankAllocator::load_state: the rank pattern of module '", m.name, "' has ",
                 state.rank_pattern[k].size(), " entries, the module rank ", m.rank());
    }
    stats_ = std::move(state.importance);
    pattern_ = std::move(state.rank_pattern);
    finalized_ = state.finalized;
    budget_ = state.budget;
  }

 private:
  static void zero_like(ImportanceStats<T>& s, const Matrix<T>& like) {
    s.sensitivity.setZero(like.rows(), like.cols());
    s.uncertainty.setZero(like.rows(), like.cols());
  }

  void update_one(ImportanceStats<T>& s, const Param<T>& p) {
    if (!p.trainable()) return;
    SORA_CHECK(s.sensitivity.rows() == p.value.rows() && s.sensitivity.cols() == p.value.cols(),
               "RankAllocator: '", p.name, "' changed shape to ", shape_of(p.value),
               " (rebuild the allocator after pruning)");
    const T b1 = static_cast<T>(options_.beta1), b2 = static_cast<T>(options_.beta2);
    const auto I = (p.value.array() * p.gradient().array()).abs();  // eq. 8, recomputed lazily
    auto Ibar = s.sensitivity.array();
    auto Ubar = s.uncertainty.array();
    Ibar = b1 * Ibar + (T(1) - b1) * I;                 // eq. 9
    Ubar = b2 * Ubar + (T(1) - b2) * (I - Ibar).abs();  // eq. 10, with the new Ī
  }

  std::vector<AdaLoraModule<T>> modules_;
  AdaLoraOptions options_;
  Index b_init_ = 0, b_target_ = 0, budget_ = -1;
  bool finalized_ = false;
  std::vector<ModuleImportance<T>> stats_;
  std::vector<RowVector<T>> scores_;        // per module (R)
  std::vector<std::vector<bool>> pattern_;  // per module (R), true = kept
  std::vector<TripletScore<T>> order_;      // selection workspace (b_init)
};

// ---- the optimizer ---------------------------------------------------------------------------

// An AdaLoraOptimizer's state for checkpoints: the AdamW step and moments, the allocator's
// state and the last regularizer value. (The last step's budget follows from the step.)
template <class T>
struct AdaLoraOptimizerState {
  long step = 0;
  std::vector<AdamState<T>> adamw;
  RankAllocatorState<T> allocator;
  double orth_loss = 0.0;
};

template <class T>
class AdaLoraOptimizer {
 public:
  // AdamW over every trainable parameter of the model (weight decay adamw.weight_decay on
  // matrices, 0 on vectors), and the rank allocator over its AdaLoRA modules.
  template <class Model>
  AdaLoraOptimizer(Model& model, const AdamWOptions& adamw, const AdaLoraOptions& options)
      : base_lr_(adamw.lr) {
    std::vector<Param<T>*> params;
    model.visit_params([&](Param<T>& p) {
      if (p.trainable()) params.push_back(&p);
    });
    adamw_ = AdamW<T>(params, adamw);
    std::vector<std::string> vectors;
    for (const Param<T>* p : params)
      if (p->is_vector) vectors.push_back(p->name);
    adamw_.set_weight_decay_if(
        [&](std::string_view name) {
          return std::find(vectors.begin(), vectors.end(), name) != vectors.end();
        },
        0.0);
    allocator_ = RankAllocator<T>::for_model(model, options);
  }

  // Adds the orthogonal regularizer's gradient now and returns its value. Call it before
  // gradient clipping to clip the regularizer's gradient with the loss's, as PEFT does (there
  // it is part of the loss); step() then does not add it again. Otherwise step() adds it.
  double add_orth_regularizer() {
    orth_loss_ = allocator_.orthogonal_regularizer(true);
    orth_added_ = true;
    return orth_loss_;
  }

  // Regularizer gradient (if not added yet) -> AdamW -> importance and allocation.
  void step() {
    // Before the regularizer reads the modules: a model pruned since the optimizer was built
    // is refused, naming the parameter, rather than read at its old shapes.
    adamw_.check_all_fit("AdaLoraOptimizer");
    if (!orth_added_) add_orth_regularizer();
    adamw_.step();
    last_ = allocator_.update_and_allocate(adamw_.step_count());
    orth_added_ = false;
  }

  void zero_grad() { adamw_.zero_grad(); }
  void set_lr_multiplier(double multiplier) { adamw_.set_lr(base_lr_ * multiplier); }
  // AdamW checks the rate first, so a rejected value leaves both the rate and the base rate
  // (which later set_lr_multiplier calls multiply) as they were.
  void set_lr(double lr) {
    adamw_.set_lr(lr);
    base_lr_ = lr;
  }
  double lr() const { return adamw_.lr(); }
  double base_lr() const { return base_lr_; }  // the rate set_lr_multiplier multiplies

  long step_count() const { return adamw_.step_count(); }
  double orth_loss() const { return orth_loss_; }          // the regularizer at the last step
  const BudgetStep& last_budget() const { return last_; }  // the last step's budget and phase
  RankAllocator<T>& allocator() { return allocator_; }
  const RankAllocator<T>& allocator() const { return allocator_; }
  AdamW<T>& adamw() { return adamw_; }
  const AdamW<T>& adamw() const { return adamw_; }
  std::size_t state_bytes() const { return adamw_.state_bytes(); }

  AdaLoraOptimizerState<T> state() const {
    return AdaLoraOptimizerState<T>{adamw_.step_count(), adamw_.state(), allocator_.state(),
                                    orth_loss_};
  }

  // Restores a saved state (both parts are checked before either is changed). Taken between
  // steps, so no regularizer gradient is pending.
  void load_state(AdaLoraOptimizerState<T> state) {
    AdamW<T> adamw = adamw_;
    adamw.load_state(state.step, std::move(state.adamw));
    RankAllocator<T> allocator = allocator_;
    allocator.load_state(std::move(state.allocator));
    adamw_ = std::move(adamw);
    allocator_ = std::move(allocator);
    orth_loss_ = state.orth_loss;
    orth_added_ = false;
    last_ = state.step > 0 ? allocator_.budget_at(state.step) : BudgetStep{};
  }

 private:
  double base_lr_ = 1e-3;
  AdamW<T> adamw_;
  RankAllocator<T> allocator_;
  double orth_loss_ = 0.0;
  bool orth_added_ = false;
  BudgetStep last_;
};

}  // namespace sora::optim

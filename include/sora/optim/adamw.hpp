#pragma once
// AdamW (Loshchilov & Hutter, decoupled weight decay), in torch.optim.AdamW's form:
//   p <- p (1 - lr wd)                                  decoupled decay, on the old p
//   m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g²
//   p <- p - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// with t the step count after increment (the first step has t = 1).
//
// The optimizer takes a list of parameters and keeps state (m, v) only for the trainable
// ones: a frozen parameter owns no gradient and no moments, which is where parameter-efficient
// fine-tuning saves its memory. Weight decay is per parameter, so biases and LayerNorm scales
// can use 0 (see `no_decay_by_name`). The step's scalars are computed once in double on the
// host and handed to the elementwise update in T; the CUDA twin (cuda/optim.cuh) uses the same
// scalars, so both sides round the same way up to FMA contraction.
//
// State is plain data (step count, per-parameter moments by name) so a checkpoint can write
// it and read it back (`state()`, `load_state()`).

#include <cmath>
#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sora/core/error.hpp"
#include "sora/core/param.hpp"
#include "sora/core/tensor.hpp"

namespace sora::optim {

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;  // default for every parameter; override per parameter
};

// The scalars of one AdamW step, shared with the CUDA kernels.
struct AdamWScalars {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double step_size = 0.0;     // lr / (1 - b1^t)
  double inv_sqrt_bc2 = 1.0;  // 1 / sqrt(1 - b2^t)
  double eps = 1e-8;
  double lr = 0.0;
};

inline AdamWScalars adamw_scalars(const AdamWOptions& o, long step) {
  AdamWScalars s;
  s.beta1 = o.beta1;
  s.beta2 = o.beta2;
  s.eps = o.eps;
  s.lr = o.lr;
  const double t = static_cast<double>(step);
  s.step_size = o.lr / (1.0 - std::pow(o.beta1, t));
  s.inv_sqrt_bc2 = 1.0 / std::sqrt(1.0 - std::pow(o.beta2, t));
  return s;
}

inline void check_adamw_options(const char* who, const AdamWOptions& o) {
  SORA_CHECK(std::isfinite(o.lr) && o.lr >= 0.0, who, ": lr must be finite and >= 0, got ", o.lr);
  SORA_CHECK(o.beta1 >= 0.0 && o.beta1 < 1.0, who, ": beta1 must be in [0, 1), got ", o.beta1);
  SORA_CHECK(o.beta2 >= 0.0 && o.beta2 < 1.0, who, ": beta2 must be in [0, 1), got ", o.beta2);
  SORA_CHECK(std::isfinite(o.eps) && o.eps >= 0.0, who, ": eps must be finite and >= 0, got ",
             o.eps);
  SORA_CHECK(std::isfinite(o.weight_decay) && o.weight_decay >= 0.0, who,
             ": weight_decay must be finite and >= 0, got ", o.weight_decay);
}

// True for names that conventionally get no weight decay: biases and LayerNorm parameters
// ("...bias", "...ln_1.weight", "...norm.weight", "...layernorm...").
inline bool no_decay_by_name(std::string_view name) {
  const auto ends_with = [&](std::string_view s) {
    return name.size() >= s.size() && name.substr(name.size() - s.size()) == s;
  };
  return ends_with("bias") || name.find("ln") != std::string_view::npos ||
         name.find("norm") != std::string_view::npos;
}

// The moments of one trainable parameter.
template <class T>
struct AdamState {
  std::string name;
  Matrix<T> m;  // first moment, the parameter's shape
  Matrix<T> v;  // second moment, the parameter's shape
  double weight_decay = 0.0;
};

namespace detail {

// One elementwise AdamW update of p (in place), moments m and v, from gradient g.
template <class T>
void adamw_update(Matrix<T>& p, Matrix<T>& m, Matrix<T>& v, const Matrix<T>& g,
                  const AdamWScalars& s, double weight_decay) {
  const T b1 = static_cast<T>(s.beta1), b2 = static_cast<T>(s.beta2);
  const T c1 = static_cast<T>(1.0 - s.beta1), c2 = static_cast<T>(1.0 - s.beta2);
  const T step_size = static_cast<T>(s.step_size);
  const T inv_sqrt_bc2 = static_cast<T>(s.inv_sqrt_bc2);
  const T eps = static_cast<T>(s.eps);
  auto pa = p.array();
  auto ma = m.array();
  auto va = v.array();
  const auto ga = g.array();
  if (weight_decay != 0.0) pa *= static_cast<T>(1.0 - s.lr * weight_decay);
  ma = b1 * ma + c1 * ga;
  va = b2 * va + c2 * ga.square();
  pa -= step_size * ma / (va.sqrt() * inv_sqrt_bc2 + eps);
}

}  // namespace detail

template <class T>
class AdamW {
 public:
  AdamW() = default;
  // params: any mix of trainable and frozen parameters (null entries are ignored); only the
  // trainable ones get state. The pointers must outlive the optimizer.
  AdamW(std::vector<Param<T>*> params, AdamWOptions options) : options_(options) {
    check_adamw_options("AdamW", options_);
    for (Param<T>* p : params) {
      if (p == nullptr || !p->trainable()) continue;
      AdamState<T> st;
      st.name = p->name;
      st.m.setZero(p->value.rows(), p->value.cols());
      st.v.setZero(p->value.rows(), p->value.cols());
      st.weight_decay = options_.weight_decay;
      params_.push_back(p);
      state_.push_back(std::move(st));
    }
  }

  // Sets the weight decay of every parameter for which pred(name) is true, e.g.
  // `opt.set_weight_decay_if(no_decay_by_name, 0.0)`.
  template <class Pred>
  void set_weight_decay_if(Pred&& pred, double weight_decay) {
    SORA_CHECK(std::isfinite(weight_decay) && weight_decay >= 0.0,
               "AdamW: weight_decay must be finite and >= 0, got ", weight_decay);
    for (auto& st : state_) {
      if (pred(std::string_view(st.name))) st.weight_decay = weight_decay;
    }
  }

  void set_weight_decay(const std::string& name, double weight_decay) {
    set_weight_decay_if([&](std::string_view n) { return n == name; }, weight_decay);
  }

  void set_lr(double lr) {
    SORA_CHECK(std::isfinite(lr) && lr >= 0.0, "AdamW: lr must be finite and >= 0, got ", lr);
    options_.lr = lr;
  }
  double lr() const { return options_.lr; }
  const AdamWOptions& options() const { return options_; }

  // One step over every trainable parameter, reading its gradient. Throws if a parameter was
  // frozen or reshaped since the optimizer was built (its state would not fit).
  void step() {
    check_all_fit("AdamW");  // before anything changes: a refused step changes nothing
    ++step_;
    const AdamWScalars s = adamw_scalars(options_, step_);
    for (std::size_t i = 0; i < params_.size(); ++i) {
      Param<T>& p = *params_[i];
      AdamState<T>& st = state_[i];
      detail::adamw_update(p.value, st.m, st.v, p.gradient(), s, st.weight_decay);
    }
  }

  void zero_grad() {
    for (Param<T>* p : params_) p->zero_grad();
  }

  // Throws, naming the parameter, when one was frozen, replaced or reshaped since the optimizer
  // was built (its state would not fit).
  void check_all_fit(const char* who) const {
    for (std::size_t i = 0; i < params_.size(); ++i) check_fits(who, *params_[i], state_[i]);
  }

  long step_count() const { return step_; }
  const std::vector<AdamState<T>>& state() const { return state_; }
  const std::vector<Param<T>*>& params() const { return params_; }

  // The state of a parameter by name, or nullptr (frozen parameters have none).
  const AdamState<T>* state_for(std::string_view name) const {
    for (const auto& st : state_) {
      if (st.name == name) return &st;
    }
    return nullptr;
  }

  // Restores a saved state (a checkpoint): names and shapes must match this optimizer's.
  void load_state(long step, std::vector<AdamState<T>> state) {
    SORA_CHECK(step >= 0, "AdamW::load_state: step must be >= 0, got ", step);
    SORA_CHECK(state.size() == state_.size(), "AdamW::load_state: ", state.size(),
               " parameter states given, the optimizer has ", state_.size());
    for (std::size_t i = 0; i < state.size(); ++i) {
      const Param<T>& p = *params_[i];
      SORA_CHECK(state[i].name == state_[i].name, "AdamW::load_state: state ", i, " is for '",
                 state[i].name, "' but the optimizer's parameter ", i, " is '", state_[i].name,
                 "'");
      SORA_CHECK(state[i].m.rows() == p.value.rows() && state[i].m.cols() == p.value.cols() &&
                     state[i].v.rows() == p.value.rows() && state[i].v.cols() == p.value.cols(),
                 "AdamW::load_state: moments of '", p.name, "' have shapes ", shape_of(state[i].m),
                 " and ", shape_of(state[i].v), ", the parameter has ", shape_of(p.value));
    }
    step_ = step;
    state_ = std::move(state);
  }

  // Takes over `previous`'s step count and the moments of every parameter that kept its name
  // and shape (the rest keep their zero moments): an optimizer rebuilt after pruning continues
  // where the old one was. Reads only `previous`'s own state, never its parameters (a pruned
  // module's old parameters no longer exist).
  void carry_over_from(const AdamW& previous) {
    step_ = previous.step_;
    for (AdamState<T>& st : state_) {
      const AdamState<T>* old = previous.state_for(st.name);
      if (old == nullptr || old->m.rows() != st.m.rows() || old->m.cols() != st.m.cols()) continue;
      st.m = old->m;
      st.v = old->v;
    }
  }

  // Bytes of optimizer state (two moments per trainable element).
  std::size_t state_bytes() const {
    std::size_t bytes = 0;
    for (const auto& st : state_) {
      bytes += static_cast<std::size_t>(st.m.size() + st.v.size()) * sizeof(T);
    }
    return bytes;
  }

 protected:
  // Named by the state's name, the parameter's name when the optimizer was built: a parameter
  // that pruning replaced has not been named yet.
  static void check_fits(const char* who, const Param<T>& p, const AdamState<T>& st) {
    SORA_CHECK(p.trainable(), who, ": parameter '", st.name,
               "' was frozen or replaced after the optimizer was built (after pruning, rebind "
               "the optimizer to the model: FineTuneOptimizer::rebind)");
    SORA_CHECK(p.value.rows() == st.m.rows() && p.value.cols() == st.m.cols(), who, ": parameter '",
               st.name, "' has shape ", shape_of(p.value), " but its optimizer state has ",
               shape_of(st.m),
               " (after pruning, rebind the optimizer to the model: FineTuneOptimizer::rebind)");
  }

  AdamWOptions options_;
  long step_ = 0;
  std::vector<Param<T>*> params_;    // trainable only
  std::vector<AdamState<T>> state_;  // parallel to params_
};

}  // namespace sora::optim

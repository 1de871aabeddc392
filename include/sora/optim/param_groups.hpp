#pragma once
// Parameter groups of a fine-tuning run and the optimizer that serves them (docs/design.md 4):
//   decay      trainable matrices (weights, embeddings, lora_A, lora_B): AdamW, weight decay
//   no_decay   trainable vectors (biases, LayerNorm scales and shifts, AdaLoRA's lora_E):
//              AdamW without weight decay
//   gates      SoRA gates (ParamRole::gate): SparseAdamW, an AdamW step without weight decay
//              followed by the proximal step of the L1 penalty (soft threshold at ξ)
// Frozen parameters belong to no group: they have no gradient and get no optimizer state.
// Groups are read from each parameter's role, set by the layer that owns it, never from its
// name: a model of one's own may name its modules as it likes.

#include <cstddef>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "sora/core/concepts.hpp"
#include "sora/core/param.hpp"
#include "sora/optim/adamw.hpp"
#include "sora/optim/sparse_adamw.hpp"

namespace sora::optim {

// A gate is a parameter whose role says so.
template <class T, class Backend>
bool is_sora_gate(const Param<T, Backend>& p) {
  return p.role == ParamRole::gate;
}

template <class T>
struct ParamGroups {
  std::vector<Param<T>*> decay;
  std::vector<Param<T>*> no_decay;
  std::vector<Param<T>*> gates;

  // Every trainable parameter, in the order decay, no_decay, gates.
  std::vector<Param<T>*> all() const {
    std::vector<Param<T>*> out(decay);
    out.insert(out.end(), no_decay.begin(), no_decay.end());
    out.insert(out.end(), gates.begin(), gates.end());
    return out;
  }
};

// Groups the trainable parameters of anything with visit_params(fn): gates by role; of the
// rest, vectors (biases, norms, AdaLoRA's E: Param::is_vector) without weight decay, which is
// the usual "no decay for 1-D tensors" rule.
template <class T, class Model>
ParamGroups<T> group_parameters(Model& model) {
  SORA_REQUIRE_VISIT_PARAMS(Model, "optim::group_parameters");
  ParamGroups<T> groups;
  model.visit_params([&](Param<T>& p) {
    if (!p.trainable()) return;
    if (is_sora_gate(p)) {
      groups.gates.push_back(&p);
    } else if (p.is_vector) {
      groups.no_decay.push_back(&p);
    } else {
      groups.decay.push_back(&p);
    }
  });
  return groups;
}

struct FineTuneOptions {
  double lr = 8e-4;  // AdamW's base learning rate
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.1;  // for the decay group
  double gate_lr = -1.0;      // the gates' base learning rate; < 0: the same as lr
  double xi = 0.0;            // SoRA's sparsity threshold ξ (0: dense training)
  bool scale_xi_by_lr = false;
  bool official_compat = false;  // see optim/sparse_adamw.hpp; never the default
};

// The paper's official defaults (docs/design.md 4): lr 8e-4 for both optimizers, ξ = 3e-4 per
// step.
inline FineTuneOptions sora_official_options() {
  FineTuneOptions o;
  o.lr = 8e-4;
  o.gate_lr = 8e-4;
  o.xi = 3e-4;
  return o;
}

// AdamW over the decay and no-decay groups, SparseAdamW over the gates, stepped together.
template <class T>
class FineTuneOptimizer {
 public:
  FineTuneOptimizer(const ParamGroups<T>& groups, const FineTuneOptions& options)
      : options_(options), params_(groups.all()) {
    AdamWOptions a;
    a.lr = options.lr;
    a.beta1 = options.beta1;
    a.beta2 = options.beta2;
    a.eps = options.eps;
    a.weight_decay = options.weight_decay;
    std::vector<Param<T>*> dense(groups.decay);
    dense.insert(dense.end(), groups.no_decay.begin(), groups.no_decay.end());
    adamw_ = AdamW<T>(dense, a);
    std::set<std::string, std::less<>> no_decay;
    for (const Param<T>* p : groups.no_decay) no_decay.insert(p->name);
    adamw_.set_weight_decay_if([&](std::string_view name) { return no_decay.count(name) > 0; },
                               0.0);
    SparseAdamWOptions s;
    s.lr = gate_base_lr();
    s.beta1 = options.beta1;
    s.beta2 = options.beta2;
    s.eps = options.eps;
    s.xi = options.xi;
    s.scale_xi_by_lr = options.scale_xi_by_lr;
    s.official_compat = options.official_compat;
    gates_ = SparseAdamW<T>(groups.gates, s);
  }

  template <class Model>
  static FineTuneOptimizer for_model(Model& model, const FineTuneOptions& options) {
    SORA_REQUIRE_VISIT_PARAMS(Model, "FineTuneOptimizer::for_model");
    return FineTuneOptimizer(group_parameters<T>(model), options);
  }

  // After pruning (which replaces the adapters' parameters) or any other change to which
  // parameters train: the optimizer over the model's parameters as they are now. A parameter
  // that kept its name and shape keeps its moments, and the step count, learning rates and ξ
  // carry over; a pruned adapter's A and B (new shapes) start from zero moments. Stepping an
  // optimizer that was not rebound throws, naming the parameter, where the pruned parameters
  // still exist; a module pruned to rank 0 loses its adapter and its parameters with it, so
  // rebind before calling anything else on the optimizer.
  template <class Model>
  void rebind(Model& model) {
    SORA_REQUIRE_VISIT_PARAMS(Model, "FineTuneOptimizer::rebind");
    FineTuneOptimizer next(group_parameters<T>(model), options_);
    next.adamw_.carry_over_from(adamw_);
    next.gates_.carry_over_from(gates_);
    next.adamw_.set_lr(adamw_.lr());
    next.gates_.set_lr(gates_.lr());
    next.gates_.set_xi(gates_.xi());
    *this = std::move(next);
  }

  void step() {
    gates_.check_all_fit("SparseAdamW");  // both checked before either steps
    adamw_.step();
    gates_.step();
  }
  void zero_grad() {
    adamw_.zero_grad();
    gates_.zero_grad();
  }

  // For learning-rate schedules: both base rates times `multiplier`. (With an lr-scaled ξ
  // the gates' threshold follows.)
  void set_lr_multiplier(double multiplier) {
    adamw_.set_lr(options_.lr * multiplier);
    gates_.set_lr(gate_base_lr() * multiplier);
  }
  void set_xi(double xi) { gates_.set_xi(xi); }
  double xi() const { return gates_.xi(); }

  AdamW<T>& adamw() { return adamw_; }
  const AdamW<T>& adamw() const { return adamw_; }
  SparseAdamW<T>& gate_optimizer() { return gates_; }
  const SparseAdamW<T>& gate_optimizer() const { return gates_; }
  const std::vector<Param<T>*>& params() const { return params_; }

  // The optimizer state of a parameter by name (nullptr for frozen parameters).
  const AdamState<T>* state_for(std::string_view name) const {
    const AdamState<T>* s = adamw_.state_for(name);
    return s != nullptr ? s : gates_.state_for(name);
  }
  std::size_t state_bytes() const { return adamw_.state_bytes() + gates_.state_bytes(); }

 private:
  double gate_base_lr() const { return options_.gate_lr < 0.0 ? options_.lr : options_.gate_lr; }

  FineTuneOptions options_;
  std::vector<Param<T>*> params_;
  AdamW<T> adamw_;
  SparseAdamW<T> gates_;
};

}  // namespace sora::optim

#pragma once
// FineTuneOptimizer on the GPU (the device twin of optim/param_groups.hpp): AdamW over the
// decay and no-decay groups, SparseAdamW over SoRA's gates, with the groups, options, step
// counting and learning-rate rules of the CPU optimizer, and gradient-norm clipping.
//
// One step is one fused kernel per dense parameter (cuda/optim.cuh adamw_step) and ONE kernel
// for every gate of the model (GateBatch); clipping is a cuBLAS norm per gradient written to
// device memory, one kernel for the factor and one scaling kernel per gradient (cuda/clip.cuh,
// shared with the AdaLoRA optimizer): nothing is read back, so a step never waits for the GPU.
//
// Checkpoints: save_to / load_from exchange the whole state (moments, step, learning rates, ξ)
// with a CPU FineTuneOptimizer built over the CPU twin of the model (cuda::copy_model), which
// io::save_checkpoint / load_checkpoint read and write.

#include <string>
#include <vector>

#include "sora/cuda/backend.cuh"
#include "sora/cuda/clip.cuh"
#include "sora/cuda/context.cuh"
#include "sora/cuda/gate_l1.cuh"  // train::fit on device models finds it with this optimizer
#include "sora/cuda/optim.cuh"
#include "sora/cuda/tensor.cuh"
#include "sora/optim/param_groups.hpp"

namespace sora::cuda {

template <class T>
class DeviceFineTuneOptimizer {
 public:
  using DeviceParam = Param<T, Cuda>;

  // Groups the trainable parameters of `model` (anything with visit_params over
  // Param<T, Cuda>) as optim::group_parameters does: gates by name, vectors without decay.
  template <class Model>
  DeviceFineTuneOptimizer(Model& model, const sora::optim::FineTuneOptions& options)
      : options_(options) {
    SORA_CHECK(options.lr >= 0.0 && options.weight_decay >= 0.0 && options.xi >= 0.0,
               "DeviceFineTuneOptimizer: lr, weight_decay and xi must be >= 0");
    model.visit_params([&](DeviceParam& p) {
      if (!p.trainable()) return;
      Slot s;
      s.p = &p;
      s.name = p.name;
      s.gate = sora::optim::is_sora_gate(p);
      s.weight_decay = (s.gate || p.is_vector) ? 0.0 : options.weight_decay;
      s.m = DeviceTensor<T>::zeros(p.value.rows(), p.value.cols(), context().stream());
      s.v = DeviceTensor<T>::zeros(p.value.rows(), p.value.cols(), context().stream());
      slots_.push_back(std::move(s));
    });
    std::vector<typename optim::GateBatch<T>::Entry> gates;
    for (Slot& s : slots_) {
      if (s.gate)
        gates.push_back({s.p->value.view(), s.p->gradient().view(), s.m.view(), s.v.view()});
    }
    gates_ = optim::GateBatch<T>(gates);
    std::vector<DeviceParam*> trainable;
    for (Slot& s : slots_) trainable.push_back(s.p);
    clipper_ = GradNormClipper<T>(std::move(trainable));
    lr_ = options.lr;
    gate_lr_ = gate_base_lr();
    xi_ = options.xi;
  }

  DeviceFineTuneOptimizer(const DeviceFineTuneOptimizer&) = delete;
  DeviceFineTuneOptimizer& operator=(const DeviceFineTuneOptimizer&) = delete;

  void step() {
    ++step_;
    const sora::optim::AdamWScalars dense = scalars(lr_);
    for (Slot& s : slots_) {
      if (s.gate) continue;
      SORA_CHECK(s.p->trainable(), "DeviceFineTuneOptimizer: parameter '", s.name,
                 "' was frozen after the optimizer was built");
      optim::adamw_step(s.p->value, s.p->gradient(), s.m, s.v, dense, s.weight_decay,
                        context().stream());
    }
    gates_.step(scalars(gate_lr_), threshold(), options_.official_compat, context().stream());
  }

  void zero_grad() {
    for (Slot& s : slots_) s.p->zero_grad();
  }

  // Scales every gradient so that their global L2 norm is at most max_norm (0: off), on the
  // device, without reading anything back.
  void clip_grad_norm(double max_norm) { clipper_.clip(max_norm); }
  // The global norm before the last clipping (reads it back: for logging only).
  double last_grad_norm() const { return clipper_.last_norm(); }

  // As the CPU optimizer: both base rates times `multiplier`.
  void set_lr_multiplier(double multiplier) {
    lr_ = options_.lr * multiplier;
    gate_lr_ = gate_base_lr() * multiplier;
  }
  void set_xi(double xi) {
    SORA_CHECK(xi >= 0.0, "DeviceFineTuneOptimizer: xi must be >= 0, got ", xi);
    xi_ = xi;
  }
  double xi() const { return xi_; }
  double lr() const { return lr_; }
  double gate_lr() const { return gate_lr_; }
  long step_count() const { return step_; }
  double threshold() const { return options_.scale_xi_by_lr ? xi_ * gate_lr_ : xi_; }
  Index gate_tensors() const { return gates_.tensors(); }
  std::size_t state_bytes() const {
    std::size_t b = 0;
    for (const Slot& s : slots_) b += s.m.bytes() + s.v.bytes();
    return b;
  }

  // The whole state into a CPU FineTuneOptimizer built over the CPU twin of the model.
  void save_to(sora::optim::FineTuneOptimizer<T>& host) const {
    host.adamw().load_state(step_, states_for(host.adamw().state(), "adamw"));
    host.gate_optimizer().load_state(step_, states_for(host.gate_optimizer().state(), "gates"));
    host.adamw().set_lr(lr_);
    host.gate_optimizer().set_lr(gate_lr_);
    host.set_xi(xi_);
  }
  // The whole state from a CPU FineTuneOptimizer (a loaded checkpoint).
  void load_from(const sora::optim::FineTuneOptimizer<T>& host) {
    SORA_CHECK(host.adamw().step_count() == host.gate_optimizer().step_count(),
               "DeviceFineTuneOptimizer::load_from: the CPU optimizer's parts are at different "
               "steps");
    std::size_t found = 0;
    for (Slot& s : slots_) {
      const sora::optim::AdamState<T>* st = host.state_for(s.name);
      SORA_CHECK(st != nullptr, "DeviceFineTuneOptimizer::load_from: no state for '", s.name,
                 "' in the CPU optimizer");
      Cuda::upload(s.m, st->m);
      Cuda::upload(s.v, st->v);
      SORA_CHECK(s.m.rows() == s.p->value.rows() && s.m.cols() == s.p->value.cols(),
                 "DeviceFineTuneOptimizer::load_from: the state of '", s.name,
                 "' does not have the parameter's shape");
      ++found;
    }
    SORA_CHECK(found == host.adamw().state().size() + host.gate_optimizer().state().size(),
               "DeviceFineTuneOptimizer::load_from: the CPU optimizer has state for other "
               "parameters");
    step_ = host.adamw().step_count();
    lr_ = host.adamw().lr();
    gate_lr_ = host.gate_optimizer().lr();
    xi_ = host.xi();
    SORA_CUDA_CHECK(cudaStreamSynchronize(context().stream()));
  }

 private:
  struct Slot {
    DeviceParam* p = nullptr;
    std::string name;
    bool gate = false;
    double weight_decay = 0.0;
    DeviceTensor<T> m, v;  // the parameter's shape
  };

  double gate_base_lr() const { return options_.gate_lr < 0.0 ? options_.lr : options_.gate_lr; }

  sora::optim::AdamWScalars scalars(double lr) const {
    sora::optim::AdamWOptions o;
    o.lr = lr;
    o.beta1 = options_.beta1;
    o.beta2 = options_.beta2;
    o.eps = options_.eps;
    return sora::optim::adamw_scalars(o, step_);
  }

  // The device moments in the order and with the weight decays of a CPU optimizer's states.
  std::vector<sora::optim::AdamState<T>> states_for(
      const std::vector<sora::optim::AdamState<T>>& layout, const char* part) const {
    std::vector<sora::optim::AdamState<T>> out;
    for (const auto& want : layout) {
      const Slot* s = nullptr;
      for (const Slot& c : slots_) {
        if (c.name == want.name) s = &c;
      }
      SORA_CHECK(s != nullptr, "DeviceFineTuneOptimizer::save_to: the CPU optimizer's ", part,
                 " has '", want.name, "', which this optimizer does not train");
      sora::optim::AdamState<T> st;
      st.name = want.name;
      st.m = s->m.to_host(context().stream());
      st.v = s->v.to_host(context().stream());
      st.weight_decay = want.weight_decay;
      out.push_back(std::move(st));
    }
    return out;
  }

  sora::optim::FineTuneOptions options_;
  std::vector<Slot> slots_;
  optim::GateBatch<T> gates_;
  GradNormClipper<T> clipper_;  // every trainable parameter's gradient
  double lr_ = 0.0, gate_lr_ = 0.0, xi_ = 0.0;
  long step_ = 0;
};

}  // namespace sora::cuda

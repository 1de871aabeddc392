#pragma once
// SGD with momentum, in torch.optim.SGD's form (weight decay coupled into the gradient, as
// an L2 penalty; the first step seeds the momentum buffer with the gradient itself):
//   d <- g + wd p
//   buf <- d                                    first step
//   buf <- momentum buf + (1 - dampening) d     later steps
//   d <- d + momentum buf   (nesterov)   or   d <- buf
//   p <- p - lr d
// State (the momentum buffer) exists only for trainable parameters and only when
// momentum != 0: frozen parameters own neither a gradient nor state.

#include <cmath>
#include <cstddef>
#include <string_view>
#include <vector>

#include "sora/core/error.hpp"
#include "sora/core/param.hpp"
#include "sora/core/tensor.hpp"

namespace sora::optim {

struct SgdOptions {
  double lr = 1e-2;
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;
};

template <class T>
class SGD {
 public:
  SGD() = default;
  // params: any mix of trainable and frozen parameters (null entries ignored); the pointers
  // must outlive the optimizer.
  SGD(std::vector<Param<T>*> params, SgdOptions options) : options_(options), base_lr_(options.lr) {
    SORA_CHECK(std::isfinite(options.lr) && options.lr >= 0.0,
               "SGD: lr must be finite and >= 0, got ", options.lr);
    SORA_CHECK(options.momentum >= 0.0 && options.momentum < 1.0,
               "SGD: momentum must be in [0, 1), got ", options.momentum);
    SORA_CHECK(options.dampening >= 0.0 && options.dampening <= 1.0,
               "SGD: dampening must be in [0, 1], got ", options.dampening);
    SORA_CHECK(std::isfinite(options.weight_decay) && options.weight_decay >= 0.0,
               "SGD: weight_decay must be finite and >= 0, got ", options.weight_decay);
    SORA_CHECK(!options.nesterov || (options.momentum > 0.0 && options.dampening == 0.0),
               "SGD: Nesterov momentum needs momentum > 0 and zero dampening");
    for (Param<T>* p : params) {
      if (p == nullptr || !p->trainable()) continue;
      params_.push_back(p);
      buffers_.emplace_back();
      if (options.momentum != 0.0) buffers_.back().setZero(p->value.rows(), p->value.cols());
    }
  }

  void step() {
    const T lr = static_cast<T>(options_.lr), mu = static_cast<T>(options_.momentum);
    const T damp = static_cast<T>(1.0 - options_.dampening);
    const T wd = static_cast<T>(options_.weight_decay);
    for (std::size_t i = 0; i < params_.size(); ++i) {
      Param<T>& p = *params_[i];
      SORA_CHECK(p.trainable() && p.gradient().rows() == p.value.rows() &&
                     p.gradient().cols() == p.value.cols(),
                 "SGD: parameter '", p.name,
                 "' was frozen or reshaped after the optimizer was built");
      d_ = p.gradient();
      if (wd != T(0)) d_ += wd * p.value;
      if (mu != T(0)) {
        Matrix<T>& buf = buffers_[i];
        if (steps_ == 0) {
          buf = d_;
        } else {
          buf = mu * buf + damp * d_;
        }
        if (options_.nesterov) {
          d_ += mu * buf;
        } else {
          d_ = buf;
        }
      }
      p.value -= lr * d_;
    }
    ++steps_;
  }

  void zero_grad() {
    for (Param<T>* p : params_) p->zero_grad();
  }

  void set_lr(double lr) {
    SORA_CHECK(std::isfinite(lr) && lr >= 0.0, "SGD: lr must be finite and >= 0, got ", lr);
    options_.lr = lr;
  }
  // For learning-rate schedules: lr = (the lr given at construction) * multiplier.
  void set_lr_multiplier(double multiplier) { set_lr(base_lr_ * multiplier); }
  double lr() const { return options_.lr; }
  long step_count() const { return steps_; }
  const std::vector<Param<T>*>& params() const { return params_; }

  // The momentum buffer of a parameter by name, or nullptr (frozen, or no momentum).
  const Matrix<T>* momentum_buffer(std::string_view name) const {
    for (std::size_t i = 0; i < params_.size(); ++i)
      if (params_[i]->name == name && buffers_[i].size() > 0) return &buffers_[i];
    return nullptr;
  }

  std::size_t state_bytes() const {
    std::size_t bytes = 0;
    for (const auto& b : buffers_) bytes += static_cast<std::size_t>(b.size()) * sizeof(T);
    return bytes;
  }

 private:
  SgdOptions options_;
  double base_lr_ = 1e-2;
  long steps_ = 0;
  std::vector<Param<T>*> params_;   // trainable only
  std::vector<Matrix<T>> buffers_;  // parallel to params_; empty without momentum
  Matrix<T> d_;                     // the step direction, reused across parameters
};

}  // namespace sora::optim

#pragma once
// Param: one named tensor of a model. A trainable parameter owns a gradient buffer of its
// own shape; a frozen one owns none (and so no optimizer state either): the memory saved by
// freezing is the point of parameter-efficient fine-tuning.
//
// The value and gradient live on the backend's tensor (Cpu: an Eigen matrix; cuda::Cuda: a
// device tensor). Initial values always come from the host, so that a layer draws its
// initialisation once, identically on every backend.

#include <string>
#include <utility>

#include "sora/core/backend.hpp"
#include "sora/core/error.hpp"
#include "sora/core/tensor.hpp"

namespace sora {

template <class T, class Backend = Cpu>
class Param {
 public:
  using Tensor = typename Backend::template Tensor<T>;

  std::string name;        // stable dotted name, e.g. "blocks.3.attn.q.lora_A"
  Tensor value;            // (rows, cols); vectors are (1, n)
  bool is_vector = false;  // saved as a 1-D tensor of length cols()

  Param() = default;
  Param(std::string param_name, Matrix<T> initial, bool trainable, bool vector = false)
      : name(std::move(param_name)),
        value(Backend::template from_host<T>(std::move(initial))),
        is_vector(vector) {
    set_trainable(trainable);
  }

  // True iff the parameter is trained, i.e. owns a gradient buffer.
  bool trainable() const { return trainable_; }
  bool has_grad() const { return trainable_; }

  // Freezing frees the gradient (a 0 x 0 matrix owns no memory); unfreezing allocates a
  // zeroed one of the value's shape. (A plain member rather than std::optional<Matrix>:
  // g++ 12 reports false maybe-uninitialized errors through optional's destructor.)
  void set_trainable(bool on) {
    trainable_ = on;
    if (on) {
      grad_.setZero(value.rows(), value.cols());
    } else {
      grad_.resize(0, 0);
    }
  }

  void zero_grad() {
    if (trainable_) grad_.setZero();
  }

  Tensor& gradient() {
    SORA_CHECK(trainable_, "parameter '", name, "' is frozen and has no gradient");
    return grad_;
  }
  const Tensor& gradient() const {
    SORA_CHECK(trainable_, "parameter '", name, "' is frozen and has no gradient");
    return grad_;
  }

  // Bytes held by the gradient buffer (0 when frozen): what freezing saves.
  std::size_t grad_bytes() const { return static_cast<std::size_t>(grad_.size()) * sizeof(T); }

  Index size() const { return value.size(); }

 private:
  Tensor grad_;  // same shape as value when trainable; empty when frozen
  bool trainable_ = false;
};

}  // namespace sora

#pragma once
// Param: one named tensor of a model. A trainable parameter owns a gradient buffer of its
// own shape; a frozen one owns none (and so no optimizer state either): the memory saved by
// freezing is the point of parameter-efficient fine-tuning.

#include <optional>
#include <string>
#include <utility>

#include "sora/core/error.hpp"
#include "sora/core/tensor.hpp"

namespace sora {

template <class T>
struct Param {
  std::string name;              // stable dotted name, e.g. "blocks.3.attn.q.lora_A"
  Matrix<T> value;               // (rows, cols); vectors are (1, n)
  std::optional<Matrix<T>> grad; // same shape as value; present iff trainable
  bool is_vector = false;        // saved as a 1-D tensor of length cols()

  Param() = default;
  Param(std::string param_name, Matrix<T> initial, bool trainable, bool vector = false)
      : name(std::move(param_name)), value(std::move(initial)), is_vector(vector) {
    set_trainable(trainable);
  }

  bool trainable() const { return grad.has_value(); }

  // Freezing frees the gradient; unfreezing allocates a zeroed one.
  void set_trainable(bool on) {
    if (on && !grad) {
      grad.emplace(Matrix<T>::Zero(value.rows(), value.cols()));
    } else if (!on) {
      grad.reset();
    }
  }

  void zero_grad() {
    if (grad) grad->setZero();
  }

  Matrix<T>& gradient() {
    SORA_CHECK(grad.has_value(), "parameter '", name, "' is frozen and has no gradient");
    return *grad;
  }
  const Matrix<T>& gradient() const {
    SORA_CHECK(grad.has_value(), "parameter '", name, "' is frozen and has no gradient");
    return *grad;
  }

  Index size() const { return value.size(); }
};

}  // namespace sora

#pragma once
// Param: one named tensor of a model. A trainable parameter owns a gradient buffer of its
// own shape; a frozen one owns none (and so no optimizer state either): the memory saved by
// freezing is the point of parameter-efficient fine-tuning.
//
// The value and gradient live on the backend's tensor (Cpu: an Eigen matrix; cuda::Cuda: a
// device tensor). Initial values always come from the host, so that a layer draws its
// initialisation once, identically on every backend.
//
// Every parameter carries its role (ParamRole), set by the layer that owns it: what the
// optimizer's groups, pruning, parameter counts and the PEFT export read, instead of guessing
// from the dotted name (a gate visited with an empty prefix is named "lora_gate", not
// "<module>.lora_gate"; a model of one's own names its modules as it likes). Whether a
// parameter is frozen is not a role but a state (trainable()): apply_peft freezes and unfreezes
// parameters of every role.

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "sora/core/backend.hpp"
#include "sora/core/error.hpp"
#include "sora/core/tensor.hpp"

namespace sora {

enum class ParamRole : std::uint8_t {
  weight,          // a layer's weight matrix (linear, attention, MLP projections)
  bias,            // a layer's bias vector
  norm,            // a LayerNorm / RMSNorm scale or shift
  embedding,       // a token, position or token-type embedding table
  head,            // a task head's weight or bias (PEFT's modules_to_save)
  adapter_A,       // a low-rank adapter's down projection A (R, in)
  adapter_B,       // a low-rank adapter's up projection B (out, R)
  gate,            // SoRA's gate g (R): the target of the proximal step
  singular_value,  // AdaLoRA's E (R): masked by rank allocation, no proximal step
};

inline constexpr std::string_view role_name(ParamRole role) {
  switch (role) {
    case ParamRole::weight:
      return "weight";
    case ParamRole::bias:
      return "bias";
    case ParamRole::norm:
      return "norm";
    case ParamRole::embedding:
      return "embedding";
    case ParamRole::head:
      return "head";
    case ParamRole::adapter_A:
      return "adapter_A";
    case ParamRole::adapter_B:
      return "adapter_B";
    case ParamRole::gate:
      return "gate";
    case ParamRole::singular_value:
      return "singular_value";
  }
  return "unknown";
}

// True for the parameters of a low-rank adapter (A, B and its gate or E): what a PEFT adapter
// file holds, and what every other trained parameter (modules_to_save) is not.
inline constexpr bool is_adapter_role(ParamRole role) {
  return role == ParamRole::adapter_A || role == ParamRole::adapter_B || role == ParamRole::gate ||
         role == ParamRole::singular_value;
}

template <class T, class Backend = Cpu>
class Param {
 public:
  using Tensor = typename Backend::template Tensor<T>;

  std::string name;                    // stable dotted name, e.g. "blocks.3.attn.q.lora_A"
  Tensor value;                        // (rows, cols); vectors are (1, n)
  bool is_vector = false;              // saved as a 1-D tensor of length cols()
  ParamRole role = ParamRole::weight;  // set by the owning layer (see above)

  Param() = default;
  Param(std::string param_name, Matrix<T> initial, bool trainable, bool vector = false,
        ParamRole param_role = ParamRole::weight)
      : name(std::move(param_name)),
        value(Backend::template from_host<T>(std::move(initial))),
        is_vector(vector),
        role(param_role) {
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

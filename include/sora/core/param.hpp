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
//
// A frozen weight of a float model on the CPU may be stored in bf16 (store_as, core/bf16.hpp):
// half the bytes. Its `value` is then empty (0 x 0) and its bits live in a Bf16Matrix; code that
// reads the value of any parameter goes through rows(), cols(), size() and copy_value_to(),
// which read either storage, and code that needs the fp32 matrix itself (files, merging, the
// GPU) refuses a bf16 one by name. A bf16 parameter cannot be made trainable: its gradient and
// optimizer state would be fp32 anyway, and its value would have lost what training needs.

#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "sora/core/backend.hpp"
#include "sora/core/bf16.hpp"
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
    SORA_CHECK(!on || storage_ == Precision::fp32, "parameter '", name,
               "' is stored in bf16 (a frozen base) and cannot be trained; store it in fp32 "
               "first (store_as(Precision::fp32), or model::store_frozen_base)");
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

  // ---- storage of the value (see the top of this file) ---------------------------------------

  Precision storage() const { return storage_; }

  // bf16: rounds the value to bf16 (to nearest, ties to even) and frees the fp32 matrix; only a
  // frozen parameter of a float model on the CPU. fp32: widens it back (the values stay rounded
  // to bf16; the parameter can be trained again). Storing as what it is does nothing.
  void store_as(Precision precision) {
    if (precision == storage_) return;
    if (precision == Precision::fp32) {
      if constexpr (std::is_same_v<Backend, Cpu> && std::is_same_v<T, float>) {
        value = packed_.to_float();
        packed_ = Bf16Matrix();
      }
      storage_ = Precision::fp32;
      return;
    }
    SORA_CHECK(!trainable_, "parameter '", name,
               "' is trainable: only a frozen parameter can be stored in bf16 (its gradient and "
               "optimizer state need the fp32 value)");
    if constexpr (std::is_same_v<Backend, Cpu> && std::is_same_v<T, float>) {
      packed_ = Bf16Matrix(value);
      value.resize(0, 0);
      storage_ = Precision::bf16;
    } else {
      detail::throw_error("parameter '", name,
                          "': bf16 storage is for float models on the CPU (this one is ",
                          std::is_same_v<Backend, Cpu> ? "not float" : "on another backend", ")");
    }
  }

  // The value's shape and size, whichever the storage.
  Index rows() const { return storage_ == Precision::bf16 ? packed_.rows() : value.rows(); }
  Index cols() const { return storage_ == Precision::bf16 ? packed_.cols() : value.cols(); }
  Index size() const { return rows() * cols(); }

  // Bytes held by the value: sizeof(T) per entry, 2 in bf16.
  std::size_t value_bytes() const {
    return storage_ == Precision::bf16 ? packed_.bytes()
                                       : static_cast<std::size_t>(value.size()) * sizeof(T);
  }

  // The bf16 bits of a parameter stored in bf16.
  const Bf16Matrix& bf16_value() const {
    SORA_CHECK(storage_ == Precision::bf16, "parameter '", name, "' is not stored in bf16");
    return packed_;
  }

  // dst = the value (widened from bf16 when stored so), dst (rows(), cols()) on the CPU: a matrix
  // or a block of whole rows of a row-major one.
  template <class Dst>
  void copy_value_to(Dst&& dst) const {
    if constexpr (std::is_same_v<Backend, Cpu> && std::is_same_v<T, float>) {
      if (storage_ == Precision::bf16) {
        packed_.widen_to(dst);
        return;
      }
    }
    SORA_CHECK(dst.rows() == value.rows() && dst.cols() == value.cols(),
               "Param::copy_value_to: destination ", shape_of(dst), " is not the value's shape ",
               shape_of(value), " ('", name, "')");
    dst = value;
  }

  // Refuses, naming the parameter and `what` needs the fp32 matrix, a parameter stored in bf16.
  void require_fp32(const char* what) const {
    SORA_CHECK(storage_ == Precision::fp32, what, ": parameter '", name,
               "' is stored in bf16 (a frozen base); store the model's frozen base in fp32 first "
               "(model::store_frozen_base(model, Precision::fp32); the weights stay rounded to "
               "bf16)");
  }

 private:
  Tensor grad_;  // same shape as value when trainable; empty when frozen
  bool trainable_ = false;
  Precision storage_ = Precision::fp32;
  Bf16Matrix packed_;  // (rows, cols) the value's bits when stored in bf16; empty otherwise
};

}  // namespace sora

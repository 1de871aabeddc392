#pragma once
// Shared pieces of nn/: parameter names and the glue between Param and the ops' optional
// arguments.
//
// Layers are thin stateful wrappers over ops/: they own their parameters and the activations
// their backward needs (sized on the first batch of a shape and reused after that), and they are
// templates on the scalar T and a backend tag (Cpu by default) whose Tensor<T> they compute on.
//
// Every parameter is reached through one visitor, `layer.visit_params(prefix, fn)`, which
// calls fn(Param<T>&) for each parameter in a fixed order after setting its name to the stable
// dotted path "<prefix>.<local name>" (PEFT's names: "q.weight", "q.lora_A", ...); every layer,
// block and model also has `visit_params(fn)`, the same with an empty prefix (the protocol of
// core/concepts.hpp). The optimizer, pruning, parameter counts and I/O all go through it, and
// read what a parameter is from its role (core/param.hpp), which the layer sets.
//
// Ops are called unqualified (`linear_forward<T>(y, x, w, b)`): the using-declarations below
// make the CPU ops visible, and argument-dependent lookup on a device tensor finds a device
// backend's twins (a qualified sora::ops:: call would see only what was declared before the
// layer, i.e. never a backend added later).
//
// Every layer also has `release_activations()`, which frees what its forward and backward
// keep (the next forward allocates it again). Gradient checkpointing
// (model/block_checkpoints.hpp) calls it on each block once the block's output is copied, so
// that only one block's activations are held at a time.

#include <concepts>
#include <exception>
#include <string>
#include <string_view>
#include <type_traits>

#include "sora/core/param.hpp"
#include "sora/ops/activation.hpp"
#include "sora/ops/attention.hpp"
#include "sora/ops/common.hpp"
#include "sora/ops/dropout.hpp"
#include "sora/ops/embedding.hpp"
#include "sora/ops/layernorm.hpp"
#include "sora/ops/linear.hpp"
#include "sora/ops/loss.hpp"
#include "sora/ops/pool.hpp"
#include "sora/ops/rmsnorm.hpp"
#include "sora/ops/rope.hpp"
#include "sora/ops/swiglu.hpp"

namespace sora::nn {

inline std::string join_name(std::string_view prefix, std::string_view name) {
  if (prefix.empty()) return std::string(name);
  std::string out;
  out.reserve(prefix.size() + 1 + name.size());
  out.append(prefix).append(".").append(name);
  return out;
}

// Frees activation buffers: each becomes an empty tensor, its memory returned (a host matrix
// and a device tensor alike free their storage on move-assignment).
template <class... Tensors>
void release_buffers(Tensors&... buffers) {
  ((buffers = std::remove_cvref_t<Tensors>{}), ...);
}

// The op names layers and the model call (see above); model/ code uses the same directive.
namespace op_names {
using ops::attention_backward;
using ops::attention_forward;
using ops::bias_gelu_forward;
using ops::cross_entropy_backward;
using ops::cross_entropy_forward;
using ops::dropout_backward;
using ops::dropout_forward;
using ops::embedding_backward;
using ops::embedding_forward;
using ops::gather_rows;
using ops::gelu_backward;
using ops::gelu_forward;
using ops::layernorm_backward;
using ops::layernorm_forward;
using ops::linear_backward;
using ops::linear_forward;
using ops::lowrank_backward;
using ops::lowrank_forward;
using ops::mean_pool_backward;
using ops::mean_pool_forward;
using ops::mse_backward;
using ops::mse_forward;
using ops::position_embedding_backward;
using ops::position_embedding_forward;
using ops::residual_backward;
using ops::residual_forward;
using ops::rmsnorm_backward;
using ops::rmsnorm_forward;
using ops::rope_backward;
using ops::rope_forward;
using ops::scatter_rows;
using ops::swiglu_backward;
using ops::swiglu_forward;
using ops::tanh_backward;
using ops::tanh_forward;
}  // namespace op_names
using namespace op_names;

namespace detail {

template <class>
inline constexpr bool dependent_false = false;

// A layer's forward takes the layer's own tensor (on the CPU a row-major sora::Matrix<T>) by
// reference and keeps a pointer to it for backward. Any other argument (a column-major
// Eigen::MatrixXf, a matrix of another scalar, an expression, a Map) would convert through a
// temporary gone by backward; SORA_LAYER_INPUT_ONLY(forward) gives such a call a compile-time
// message that says which of these it is, instead of "use of deleted function".
template <class X, class Tensor>
const Tensor& refuse_layer_input() {
  if constexpr (requires { X::IsRowMajor; }) {
    if constexpr (!X::IsRowMajor) {
      static_assert(dependent_false<X>,
                    "a layer's input must be row-major: activations are (N, C) row-major "
                    "(docs/design.md section 2), and this matrix is column-major (e.g. "
                    "Eigen::MatrixXf); copy it into a sora::Matrix<T> first");
    } else if constexpr (requires { typename Tensor::Scalar; } &&
                         !std::same_as<typename X::Scalar, typename Tensor::Scalar>) {
      static_assert(dependent_false<X>,
                    "a layer's input must have the layer's scalar type: a Layer<float> takes a "
                    "sora::Matrix<float>, a Layer<double> a sora::Matrix<double>");
    } else {
      static_assert(dependent_false<X>,
                    "a layer's input must be a stored sora::Matrix<T> (backward reads it after "
                    "forward returns): evaluate an Eigen expression, block or map into one first");
    }
  } else {
    static_assert(dependent_false<X>, "a layer's input must be the layer's tensor type");
  }
  std::terminate();  // never reached: every branch above fails to compile
}

// Names p "<prefix>.<local>" and hands it to fn.
template <class T, class B, class Fn>
void visit_one(Param<T, B>& p, std::string_view prefix, std::string_view local, Fn& fn) {
  p.name = join_name(prefix, local);
  fn(p);
}

// The gradient buffer of p as an op argument; absent when p is frozen (no buffer to write).
template <class T, class B>
typename B::template Ref<T> grad_or_absent(Param<T, B>& p) {
  using Ref = typename B::template Ref<T>;
  return p.trainable() ? Ref(p.gradient()) : Ref(B::template absent<T>());
}

// The gradient buffer of an activation, or absent when the caller does not want it.
template <class B, class T>
typename B::template Ref<T> ref_or_absent(typename B::template Tensor<T>& m, bool wanted) {
  using Ref = typename B::template Ref<T>;
  return wanted ? Ref(m) : Ref(B::template absent<T>());
}

// The buffer a weight stored in bf16 (core/param.hpp) is widened into for the product that reads
// it: one per thread and scalar, shared by every layer and model, so that a bf16 base costs one
// layer's fp32 weights (the largest; for attention's stacked q, k, v the three) beside its bf16
// bits, not a second copy of the model. Layers widen into it right before a product and are done
// with it when the product returns; thread-local, so that two models trained on two threads
// never write into each other's weights.
template <class T>
Matrix<T>& weight_scratch() {
  thread_local Matrix<T> scratch;  // (OC, C) of the last weight widened
  return scratch;
}

// A weight's value as an op argument: the value itself, or (stored in bf16, CPU) its bits
// widened into weight_scratch(). Valid until the next call that widens a weight.
template <class T, class B>
typename B::template ConstRef<T> dense_value(const Param<T, B>& p) {
  using ConstRef = typename B::template ConstRef<T>;
  if constexpr (std::is_same_v<B, Cpu>) {
    if (p.storage() == Precision::bf16) {
      Matrix<T>& scratch = weight_scratch<T>();
      scratch.resize(p.rows(), p.cols());
      p.copy_value_to(scratch);
      return ConstRef(scratch);
    }
  }
  return ConstRef(p.value);
}

template <class T, class B>
typename B::template ConstRef<T> value_or_absent(const Param<T, B>& p, bool present) {
  using ConstRef = typename B::template ConstRef<T>;
  return present ? ConstRef(p.value) : ConstRef(B::template absent<T>());
}

}  // namespace detail
}  // namespace sora::nn

// Inside a layer class with `using Tensor`: refuses, with a message, any argument of `method` that
// is not the layer's Tensor (see refuse_layer_input).
#define SORA_LAYER_INPUT_ONLY(method)                                                      \
  template <class X>                                                                       \
  requires(!std::same_as<std::remove_cvref_t<X>, Tensor>) const Tensor& method(const X&) { \
    return ::sora::nn::detail::refuse_layer_input<std::remove_cvref_t<X>, Tensor>();       \
  }

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
// dotted path "<prefix>.<local name>" (PEFT's names: "q.weight", "q.lora_A", ...). The
// optimizer, pruning, parameter counts and I/O all go through it.
//
// Ops are called unqualified (`linear_forward<T>(y, x, w, b)`): the using-declarations below
// make the CPU ops visible, and argument-dependent lookup on a device tensor finds a device
// backend's twins (a qualified sora::ops:: call would see only what was declared before the
// layer, i.e. never a backend added later).

#include <string>
#include <string_view>

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

template <class T, class B>
typename B::template ConstRef<T> value_or_absent(const Param<T, B>& p, bool present) {
  using ConstRef = typename B::template ConstRef<T>;
  return present ? ConstRef(p.value) : ConstRef(B::template absent<T>());
}

}  // namespace detail
}  // namespace sora::nn

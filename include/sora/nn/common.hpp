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

#include <string>
#include <string_view>

#include "sora/core/param.hpp"
#include "sora/ops/common.hpp"

namespace sora::nn {

inline std::string join_name(std::string_view prefix, std::string_view name) {
  if (prefix.empty()) return std::string(name);
  std::string out;
  out.reserve(prefix.size() + 1 + name.size());
  out.append(prefix).append(".").append(name);
  return out;
}

namespace detail {

// Names p "<prefix>.<local>" and hands it to fn.
template <class T, class Fn>
void visit_one(Param<T>& p, std::string_view prefix, std::string_view local, Fn& fn) {
  p.name = join_name(prefix, local);
  fn(p);
}

// The gradient buffer of p as an op argument; absent when p is frozen (no buffer to write).
template <class T>
MatrixRef<T> grad_or_absent(Param<T>& p) {
  return p.trainable() ? MatrixRef<T>(p.gradient()) : MatrixRef<T>(ops::absent<T>());
}

// The gradient buffer of an activation, or absent when the caller does not want it.
template <class T>
MatrixRef<T> ref_or_absent(Matrix<T>& m, bool wanted) {
  return wanted ? MatrixRef<T>(m) : MatrixRef<T>(ops::absent<T>());
}

template <class T>
ConstMatrixRef<T> value_or_absent(const Param<T>& p, bool present) {
  return present ? ConstMatrixRef<T>(p.value) : ConstMatrixRef<T>(ops::absent<T>());
}

}  // namespace detail
}  // namespace sora::nn

#pragma once
// LLaMA's feed-forward block (transformers' LlamaMLP, also Mistral's and Qwen2's):
//   down_proj(silu(gate_proj(x)) ⊙ up_proj(x)),
// three bias-free projections as AdaptedLinear slots named as in HF checkpoints ("gate_proj",
// "up_proj", "down_proj"), each a possible adapter target.
//
// Parameter gradients accumulate (+=); the returned input gradient is overwritten (=).

#include <cstdint>

#include "sora/nn/adapter.hpp"
#include "sora/ops/dropout.hpp"
#include "sora/ops/swiglu.hpp"

namespace sora::nn {

template <class T, class Backend = Cpu>
class SwiGLUMLP {
 public:
  using Scalar = T;  // the model protocol (core/concepts.hpp)
  using BackendTag = Backend;
  using Tensor = typename Backend::template Tensor<T>;

  AdaptedLinear<T, Backend> gate_proj, up_proj, down_proj;

  SwiGLUMLP() = default;
  // hidden: config.json's intermediate_size.
  SwiGLUMLP(Index channels, Index hidden, std::uint64_t seed = 0)
      : gate_proj(channels, hidden, /*with_bias=*/false, seed * 3 + 1),
        up_proj(channels, hidden, /*with_bias=*/false, seed * 3 + 2),
        down_proj(hidden, channels, /*with_bias=*/false, seed * 3 + 3) {}

  void train(bool on) {
    gate_proj.train(on);
    up_proj.train(on);
    down_proj.train(on);
  }

  const Tensor& forward(const Tensor& x) {
    const Tensor& gate = gate_proj.forward(x);
    const Tensor& up = up_proj.forward(x);
    act_.resize(gate.rows(), gate.cols());
    swiglu_forward<T>(act_, gate, up);
    return down_proj.forward(act_);
  }
  const Tensor& forward(Tensor&&) = delete;
  SORA_LAYER_INPUT_ONLY(forward)

  // x feeds both gate_proj and up_proj, so dx is the sum of their input gradients.
  const Tensor& backward(const Tensor& dy, bool want_dx = true) {
    const Tensor& dact = down_proj.backward(dy);
    dgate_.resize(dact.rows(), dact.cols());
    dup_.resize(dact.rows(), dact.cols());
    swiglu_backward<T>(dgate_, dup_, dact, gate_proj.output(), up_proj.output());
    const Tensor& dx_gate = gate_proj.backward(dgate_, want_dx);
    const Tensor& dx_up = up_proj.backward(dup_, want_dx);
    if (!want_dx) return dx_;
    dx_.resize(dx_gate.rows(), dx_gate.cols());
    residual_forward<T>(dx_, dx_gate, dx_up);
    return dx_;
  }

  // The same without a prefix: names are local to this layer ("weight", "q.lora_A").
  template <class Fn>
  void visit_params(Fn&& fn) {
    visit_params(std::string_view{}, fn);
  }
  template <class Fn>
  void visit_params(std::string_view prefix, Fn&& fn) {
    gate_proj.visit_params(join_name(prefix, "gate_proj"), fn);
    up_proj.visit_params(join_name(prefix, "up_proj"), fn);
    down_proj.visit_params(join_name(prefix, "down_proj"), fn);
  }

  // Frees the activations forward and backward keep (nn/common.hpp).
  void release_activations() {
    release_buffers(act_, dgate_, dup_, dx_);
    for (auto* p : {&gate_proj, &up_proj, &down_proj}) p->release_activations();
  }

 private:
  Tensor act_, dgate_, dup_;  // (N, hidden)
  Tensor dx_;                 // (N, C)
};

}  // namespace sora::nn

#pragma once
// Transformer feed-forward block: fc (C -> hidden), GELU, proj (hidden -> C). Both
// projections are AdaptedLinear slots ("fc", "proj"), default SoRA targets.
//
// Parameter gradients accumulate (+=); the returned input gradient is overwritten (=).

#include <cstdint>

#include "sora/nn/adapter.hpp"
#include "sora/ops/activation.hpp"

namespace sora::nn {

template <class T, class Backend = Cpu>
class MLP {
 public:
  using Scalar = T;  // the model protocol (core/concepts.hpp)
  using BackendTag = Backend;
  using Tensor = typename Backend::template Tensor<T>;

  AdaptedLinear<T, Backend> fc, proj;

  MLP() = default;
  MLP(Index channels, Index hidden, ops::Gelu gelu = ops::Gelu::tanh, bool with_bias = true,
      std::uint64_t seed = 0)
      : fc(channels, hidden, with_bias, seed * 2 + 1),
        proj(hidden, channels, with_bias, seed * 2 + 2),
        gelu_(gelu) {}

  void train(bool on) {
    fc.train(on);
    proj.train(on);
  }

  const Tensor& forward(const Tensor& x) {
    if (fc.base.has_bias()) {
      // fc's bias is added by the activation: one pass over (N, hidden) instead of two.
      Tensor& hpre = fc.forward_unbiased(x);
      hact_.resize(hpre.rows(), hpre.cols());
      bias_gelu_forward<T>(hact_, hpre, fc.base.bias.value, gelu_);
    } else {
      const Tensor& hpre = fc.forward(x);
      hact_.resize(hpre.rows(), hpre.cols());
      gelu_forward<T>(hact_, hpre, gelu_);
    }
    return proj.forward(hact_);
  }
  SORA_LAYER_INPUT_ONLY(forward)

  const Tensor& backward(const Tensor& dy, bool want_dx = true) {
    const Tensor& dhact = proj.backward(dy);
    dhpre_.resize(dhact.rows(), dhact.cols());
    gelu_backward<T>(dhpre_, dhact, fc.output(), gelu_);
    return fc.backward(dhpre_, want_dx);
  }

  // The same without a prefix: names are local to this layer ("weight", "q.lora_A").
  template <class Fn>
  void visit_params(Fn&& fn) {
    visit_params(std::string_view{}, fn);
  }
  template <class Fn>
  void visit_params(std::string_view prefix, Fn&& fn) {
    fc.visit_params(join_name(prefix, "fc"), fn);
    proj.visit_params(join_name(prefix, "proj"), fn);
  }

  // Frees the activations forward and backward keep (nn/common.hpp).
  void release_activations() {
    release_buffers(hact_, dhpre_);
    fc.release_activations();
    proj.release_activations();
  }

 private:
  ops::Gelu gelu_ = ops::Gelu::tanh;
  Tensor hact_, dhpre_;  // (N, hidden)
};

}  // namespace sora::nn

#pragma once
// Linear: y = x W^T + b, W (out, in) as in PyTorch, frozen or trainable. A frozen W may be
// stored in bf16 (core/param.hpp): each product then reads it widened into the shared fp32
// scratch (nn/common.hpp, detail::dense_value).
//
// Backward contract (as the ops): parameter gradients accumulate (+=), the returned input
// gradient is overwritten (=) on every call.

#include <cmath>
#include <cstdint>

#include "sora/core/rng.hpp"
#include "sora/nn/common.hpp"
#include "sora/ops/linear.hpp"

namespace sora::nn {

template <class T, class Backend = Cpu>
class Linear {
 public:
  using Scalar = T;  // the model protocol (core/concepts.hpp)
  using BackendTag = Backend;
  using Tensor = typename Backend::template Tensor<T>;

  Param<T, Backend> weight;  // (OC, C)
  Param<T, Backend> bias;    // (1, OC); empty when the layer has no bias

  Linear() = default;
  // PyTorch nn.Linear's initialisation: W and b ~ U(-1/sqrt(in), 1/sqrt(in)).
  Linear(Index in, Index out, bool with_bias = true, bool trainable = true, std::uint64_t seed = 0)
      : has_bias_(with_bias) {
    SORA_CHECK(in > 0 && out > 0, "Linear: sizes must be positive, got in=", in, " out=", out);
    Rng rng(seed);
    Matrix<T> w(out, in);
    rng.fill_kaiming_uniform(w, in);
    weight = Param<T, Backend>("weight", std::move(w), trainable, false, ParamRole::weight);
    if (with_bias) {
      Matrix<T> b(1, out);
      rng.fill_kaiming_uniform(b, in);
      bias = Param<T, Backend>("bias", std::move(b), trainable, /*vector=*/true, ParamRole::bias);
    }
  }

  Index in_features() const { return weight.cols(); }
  Index out_features() const { return weight.rows(); }
  bool has_bias() const { return has_bias_; }

  // A task head's layer: its weight and bias take the role `head` (what PEFT's
  // modules_to_save keeps beside the adapters); the model that owns the layer says so.
  void mark_as_head() {
    weight.role = ParamRole::head;
    bias.role = ParamRole::head;
  }
  bool is_head() const { return weight.role == ParamRole::head; }

  void set_trainable(bool on) {
    weight.set_trainable(on);
    if (has_bias_) bias.set_trainable(on);
  }

  // Stateless forms, for layers that own the buffers (AdaptedLinear). Without add_bias the
  // caller adds the bias itself (a fused epilogue: MLP's bias + GELU).
  void forward_to(Tensor& y, const Tensor& x, bool add_bias = true) const {
    y.resize(x.rows(), out_features());
    linear_forward<T>(y, x, detail::dense_value(weight),
                      detail::value_or_absent(bias, has_bias_ && add_bias));
  }
  // dx (if wanted) is overwritten; parameter gradients accumulate.
  void backward_to(Tensor& dx, bool want_dx, const Tensor& dy, const Tensor& x) {
    if (want_dx) dx.resize(x.rows(), x.cols());
    using Ref = typename Backend::template Ref<T>;
    linear_backward<T>(
        detail::ref_or_absent<Backend, T>(dx, want_dx), detail::grad_or_absent(weight),
        has_bias_ ? detail::grad_or_absent(bias) : Ref(Backend::template absent<T>()), dy, x,
        detail::dense_value(weight));
  }

  // x must stay alive and unchanged until backward (it is what the weight gradient needs,
  // kept by reference rather than copied).
  const Tensor& forward(const Tensor& x) {
    x_ = &x;
    forward_to(y_, x);
    return y_;
  }
  const Tensor& forward(Tensor&&) = delete;  // a temporary would be gone by backward
  SORA_LAYER_INPUT_ONLY(forward)

  const Tensor& backward(const Tensor& dy, bool want_dx = true) {
    SORA_CHECK(x_ != nullptr, "Linear::backward called before forward");
    backward_to(dx_, want_dx, dy, *x_);
    return dx_;
  }

  // The same without a prefix: names are local to this layer ("weight", "q.lora_A").
  template <class Fn>
  void visit_params(Fn&& fn) {
    visit_params(std::string_view{}, fn);
  }
  template <class Fn>
  void visit_params(std::string_view prefix, Fn&& fn) {
    detail::visit_one(weight, prefix, "weight", fn);
    if (has_bias_) detail::visit_one(bias, prefix, "bias", fn);
  }

  // Frees the activations forward and backward keep (nn/common.hpp).
  void release_activations() {
    x_ = nullptr;
    release_buffers(y_, dx_);
  }

 private:
  bool has_bias_ = false;
  const Tensor* x_ = nullptr;
  Tensor y_;   // (N, OC)
  Tensor dx_;  // (N, C)
};

}  // namespace sora::nn

#pragma once
// RMSNorm layer (transformers' LlamaRMSNorm: weight 1 at init, no bias). The parameter gradient
// accumulates (+=); the returned input gradient is overwritten (=).

#include "sora/nn/common.hpp"
#include "sora/ops/rmsnorm.hpp"

namespace sora::nn {

template <class T, class Backend = Cpu>
class RMSNorm {
 public:
  using Scalar = T;  // the model protocol (core/concepts.hpp)
  using BackendTag = Backend;
  using Tensor = typename Backend::template Tensor<T>;

  Param<T, Backend> weight;  // (1, C)

  RMSNorm() = default;
  // eps: config.json's rms_norm_eps (1e-6 for LLaMA and Qwen2, 1e-5 for Mistral and LLaMA 2).
  explicit RMSNorm(Index channels, bool trainable = true, T eps = T(1e-6)) : eps_(eps) {
    SORA_CHECK(channels > 0, "RMSNorm: channels must be positive, got ", channels);
    weight =
        Param<T, Backend>("weight", Matrix<T>::Ones(1, channels), trainable, true, ParamRole::norm);
  }

  Index channels() const { return weight.value.cols(); }
  T eps() const { return eps_; }

  const Tensor& forward(const Tensor& x) {
    x_ = &x;
    y_.resize(x.rows(), x.cols());
    rstd_.resize(x.rows(), 1);
    rmsnorm_forward<T>(y_, rstd_, x, weight.value, eps_);
    return y_;
  }
  const Tensor& forward(Tensor&&) = delete;
  SORA_LAYER_INPUT_ONLY(forward)

  const Tensor& backward(const Tensor& dy, bool want_dx = true) {
    SORA_CHECK(x_ != nullptr, "RMSNorm::backward called before forward");
    if (want_dx) dx_.resize(x_->rows(), x_->cols());
    rmsnorm_backward<T>(detail::ref_or_absent<Backend, T>(dx_, want_dx),
                        detail::grad_or_absent(weight), dy, *x_, weight.value, rstd_);
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
  }

  // Frees the activations forward and backward keep (nn/common.hpp).
  void release_activations() {
    x_ = nullptr;
    release_buffers(y_, dx_, rstd_);
  }

 private:
  T eps_ = T(1e-6);
  const Tensor* x_ = nullptr;
  Tensor y_, dx_;  // (N, C)
  Tensor rstd_;    // (N, 1)
};

}  // namespace sora::nn

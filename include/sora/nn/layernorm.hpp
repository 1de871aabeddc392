#pragma once
// LayerNorm layer (weight 1, bias 0 at init). Parameter gradients accumulate (+=); the
// returned input gradient is overwritten (=).

#include "sora/nn/common.hpp"
#include "sora/ops/layernorm.hpp"

namespace sora::nn {

template <class T, class Backend = Cpu>
class LayerNorm {
 public:
  using Scalar = T;  // the model protocol (core/concepts.hpp)
  using BackendTag = Backend;
  using Tensor = typename Backend::template Tensor<T>;

  Param<T, Backend> weight;  // (1, C)
  Param<T, Backend> bias;    // (1, C)

  LayerNorm() = default;
  explicit LayerNorm(Index channels, bool trainable = true, T eps = T(1e-5)) : eps_(eps) {
    SORA_CHECK(channels > 0, "LayerNorm: channels must be positive, got ", channels);
    weight =
        Param<T, Backend>("weight", Matrix<T>::Ones(1, channels), trainable, true, ParamRole::norm);
    bias =
        Param<T, Backend>("bias", Matrix<T>::Zero(1, channels), trainable, true, ParamRole::norm);
  }

  Index channels() const { return weight.value.cols(); }

  const Tensor& forward(const Tensor& x) {
    x_ = &x;
    y_.resize(x.rows(), x.cols());
    mean_.resize(x.rows(), 1);
    rstd_.resize(x.rows(), 1);
    layernorm_forward<T>(y_, mean_, rstd_, x, weight.value, bias.value, eps_);
    return y_;
  }
  const Tensor& forward(Tensor&&) = delete;
  SORA_LAYER_INPUT_ONLY(forward)

  const Tensor& backward(const Tensor& dy, bool want_dx = true) {
    SORA_CHECK(x_ != nullptr, "LayerNorm::backward called before forward");
    if (want_dx) dx_.resize(x_->rows(), x_->cols());
    layernorm_backward<T>(detail::ref_or_absent<Backend, T>(dx_, want_dx),
                          detail::grad_or_absent(weight), detail::grad_or_absent(bias), dy, *x_,
                          weight.value, mean_, rstd_);
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
    detail::visit_one(bias, prefix, "bias", fn);
  }

  // Frees the activations forward and backward keep (nn/common.hpp).
  void release_activations() {
    x_ = nullptr;
    release_buffers(y_, dx_, mean_, rstd_);
  }

 private:
  T eps_ = T(1e-5);
  const Tensor* x_ = nullptr;
  Tensor y_, dx_;       // (N, C)
  Tensor mean_, rstd_;  // (N, 1)
};

}  // namespace sora::nn
